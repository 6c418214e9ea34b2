"""Run a grid of training runs and report it:
`python launch/sweep.py [--config FILE] [--report-only | --eval-only] [key=value ...]`.

Methods × seeds × tasks from the sweep config (default configs/sweep.yaml; overrides address its
keys, e.g. `seeds=[1]` or `overrides=[trainer.total_steps=2]`), each an ordinary training run in
`<output_dir>/<task>/<method>/seed-<s>/` (`launch/lipo.py --config <run>/config.yaml --resume`
continues one). One Ray instance (RAY_ADDRESS, else a new local one) for the whole grid and one
run's actors at a time. Finished runs are skipped, interrupted ones resumed from their newest
checkpoint, a failed one is recorded and the grid goes on. Every run's config, the base model and
the data files are checked before Ray starts. After the grid, the base and every finished run's
final weights are evaluated on the held-out files, sampled as the rollouts sample
(`eval_samples` per prompt, into `<output_dir>/eval/<task>/`; evaluated pairs are reused). The
report goes to `<output_dir>/report/`.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from tiny_r1v.config import ConfigError
from tiny_r1v.console import add_verbose_flag, ray_init_options, setup_driver
from tiny_r1v.evidence import sweep, sweep_eval
from tiny_r1v.evidence.sweep_report import write_report

DEFAULT = Path(__file__).resolve().parent.parent / "configs" / "sweep.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT, help="sweep YAML (default: configs/sweep.yaml)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--report-only", action="store_true", help="write the report from the runs so far, run nothing")
    mode.add_argument("--eval-only", action="store_true", help="evaluate the finished runs and report, train nothing")
    add_verbose_flag(parser, "<output_dir>/logs/ and each run's logs/")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override sweep config values")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = sweep.load_sweep(args.config, args.overrides)
        if args.verbose:
            cfg = replace(cfg, overrides=(*cfg.overrides, "trainer.verbose=true"))
        runs = sweep.plan(cfg)
        configs = [sweep.train_config(cfg, run) for run in runs]
        if not args.report_only and (missing := sweep.missing_inputs(configs)):
            raise ConfigError(*(("", line) for line in missing))
        if changed := sweep.changed_runs(configs):
            raise ConfigError(*(("", line) for line in changed))
    except ConfigError as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 2
    out = sweep.report_dir(cfg)
    if not args.report_only:
        import ray

        setup_driver(Path(cfg.output_dir) / "logs" / "sweep.log", args.verbose)
        ray.init(address=os.environ.get("RAY_ADDRESS"), **ray_init_options())
        try:
            if not args.eval_only:
                outcomes = sweep.run_grid(cfg)
                counts = {k: sum(v == k for v in outcomes.values()) for k in ("finished", "skipped", "failed")}
                print(f"{len(runs)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
            if cfg.eval_samples:
                sweep_eval.evaluate(cfg)
        finally:
            ray.shutdown()
    paths = write_report(out, sweep_eval.with_sampled(cfg, sweep.collect(cfg)), cfg.reference_method)
    print(f"report: {', '.join(str(p) for p in paths)}")
    print(paths[0].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
