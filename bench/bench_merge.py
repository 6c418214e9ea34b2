"""Merge benchmarks: streaming throughput, and WUDI/AMM seconds per tensor (Gram side vs direct).

    python bench/bench_merge.py [--size-gb 1.0] [--experts 3] [--repeats 3] [--steps N] [--device auto]
                                [--skip-streaming] [--skip-methods]

Streaming: a synthetic bfloat16 checkpoint of Qwen2.5-VL-3B language-model layers (about
--size-gb per input, real tensor names) and --experts experts. Figures are GB/s of input read,
medians over --repeats: plain sequential reads of the files vs a `task_arithmetic` merge (read +
maths + write), with the page cache warm, and cold (the files dropped from it before each pass:
a 3B x 3-expert merge reads 30 GB, more than most nodes' page cache holds). Goal: merge >= 0.8
of plain read.

Methods: K = 3 float32 task vectors of Qwen2.5-VL-3B shapes on --device. The WUDI loss and
gradient of one Adam step through each side (median over --steps calls), the one-off set-up, and
seconds per tensor at SPEC's 300 steps = set-up + 300 x step; AMM end to end the same way, from
one run of `METHODS["amm"]` with 0 steps and one with --steps. Goal: Gram >= 3x faster than
direct on up/gate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import torch

from tiny_r1v.config import load_config
from tiny_r1v.device import resolve_device
from tiny_r1v.merge import METHODS, MergeConfig, merge
from tiny_r1v.merge.actor import THP
from tiny_r1v.merge.config import AmmConfig
from tiny_r1v.merge.objective import WudiObjective
from tiny_r1v.merge.safetensors_io import CheckpointReader
from tiny_r1v.merge.sources import Source
from tiny_r1v.merge.synthetic import lm_shapes, write_checkpoint

# Qwen2.5-VL-3B: hidden 2048, intermediate 11008, 2 KV heads of 128.
HIDDEN, INTERMEDIATE, KV_DIM = 2048, 11008, 256
SHAPES = {
    "q/o 2048x2048": (2048, 2048),
    "k/v 256x2048": (256, 2048),
    "up/gate 11008x2048": (11008, 2048),
    "down 2048x11008": (2048, 11008),
}
# How many tensors of each benched shape the 3B language model has (36 layers); the vision
# tower takes the mean by default, so these are all the optimised merges of a 3B merge.
PER_MODEL = {"q/o 2048x2048": 72, "k/v 256x2048": 72, "up/gate 11008x2048": 72, "down 2048x11008": 36}
GB = 1e9
CPU = torch.device("cpu")
T = TypeVar("T")


class _Quiet:
    def __init__(self, **_: object) -> None: ...
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[..., T], *args: object) -> tuple[float, T]:
    """Seconds `fn(*args)` takes (the device synchronised) and its result."""
    start = time.perf_counter()
    result = fn(*args)
    sync(device)
    return time.perf_counter() - start, result


def read_files(paths: list[Path]) -> int:
    """Plain sequential read of whole files in 64 MiB chunks; returns bytes read."""
    # A torch buffer, like the reader's: with THP it sits on huge pages (a bytearray does not),
    # which alone made a copy out of the page cache about twice as fast here.
    buffer = memoryview(torch.empty(64 << 20, dtype=torch.uint8).numpy())
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                total += n
    return total


def evict(paths: list[Path]) -> None:
    """Drop the files from the page cache (clean pages: no root needed), so the next read is
    from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def bench_streaming(work: Path, size_gb: float, experts: int, repeats: int) -> None:
    per_layer = sum(2 * torch.Size(s).numel() for s in lm_shapes(1, HIDDEN, INTERMEDIATE, KV_DIM).values())
    shapes = lm_shapes(max(1, round(size_gb * GB / per_layer)), HIDDEN, INTERMEDIATE, KV_DIM)
    dirs = [write_checkpoint(work / "base", shapes, dtype=torch.bfloat16)]
    dirs += [write_checkpoint(work / f"e{k}", shapes, dtype=torch.bfloat16, expert=k) for k in range(experts)]
    files = [f for d in dirs for f in CheckpointReader(d, d.name).weight_files]
    cfg = load_config(
        MergeConfig, None, [f"base={dirs[0]}", "method=task_arithmetic", "device=cpu", "hash_inputs=false"]
    )
    sources = [Source(d.name, d, d) for d in dirs]
    size = read_files(files)
    figures: dict[str, list[float]] = {}
    phases: dict[str, list[dict[str, float]]] = {"warm": [], "cold": []}
    for r in range(repeats):
        for cache in ("cold", "warm"):  # the cold pass leaves the page cache warm
            if cache == "cold":
                evict(files)
            figures.setdefault(f"plain file read, {cache}", []).append(size / GB / timed(CPU, read_files, files)[0])
            if cache == "cold":
                evict(files)
            out = work / f"out{r}"
            provenance = merge(replace(cfg, output=str(out)), sources[0], sources[1:], progress=_Quiet)
            figures.setdefault(f"task_arithmetic merge, {cache}", []).append(
                provenance["bytes"]["read"] / GB / provenance["seconds"]["merge"]
            )
            phases[cache].append(provenance["seconds"])
            shutil.rmtree(out)
    med = statistics.median
    print(
        f"\n## streaming: {len(shapes)} tensors, {size / GB / (experts + 1):.2f} GB per input, "
        f"base + {experts} experts = {size / GB:.2f} GB read per pass (bfloat16, {repeats} repeats)"
    )
    print("| path | page cache | GB/s (median) | vs plain read |\n|---|---|---|---|")
    for cache in ("warm", "cold"):
        plain = med(figures[f"plain file read, {cache}"])
        for name in ("plain file read", "task_arithmetic merge"):
            value = med(figures[f"{name}, {cache}"])
            print(f"| {name} | {cache} | {value:.2f} | {value / plain:.2f} |")
    for cache, runs in phases.items():
        split = ", ".join(f"{k} {med([p[k] for p in runs]):.2f} s" for k in ("read", "compute", "write_wait", "merge"))
        print(f"merge phases, {cache} (median): {split}")


