"""Pipelined rollouts against the strict order: step time and each actor group's idle share.

    python bench/pipeline.py [--steps 6] [--repeats 1] [key.sub=value ...]

Trains the quickstart (configs/quickstart.yaml; its assets are built when missing) with
`trainer.max_staleness` 0 (strict) and 1 (pipelined, with `algorithm.tis_cap` 2), in one Ray
instance, the two taking turns `--repeats` times; no validation, a checkpoint only after the last
step (outside `time/step`), outputs in a temporary directory. Each run's first step is left out
(nothing to overlap yet, and the engines' first calls are slower). Figures are medians over the
remaining steps of all repeats: `time/step`, and each group's idle share (`idle/<group>_s` over
`time/step`, see docs/training.md); the ratio column is pipelined over strict, measured in this
same run. Overrides apply to both (e.g. `rollout.max_response_length=64`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import ray

from tiny_r1v import quickstart
from tiny_r1v.config import load_config
from tiny_r1v.config.train import TrainConfig
from tiny_r1v.data import load_examples
from tiny_r1v.trainer.driver import Driver

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
MODES = {"strict": ["trainer.max_staleness=0"], "pipelined": ["trainer.max_staleness=1", "algorithm.tis_cap=2.0"]}


def run(overrides: list[str], name: str, steps: int) -> list[dict[str, float]]:
    """The metrics of each step of one run, its first step left out."""
    settings = ["data.val_files=[]", "trainer.save_freq=0", f"trainer.total_steps={steps}", "trainer.loggers=[]"]
    cfg = load_config(TrainConfig, QUICKSTART, [*settings, f"trainer.experiment_name={name}", *overrides])
    data = cfg.data
    examples = load_examples(data.train_files, min_pixels=data.min_pixels, max_pixels=data.max_pixels, task=data.task)
    rows: list[dict[str, float]] = []
    driver = Driver(cfg, examples)
    try:
        driver.run(on_step_end=lambda _driver, step, metrics: rows.append(metrics) if step > 1 else None)
    finally:
        driver.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="steps per run (the first is left out)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode, taking turns")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args()
    cfg = load_config(TrainConfig, QUICKSTART, args.overrides)
    if quickstart.uses_assets(cfg):
        quickstart.prepare(min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
    out = tempfile.mkdtemp(prefix="bench-pipeline-")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    rows: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    try:
        for repeat in range(args.repeats):
            for mode, settings in MODES.items():
                overrides = [f"trainer.output_dir={out}", *args.overrides, *settings]
                rows[mode] += run(overrides, f"{mode}-{repeat}", args.steps)
    finally:
        ray.shutdown()

    def figures(mode: str) -> dict[str, float]:
        steps = rows[mode]
        return {
            "time/step (s)": statistics.median(r["time/step"] for r in steps),
            "rollout idle share": statistics.median(r["idle/rollout_s"] / r["time/step"] for r in steps),
            "learner idle share": statistics.median(r["idle/learner_s"] / r["time/step"] for r in steps),
            "rollout busy (s)": statistics.median(r["busy/rollout_s"] for r in steps),
            "learner busy (s)": statistics.median(r["busy/learner_s"] for r in steps),
            "response tokens": statistics.median(r["perf/response_tokens"] for r in steps),
            "staleness/mean": statistics.median(r["staleness/mean"] for r in steps),
        }

    strict, pipelined = figures("strict"), figures("pipelined")
    counted = len(rows["strict"])
    print(f"quickstart, {args.steps} steps x {args.repeats} run(s) per mode; medians of {counted} steps each")
    print(f"{'':22s} {'strict':>9s} {'pipelined':>10s} {'ratio':>7s}")
    for key in strict:
        ratio = f"{pipelined[key] / strict[key]:7.3f}" if strict[key] else f"{'-':>7s}"
        print(f"{key:22s} {strict[key]:9.3f} {pipelined[key]:10.3f} {ratio}")


if __name__ == "__main__":
    main()
