"""The merge job: resolve and check the inputs, stream every tensor through its treatment, write
the sharded checkpoint with its report and provenance into a temporary directory, rename it.

Memory: one tensor from each of base + K experts at a time (mapped from the page cache), the
float32 task vectors and the method's working set, and the output buffer of the background
writer; never a whole model.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import resource
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from tiny_r1v.config.loader import to_dict
from tiny_r1v.device import resolve_device
from tiny_r1v.merge.config import MergeConfig
from tiny_r1v.merge.errors import MergeError
from tiny_r1v.merge.methods import ELEMENTWISE, METHODS, mean
from tiny_r1v.merge.plan import MergePlan, PlanItem, build_plan
from tiny_r1v.merge.policy import Treatment
from tiny_r1v.merge.safetensors_io import INDEX, CheckpointReader, ShardWriter, copy_model_files, sha256
from tiny_r1v.merge.sources import Source

REPORT = "merge_report.json"
PROVENANCE = "merge_provenance.json"

ProgressFactory = Callable[..., Any]
"""tqdm-like: called with total=, desc=, unit=; the result has update(n) and close()."""


# Entries per block of an elementwise merge on the CPU: the block's float32 working set (base,
# K task vectors, result: about 6 MB for K = 3) stays in cache, where whole-tensor passes would
# stream K + 3 tensor-sized buffers through memory for every operation.
CPU_BLOCK = 1 << 18


def merge_tensor(
    base: Tensor,
    experts: Sequence[Tensor],
    treatment: Treatment,
    merge_fn: Callable[[Tensor], Tensor],
    device: torch.device,
    block: int | None = None,
) -> tuple[Tensor, list[int]]:
    """One tensor's result (the base's dtype, on the CPU) and which experts' task vectors were used.

    base, experts: the stored tensors [*shape]. Task vectors are float32 on `device`; zero ones
    are skipped (all zero: the base itself is returned); `mean` averages the rest and `merge`
    hands them, [K', *shape], to `merge_fn`. `block`: merge `block` entries at a time, as
    [K', block] slices of the flattened tensors (only for elementwise functions).
    """
    if treatment in ("base", "tied"):
        return base, []
    # An expert equal to the base has a zero task vector (exact: the float32 difference of two
    # stored values is zero only when they are equal); the comparison stops at the first difference.
    used = [k for k, expert in enumerate(experts) if not torch.equal(expert, base)]
    if not used:
        return base, []
    fn = mean if treatment == "mean" else merge_fn
    out = torch.empty_like(base)
    if block is None or base.numel() <= block:
        w0 = torch.empty(base.shape, dtype=torch.float32, device=device)
        taus = torch.empty((len(used), *base.shape), dtype=torch.float32, device=device)
        _merge_into(out, base, [experts[k] for k in used], fn, w0, taus)
        return out, used
    # Float32 working space allocated once and reused by every block.
    w0 = torch.empty(block, dtype=torch.float32, device=device)
    taus = torch.empty((len(used), block), dtype=torch.float32, device=device)
    flat = [experts[k].reshape(-1) for k in used]
    for start, part in zip(range(0, base.numel(), block), out.view(-1).split(block), strict=True):
        stop = start + len(part)
        _merge_into(
            part,
            base.reshape(-1)[start:stop],
            [expert[start:stop] for expert in flat],
            fn,
            w0[: len(part)],
            taus[:, : len(part)],
        )
    return out, used


def _merge_into(
    out: Tensor, base: Tensor, experts: Sequence[Tensor], fn: Callable[[Tensor], Tensor], w0: Tensor, taus: Tensor
) -> None:
    """out = W_0 + fn(task vectors), for non-zero task vectors; w0 [*shape] and taus [K', *shape]
    are float32 working space on the maths device, `out` is the result's (CPU) tensor."""
    w0.copy_(base)
    for tau, expert in zip(taus, experts, strict=True):
        tau.copy_(expert).sub_(w0)
    merged = fn(taus).add_(w0)  # fn returns a new tensor (or a view of our own taus)
    # One reduction instead of an elementwise test: any NaN or inf makes the sum non-finite.
    if not torch.isfinite(merged.sum()):
        raise ValueError("the merged tensor has NaN or inf entries")
    out.copy_(merged)


def check(cfg: MergeConfig, base_src: Source, expert_srcs: Sequence[Source]) -> MergePlan:
    """Everything `merge` checks before writing (MergeError on a problem): reads headers only."""
    with ExitStack() as stack:
        return _open(cfg, base_src, expert_srcs, stack)[2]


def _open(
    cfg: MergeConfig, base_src: Source, expert_srcs: Sequence[Source], stack: ExitStack
) -> tuple[CheckpointReader, list[CheckpointReader], MergePlan]:
    output = Path(cfg.output)
    if output.exists() and not cfg.overwrite:
        raise MergeError(f"output {output} exists (set overwrite=true to replace it)")
    readers = []
    for source in (base_src, *expert_srcs):
        readers.append(CheckpointReader(source.model_dir, source.name))
        stack.callback(readers[-1].close)
    base, experts = readers[0], readers[1:]
    return base, experts, build_plan(base, experts, cfg.vision, cfg.shard_size_mb << 20)


def merge(
    cfg: MergeConfig, base_src: Source, expert_srcs: Sequence[Source], progress: ProgressFactory = tqdm
) -> dict[str, Any]:
    """Merge the experts into the base as `cfg` says (sources: see `sources.resolve`).

    Returns the provenance (also written to the output's `merge_provenance.json`). Raises
    MergeError before writing anything when the inputs do not fit, and leaves no output (the
    temporary directory is removed) when a result is not finite.
    """
    seconds: Counter[str] = Counter()
    start = time.perf_counter()
    rss_at_start = _current_rss()
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    output = Path(cfg.output)
    with ExitStack() as stack:
        base, readers, plan = _open(cfg, base_src, expert_srcs, stack)
        seconds["check"] = time.perf_counter() - start

        tick = time.perf_counter()
        inputs = [
            _describe_input(source, reader, cfg.hash_inputs)
            for source, reader in zip([base_src, *expert_srcs], [base, *readers], strict=True)
        ]
        seconds["hash"] = time.perf_counter() - tick

        tmp = output.with_name(f"{output.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            tick = time.perf_counter()
            report, bytes_read, bytes_written = _stream(cfg, plan, base, readers, tmp, device, seconds, progress)
            seconds["merge"] = time.perf_counter() - tick
            tick = time.perf_counter()
            copy_model_files(base_src.model_dir, tmp)
            (tmp / REPORT).write_text(json.dumps(report, indent=1) + "\n")
            seconds["finish"] = time.perf_counter() - tick
            seconds["total"] = time.perf_counter() - start
            provenance = {
                "method": cfg.method,
                "parameters": to_dict(cfg.params()),
                "config": to_dict(cfg),
                "inputs": inputs,
                "output": str(output.resolve()),
                "tensors": dict(Counter(entry["treatment"] for entry in report)),
                "tied_word_embeddings": plan.tied,
                "seconds": {phase: round(value, 4) for phase, value in seconds.items()},
                "bytes": {"read": bytes_read, "written": bytes_written},
                "memory_mb": _memory(rss_at_start, device),
                "device": str(device),
                "versions": {"python": platform.python_version(), "torch": torch.__version__},
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            }
            (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
            if output.exists():  # overwrite=true, checked above
                shutil.rmtree(output)
            os.replace(tmp, output)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return provenance


def _stream(
    cfg: MergeConfig,
    plan: MergePlan,
    base: CheckpointReader,
    experts: Sequence[CheckpointReader],
    out: Path,
    device: torch.device,
    seconds: Counter[str],
    progress: ProgressFactory,
) -> tuple[list[dict[str, Any]], int, int]:
    """Merge and write every tensor; returns the treatment report and the bytes read and written.

    `seconds` gains `read` (mapping the inputs; with a cold page cache, the maths then waits on
    the disk), `compute` and `write_wait` (time blocked on a full output buffer; the rest of the
    writing overlaps reading and maths)."""
    merge_fn = functools.partial(METHODS[cfg.method], params=cfg.params())
    elementwise = cfg.method in ELEMENTWISE
    layout = {item.name: (item.info.dtype, item.info.shape) for item in plan.items}
    writer = ShardWriter(out, plan.shards, layout, cfg.buffer_mb << 20)
    report, bytes_read = [], 0
    bar = progress(total=len(plan.items), desc=f"merge ({cfg.method})", unit="tensor")
    try:
        for item in plan.items:
            treatment = item.assignment.treatment
            tick = started = time.perf_counter()
            stored, *inputs = [reader.read(item.name) for reader in _readers(item, base, experts)] or [None]
            bytes_read += item.info.nbytes * (len(inputs) + (stored is not None))
            seconds["read"] += (tock := time.perf_counter()) - tick
            try:
                block = CPU_BLOCK if device.type == "cpu" and (treatment == "mean" or elementwise) else None
                result, used = (
                    merge_tensor(stored, inputs, treatment, merge_fn, device, block)
                    if stored is not None
                    else (None, [])
                )
            except ValueError as err:
                raise MergeError(f"tensor {item.name!r} ({treatment}, {cfg.method}): {err}") from None
            if result is not None and result is stored:
                # The base itself, mapped from its file: a copy for the writer's queue frees the
                # mapping (and the file descriptor each mapping holds) now.
                result = result.clone()
            del stored, inputs
            seconds["compute"] += (tick := time.perf_counter()) - tock
            if result is not None:
                writer.add(item.name, result)
            seconds["write_wait"] += time.perf_counter() - tick
            report.append(_report_entry(item, [experts[k].name for k in used], time.perf_counter() - started))
            bar.update(1)
        tick = time.perf_counter()
        writer.finish()
        seconds["write_wait"] += time.perf_counter() - tick
    finally:
        writer.close()
        bar.close()
    return report, bytes_read, writer.total_bytes


def _readers(item: PlanItem, base: CheckpointReader, experts: Sequence[CheckpointReader]) -> list[CheckpointReader]:
    """Whose copies of the item its treatment reads: the base's (unless tied), then the experts'
    (for `merge` and `mean`)."""
    treatment = item.assignment.treatment
    return ([] if treatment == "tied" else [base]) + (list(experts) if treatment in ("merge", "mean") else [])


def _report_entry(item: PlanItem, used: list[str], seconds: float) -> dict[str, Any]:
    entry = {
        "name": item.name,
        "rule": item.assignment.rule,
        "treatment": item.assignment.treatment,
        "shape": list(item.info.shape),
        "dtype": str(item.info.dtype).removeprefix("torch."),
        "experts": used,
        "seconds": round(seconds, 6),
    }
    if item.assignment.tied_to is not None:
        entry["tied_to"] = item.assignment.tied_to
    return entry


def _describe_input(source: Source, reader: CheckpointReader, hashed: bool) -> dict[str, Any]:
    """Path and (when `hashed`) sha256 of each weight file, plus one digest over them."""
    index = reader.dir / INDEX
    files = [*reader.weight_files, index] if index.is_file() else reader.weight_files
    entry: dict[str, Any] = {"name": source.name, "path": str(source.model_dir.resolve())}
    if hashed:
        digests = {path.name: sha256(path) for path in files}
        entry["files"] = digests
        entry["sha256"] = _digest_of(digests)
    return entry


def _digest_of(digests: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{name}:{d}\n" for name, d in sorted(digests.items())).encode()).hexdigest()


def _current_rss() -> int | None:
    """Resident bytes now (Linux), else None."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def peak_rss() -> int:
    """This process's resident high-water mark in bytes.

    VmHWM where there is one (Linux): unlike ru_maxrss, which keeps the high-water mark from
    before exec, i.e. of the parent at fork time (a subprocess of a large pytest or Ray worker).
    """
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _memory(rss_at_start: int | None, device: torch.device) -> dict[str, float | None]:
    mb = 1 << 20
    return {
        "peak_rss": round(peak_rss() / mb, 1),
        "rss_at_start": None if rss_at_start is None else round(rss_at_start / mb, 1),
        "peak_cuda": round(torch.cuda.max_memory_allocated(device) / mb, 1) if device.type == "cuda" else None,
    }
