"""Merge experts: `python launch/amm.py --experts math,chart,ocr [--config FILE] [--method NAME]
[--out DIR] [key.sub=value ...]`.

Expert names resolve through the config's `experts` (a model directory, or a training run whose
newest or chosen checkpoint is merged); directories work in place of names. The config, the
inputs (keys, shapes, dtypes against the base) and the treatment policy are checked before Ray
starts: a problem stops here with a message naming the tensor and the expert. The merge then
runs in a Ray actor (one GPU when the cluster has one) on the cluster in RAY_ADDRESS (as under
`ray job submit`), else on a new local Ray instance, and a summary is printed at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from tiny_r1v.config import ConfigError, load_config
from tiny_r1v.console import add_verbose_flag, ray_init_options, setup_driver
from tiny_r1v.merge import MergeConfig, MergeError
from tiny_r1v.merge.runner import check
from tiny_r1v.merge.sources import resolve

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "amm.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--experts",
        default="",
        help="comma-separated expert names or directories (default: every expert in the config)",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config (default: configs/amm.yaml)")
    parser.add_argument("--method", help="merge method (overrides `method`)")
    parser.add_argument("--out", help="output directory (overrides `output`)")
    add_verbose_flag(parser, "<output>.log")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config values")
    return parser.parse_intermixed_args(argv)  # overrides may come before or after the options


def summary(provenance: dict[str, Any]) -> str:
    """A few lines for the console: what was merged, where it went, time and memory."""
    gb = 1e9
    experts = ", ".join(entry["name"] for entry in provenance["inputs"][1:])
    treated = ", ".join(f"{n} {t}" for t, n in sorted(provenance["tensors"].items()))
    seconds = provenance["seconds"]
    phases = ", ".join(f"{phase} {seconds[phase]:.1f}" for phase in ("check", "hash", "merge", "finish"))
    parts = ", ".join(f"{phase} {seconds.get(phase, 0.0):.1f}" for phase in ("read", "compute", "write_wait"))
    memory = provenance["memory_mb"]
    cuda = f", CUDA peak {memory['peak_cuda']:.0f} MiB" if memory["peak_cuda"] is not None else ""
    return "\n".join(
        [
            f"merged {experts} into {provenance['inputs'][0]['path']} with {provenance['method']} "
            f"on {provenance['device']}",
            f"output: {provenance['output']}",
            f"tensors: {treated}",
            f"read {provenance['bytes']['read'] / gb:.2f} GB, wrote {provenance['bytes']['written'] / gb:.2f} GB "
            f"({provenance['bytes']['read'] / gb / max(seconds['merge'], 1e-9):.2f} GB/s read during the merge)",
            f"seconds: {phases} (merge = {parts}); total {seconds['total']:.1f}",
            f"memory: peak RSS {memory['peak_rss']:.0f} MiB (at start {memory['rss_at_start']} MiB){cuda}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.method is not None:
        overrides.append(f"method={args.method}")
    if args.out is not None:
        overrides.append(f"output={args.out}")
    try:
        cfg = load_config(MergeConfig, args.config, overrides)
        # Absolute: the actor's working directory is not this process's.
        cfg = replace(cfg, output=str(Path(cfg.output).resolve()))
        base, experts = resolve(cfg, [name for name in args.experts.split(",") if name])
        check(cfg, base, experts)
    except (ConfigError, MergeError) as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 2

    import ray

    from tiny_r1v.merge.actor import run_on_ray

    # The merge actor's own output is its progress bar (drawn here by Ray): only this process's
    # and Ray's INFO lines are moved off the console.
    setup_driver(Path(f"{cfg.output}.log"), args.verbose)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), **ray_init_options())
    try:
        provenance = run_on_ray(cfg, base, experts)
    except MergeError as err:
        # An error raised in the actor arrives as a RayTaskError that is also a MergeError, and
        # its text is the remote traceback: the message is its cause's.
        cause = err.cause if isinstance(err, ray.exceptions.RayTaskError) else err
        print(f"merge failed: {cause}", file=sys.stderr)
        return 1
    print(summary(provenance))
    return 0


if __name__ == "__main__":
    sys.exit(main())