def task_vectors(shape: tuple[int, int], k: int, device: torch.device) -> torch.Tensor:
    """[k, *shape] float32: rank-64 structure plus noise, at fine-tuning scale."""
    g = torch.Generator().manual_seed(0)
    d_out, d_in = shape
    taus = torch.randn(k, d_out, 64, generator=g) @ torch.randn(k, 64, d_in, generator=g) / 8
    return (1e-3 * (taus + torch.randn(k, d_out, d_in, generator=g))).to(device)


def bench_methods(device: torch.device, steps: int) -> None:
    med = statistics.median
    # Warm-up: first calls pay one-off library start-up (LAPACK, the optimiser's imports).
    METHODS["amm"](task_vectors((64, 32), 3, device), AmmConfig(steps=2))
    rows = []
    for label, shape in SHAPES.items():
        taus = task_vectors(shape, 3, device)
        x, c = taus.sum(0), torch.ones(3, device=device)
        per_side = {}
        for side in ("gram", "direct"):
            setup, objective = timed(device, WudiObjective, taus, side)
            step = med(timed(device, objective.loss_and_grad, x, c)[0] for _ in range(steps))
            del objective
            amm_setup, _ = timed(device, METHODS["amm"], taus, AmmConfig(steps=0, side=side))
            amm_run, _ = timed(device, METHODS["amm"], taus, AmmConfig(steps=steps, side=side))
            per_side[side] = (setup, step, amm_setup + 300 * (amm_run - amm_setup) / steps)
            print(f"  {label} {side}: set-up {setup:.2f} s, step {step:.3f} s", flush=True)
        rows.append((label, per_side))
    print(
        f"\n## WUDI / AMM per tensor: K = 3, float32 on {device}; per tensor = set-up + 300 steps "
        f"(WUDI step: median of {steps}; AMM: one run of 0 and one of {steps} steps)"
    )
    print("| shape | side | set-up s | WUDI step s | WUDI s/tensor | AMM s/tensor |\n|---|---|---|---|---|---|")
    for label, per_side in rows:
        for side, (setup, step, amm) in per_side.items():
            print(f"| {label} | {side} | {setup:.2f} | {step:.3f} | {setup + 300 * step:.1f} | {amm:.1f} |")
    print("\n| shape | Gram speed-up, WUDI | Gram speed-up, AMM |\n|---|---|---|")
    for label, per_side in rows:
        (g_setup, g_step, g_amm), (d_setup, d_step, d_amm) = per_side["gram"], per_side["direct"]
        print(f"| {label} | {(d_setup + 300 * d_step) / (g_setup + 300 * g_step):.2f}x | {d_amm / g_amm:.2f}x |")
    # `auto` takes the faster side per shape; the mean-treated tensors cost reading time only.
    best = {label: min(amm for _, _, amm in per_side.values()) for label, per_side in rows}
    total = sum(PER_MODEL[label] * seconds for label, seconds in best.items())
    print(
        f"\nprojected AMM maths for the whole Qwen2.5-VL-3B x 3-expert merge ({sum(PER_MODEL.values())} "
        f"language-model linear weights, best side each): {total / 60:.1f} min on {device}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of each synthetic input")
    parser.add_argument("--experts", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="streaming passes (figures are medians)")
    parser.add_argument("--steps", type=int, help="timed Adam steps per method (default: 20 on CUDA, 3 on CPU)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--workdir", type=Path, help="where the synthetic checkpoints go (default: a temp dir)")
    parser.add_argument("--skip-streaming", action="store_true")
    parser.add_argument("--skip-methods", action="store_true")
    args = parser.parse_args()
    if any(os.environ.get(key) != value for key, value in THP.items()):
        # torch reads these when the process first allocates: start again with them, as the
        # merge actor starts.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **THP})
    torch.set_num_threads(os.cpu_count() or 1)
    device = resolve_device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU threads, GPU: {gpu}, load average {os.getloadavg()[0]:.1f}")
    if not args.skip_streaming:
        with tempfile.TemporaryDirectory(dir=args.workdir) as work:
            bench_streaming(Path(work), args.size_gb, args.experts, args.repeats)
    if not args.skip_methods:
        bench_methods(device, args.steps or (20 if device.type == "cuda" else 3))


if __name__ == "__main__":
    main()
