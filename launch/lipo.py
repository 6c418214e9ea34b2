"""Train one LIPO expert: `python launch/lipo.py [--config FILE] [--resume] [key.sub=value ...]`.

Runs on the Ray cluster in RAY_ADDRESS (as under `ray job submit`), else on a new local Ray
instance. With no --config it runs the CPU quickstart (configs/quickstart.yaml). The config and
every dataset row are validated before any actor starts: a bad key, value or row stops here
with a message naming it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tiny_r1v import quickstart
from tiny_r1v.config import ConfigError, load_config
from tiny_r1v.config.train import TrainConfig
from tiny_r1v.console import add_verbose_flag, ray_init_options, setup_driver
from tiny_r1v.data import DatasetError, load_examples
from tiny_r1v.trainer import checkpoint

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=QUICKSTART, help="YAML config (default: the quickstart)")
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    add_verbose_flag(parser, "<run>/logs/")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config values")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = [*args.overrides, *(["trainer.verbose=true"] if args.verbose else [])]
    try:
        cfg = load_config(TrainConfig, args.config, overrides)
        if quickstart.uses_assets(cfg):
            quickstart.prepare(min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
        if not Path(cfg.model.path).is_dir():
            raise ConfigError(("model.path", f"no model directory at {cfg.model.path}"))
        data = cfg.data
        examples, val_examples = (
            load_examples(files, min_pixels=data.min_pixels, max_pixels=data.max_pixels, task=data.row_task)
            if files
            else []
            for files in (data.train_files, data.val_files)
        )
        order = checkpoint.order_of(cfg, len(examples))
        start = checkpoint.start_point(checkpoint.run_dir(cfg), args.resume, order)
    except (ConfigError, DatasetError, checkpoint.ExistingRunError, checkpoint.CheckpointError) as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 2

    import ray

    from tiny_r1v.trainer.driver import Driver
    from tiny_r1v.trainer.metrics import read_metrics, trend

    setup_driver(checkpoint.log_dir(cfg) / "driver.log", cfg.trainer.verbose)
    ray.init(address=os.environ.get("RAY_ADDRESS"), **ray_init_options())
    driver = Driver(cfg, examples, val_examples, start)
    try:
        driver.run()
    finally:
        driver.shutdown()
    print(f"done: {driver.step} steps; metrics and checkpoints in {checkpoint.run_dir(cfg)}")
    if (metrics := checkpoint.run_dir(cfg) / checkpoint.METRICS_FILE).is_file():
        rows = read_metrics(metrics)
        print(trend([row for row in rows if "reward/mean" in row]))
        if validations := [row for row in rows if "val/samples" in row]:
            first, last = validations[0], validations[-1]
            print(
                f"validation (greedy), step {first['step']} -> {last['step']}: "
                f"accuracy {first['val/reward/accuracy']:.3g} -> {last['val/reward/accuracy']:.3g}, "
                f"length {first['val/length/mean']:.3g} -> {last['val/length/mean']:.3g}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
