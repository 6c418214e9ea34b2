"""Per-step metrics to the console (progress bar), a JSONL file, TensorBoard and Ray's dashboard."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import ray
from ray.util.metrics import Gauge
from tqdm import tqdm

from tiny_r1v.trainer.checkpoint import METRICS_FILE, ExistingRunError

# Shown on the progress bar; everything goes to the files and the dashboard.
_HEADLINE = {
    "reward/mean": "reward",
    "reward/accuracy": "acc",
    "length/mean": "len",
    "time/step": "s/step",
    "val/reward/accuracy": "val_acc",
}


def trend(
    rows: Sequence[Mapping[str, float]], keys: Sequence[str] = ("reward/mean", "length/mean"), window: int = 5
) -> str:
    """One line: each key's mean over the first and over the last `window` steps of `rows`
    (metrics records in step order; a shorter run uses half of its steps for each end)."""
    n = min(window, max(1, len(rows) // 2))
    parts = []
    for key in keys:
        values = [row[key] for row in rows if key in row]
        if values:
            first, last = sum(values[:n]) / len(values[:n]), sum(values[-n:]) / len(values[-n:])
            parts.append(f"{key} {first:.3g} -> {last:.3g}")
    return f"{', '.join(parts)} (means of the first and last {n} steps)"


def staleness_metrics(versions: Sequence[int], learner_version: int) -> dict[str, float]:
    """How many weight versions the samples of a step (`versions`: the version that sampled each)
    lag the learners' (`learner_version`) that train on them."""
    lags = [learner_version - version for version in versions]
    return {"staleness/mean": sum(lags) / len(lags), "staleness/max": float(max(lags))}


def occupancy(step_seconds: float, busy: Mapping[str, float]) -> dict[str, float]:
    """Busy and idle seconds of each actor group (`busy`: group name -> its busy seconds, the
    mean over its actors) in a step of `step_seconds`; idle is the rest, at least 0."""
    metrics = {}
    for group, seconds in busy.items():
        metrics[f"busy/{group}_s"] = seconds
        metrics[f"idle/{group}_s"] = max(0.0, step_seconds - seconds)
    return metrics


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The records of a metrics JSONL file, in step order."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def _gauge_name(key: str) -> str:
    # Prometheus names allow [a-zA-Z0-9_:] only.
    return "tiny_r1v_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class MetricsLogger:
    """Writes every step's metrics to each configured sink.

    On resume the JSONL file is cut back to the checkpoint's step, so a step logged by the
    interrupted run after its last checkpoint appears once, not twice; ``validated`` holds the
    steps whose validation rows it kept (none without the JSONL sink).
    """

    def __init__(
        self, run_dir: Path, loggers: Sequence[str], experiment: str, total_steps: int, start_step: int
    ) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.experiment = experiment
        self.jsonl = None
        self.validated: set[int] = set()
        if "jsonl" in loggers:
            path = run_dir / METRICS_FILE
            if path.exists():
                if start_step == 0:
                    raise ExistingRunError(f"{path}: an earlier run's metrics; a new run does not write over them")
                kept = [row for row in read_metrics(path) if row["step"] <= start_step]
                tmp = path.with_name(f"{path.name}.tmp")
                tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
                os.replace(tmp, path)
                self.validated = {row["step"] for row in kept if "val/samples" in row}
            self.jsonl = path.open("a")
        self.tensorboard = None
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter

            purge = start_step + 1 if start_step > 0 else 0
            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
        self.bar = tqdm(total=total_steps, initial=start_step, desc=experiment, disable="console" not in loggers)
        self.gauges: dict[str, Gauge] = {}
        self.headline: dict[str, str] = {}

    def log(self, step: int, metrics: dict[str, float], advance: bool = True) -> None:
        """Record ``metrics`` of training step ``step`` (1-based; 0: before training). Validation
        comes as a row of its own with ``advance=False`` (no step on the progress bar)."""
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
            self.jsonl.flush()
        if self.tensorboard is not None:
            for key, value in metrics.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()
        if ray.is_initialized():
            for key, value in {"step": float(step), **metrics}.items():
                if key not in self.gauges:
                    self.gauges[key] = Gauge(_gauge_name(key), description=key, tag_keys=("experiment",))
                self.gauges[key].set(value, tags={"experiment": self.experiment})
        # Training and validation rows come separately: the bar keeps the latest of each figure.
        self.headline.update({label: f"{metrics[k]:.3g}" for k, label in _HEADLINE.items() if k in metrics})
        self.bar.set_postfix(self.headline)
        self.bar.update(int(advance))

    def close(self) -> None:
        """Flush and close the sinks."""
        self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
