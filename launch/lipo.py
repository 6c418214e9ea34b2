"""Train one LIPO expert: `python launch/lipo.py [--config FILE] [--resume] [key.sub=value ...]`.

With no arguments it runs the CPU quickstart (configs/quickstart.yaml). The configuration is
validated before anything starts; a bad key or value stops here with a message naming it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from tiny_r1v.config import ConfigError, load_config, to_dict
from tiny_r1v.config.train import TrainConfig

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=QUICKSTART, help="YAML config (default: the quickstart)")
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config values")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
    except ConfigError as err:
        print(f"config error in {args.config}:\n{err}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    print(
        "Configuration valid. The LIPO actor graph (rollout workers, reward scorer, FSDP2 learners,"
        " driver) is not built yet: nothing was trained."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
