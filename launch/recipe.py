"""The whole recipe at small scale: `python launch/recipe.py [--config FILE] [--verbose] [key=value ...]`.

Builds or reuses the common base, trains one LIPO expert per task and one model on the mixture,
merges the experts with every configured method (choices such as task arithmetic's λ made on the
validation split), evaluates every model on each task's test split and writes the table
(schema and stages: tiny_r1v/evidence/recipe.py; default configs/recipe.yaml; overrides address
its keys, e.g. `seeds=[1]` or `expert_steps=2`). A finished stage is skipped, an interrupted one
continues: run the same command again after a kill. Every stage's config is written to
`<output_dir>/seed-<s>/configs/` with the launcher command that runs it alone. Every training
and merge config is checked before Ray starts. One Ray instance (RAY_ADDRESS, else a new local one).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from tiny_r1v.config import ConfigError, load_config
from tiny_r1v.console import add_verbose_flag, ray_init_options, setup_driver
from tiny_r1v.evidence import recipe

DEFAULT = Path(__file__).resolve().parent.parent / "configs" / "recipe.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT, help="recipe YAML (default: configs/recipe.yaml)")
    add_verbose_flag(parser, "<output_dir>/logs/ and each run's logs/")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override recipe config values")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(recipe.RecipeConfig, args.config, args.overrides)
        if args.verbose:
            cfg = replace(cfg, train_overrides=(*cfg.train_overrides, "trainer.verbose=true"))
        recipe.check(cfg)
    except ConfigError as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 2

    import ray

    setup_driver(Path(cfg.output_dir) / "logs" / "recipe.log", args.verbose)
    ray.init(address=os.environ.get("RAY_ADDRESS"), **ray_init_options())
    try:
        paths = recipe.run_recipe(cfg)
    finally:
        ray.shutdown()
    print(f"report: {', '.join(str(p) for p in paths)}")
    print(paths[0].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
