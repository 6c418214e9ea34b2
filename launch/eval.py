"""Evaluate models on benchmarks: `python launch/eval.py --models base=DIR,math=DIR
--benchmarks FILE[,FILE...] [--config FILE] [--out DIR] [key.sub=value ...]`.

A model is `name=DIR`, a bare DIR, or a name from the config's `models`; DIR is a model directory
(a plain Hugging Face one, or a merge's output) or a training run, whose newest complete
checkpoint is evaluated. A benchmark is a dataset file (`name=FILE`, a bare FILE, or a config
name). The config, the models and every benchmark row are checked before Ray starts: a problem
stops here, naming it, with exit status 2. Each model then runs in a Ray actor with its own vLLM
engine, on the cluster in RAY_ADDRESS or a new local instance; pairs finished by an earlier run
with the same settings are reused, and Ray is not started when nothing is left to generate.
The table (Markdown, CSV, JSON), the plot and per-sample outputs land in `output_dir`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tiny_r1v.config import ConfigError, load_config
from tiny_r1v.console import add_verbose_flag, setup_driver
from tiny_r1v.eval import EvalConfig, EvalError
from tiny_r1v.eval.inputs import resolve_benchmarks, resolve_models, split_items

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "eval.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        default="",
        help="comma-separated name=DIR, DIR or config names (default: every model in the config)",
    )
    parser.add_argument(
        "--benchmarks",
        default="",
        help="comma-separated name=FILE, FILE or config names (default: every benchmark in the config)",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config (default: configs/eval.yaml)")
    parser.add_argument("--out", help="output directory (overrides `output_dir`)")
    add_verbose_flag(parser, "<output_dir>/logs/")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config values")
    return parser.parse_intermixed_args(argv)  # overrides may come before or after the options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = [*args.overrides, *(["verbose=true"] if args.verbose else [])]
    if args.out is not None:
        overrides.append(f"output_dir={args.out}")
    try:
        cfg = load_config(EvalConfig, args.config, overrides)
        models = resolve_models(cfg, split_items(args.models))
        benchmarks = resolve_benchmarks(cfg, split_items(args.benchmarks))
    except (ConfigError, EvalError) as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 2

    from tiny_r1v.eval.runner import run_eval  # deferred: bad input stops before the reward stack loads

    setup_driver(Path(cfg.output_dir) / "logs" / "driver.log", cfg.verbose)
    result = run_eval(cfg, models, benchmarks)
    print(result.files[0].read_text())
    print(
        f"{len(result.computed)} pairs evaluated, {len(result.reused)} reused; "
        f"tables, plot and per-sample outputs in {cfg.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
