"""Checkpoint directories: written under a temporary name, renamed when complete, last K kept.

Layout of ``<run>/checkpoints/step-000042/``: ``model/`` (Hugging Face safetensors checkpoint
with processor files: loads in transformers and vLLM), ``optim/rank-<r>.safetensors`` (each
learner rank's optimizer shard) and ``trainer_state.json`` (step, weight version, the settings
that fix the data order), written last and deleted first. A directory without the state file, or
still named ``*.tmp``, is incomplete and never resumed from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from tiny_r1v.config.train import TrainConfig

_NAME = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
"""The run's metrics, one JSON row per training step or validation, in the run directory."""


@dataclass(frozen=True)
class TrainerState:
    """What the driver needs, besides the learners' files, to continue a run."""

    step: int
    """Training steps completed."""
    weight_version: int
    """Weight syncs completed (the version the rollout workers hold)."""
    order: dict[str, int | bool]
    """The settings that, with ``step``, fix every later step's prompts and samples (dataset
    size, data seed and shuffle, rollout batch size, rollout seed and n): a resumed run must
    match them (see ``order_of``)."""


class ExistingRunError(ValueError):
    """A new run would write into the checkpoints of an earlier one."""


def order_of(cfg: TrainConfig, dataset_size: int) -> dict[str, int | bool]:
    """The settings a resumed run must share with the interrupted one (see ``TrainerState.order``)."""
    return {
        "dataset_size": dataset_size,
        "data.seed": cfg.data.seed,
        "data.shuffle": cfg.data.shuffle,
        "trainer.rollout_batch_size": cfg.trainer.rollout_batch_size,
        "rollout.seed": cfg.rollout.seed,
        "rollout.n": cfg.rollout.n,
    }


def check_resumable(path: Path, state: TrainerState, order: dict[str, int | bool]) -> None:
    """Raise if the checkpoint at ``path`` was saved under another data order than ``order``."""
    changed = [
        f"{key} {state.order.get(key)} -> {value}" for key, value in order.items() if state.order.get(key) != value
    ]
    if changed:
        raise ValueError(
            f"{path}: saved under other settings ({', '.join(changed)}); resuming would change the "
            "prompts and samples of the remaining steps"
        )


def _earlier_outputs(run_dir: Path) -> list[str]:
    """What an earlier run left in ``run_dir`` that a new run would write over: checkpoints
    (complete or not) and the metrics file."""
    root = checkpoint_root(run_dir)
    found = [str(root / name) for name in sorted(p.name for p in root.iterdir())[-3:]] if root.is_dir() else []
    metrics = run_dir / METRICS_FILE
    return found + ([str(metrics)] if metrics.is_file() else [])


def start_point(run_dir: Path, resume: bool, order: dict[str, int | bool]) -> tuple[Path, TrainerState] | None:
    """Where a run starts: None for step 0, else the checkpoint it resumes from and its state.

    A new run refuses a directory holding an earlier run's checkpoints or metrics (it would mix
    its steps with them, and keeping the last K would delete the newer ones). ``resume`` continues
    from the newest complete checkpoint saved under the same ``order``; with none it starts at
    step 0 only where nothing of an earlier run would be written over. Runs before any actor
    starts, so a refusal costs no start-up.
    """
    if resume and (found := latest(run_dir)) is not None:
        check_resumable(found[0], found[1], order)
        return found
    if earlier := _earlier_outputs(run_dir):
        advice = (
            "nothing complete to resume from, and starting at step 0 would write over it"
            if resume
            else "pass --resume to continue it"
        )
        raise ExistingRunError(
            f"{run_dir} holds an earlier run ({', '.join(earlier)}): {advice}; or choose another "
            "trainer.experiment_name or trainer.output_dir, or remove the directory"
        )
    return None


def run_dir(cfg: TrainConfig) -> Path:
    """Where a run writes its config, metrics and checkpoints."""
    return Path(cfg.trainer.output_dir) / cfg.trainer.experiment_name


def log_dir(cfg: TrainConfig) -> Path:
    """Where the run's processes write their log files (see `tiny_r1v.console`)."""
    return run_dir(cfg) / "logs"


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def staging_dir(run_dir: Path, step: int) -> Path:
    """Where a checkpoint is written before it is complete (emptied first)."""
    path = checkpoint_root(run_dir) / f"step-{step:06d}.tmp"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def publish(staging: Path, state: TrainerState, keep: int) -> Path:
    """Write the state file, rename the staging directory to its final name, keep the last ``keep``."""
    (staging / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    final = staging.with_name(staging.name.removesuffix(".tmp"))
    if final.exists():  # the same step saved by an earlier, interrupted attempt
        _remove(final)
    os.replace(staging, final)
    for old in complete_checkpoints(staging.parent)[:-keep]:
        _remove(old)
    return final


def _remove(path: Path) -> None:
    """Delete a checkpoint, its state file first: a deletion cut short leaves an incomplete one."""
    (path / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(path)


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest(run_dir: Path) -> tuple[Path, TrainerState] | None:
    """The newest complete checkpoint of a run and its state, if any."""
    found = complete_checkpoints(checkpoint_root(run_dir))
    if not found:
        return None
    path = found[-1]
    try:
        return path, TrainerState(**json.loads((path / STATE_FILE).read_text()))
    except TypeError as err:
        raise ValueError(f"{path / STATE_FILE}: not a state file of this version ({err})") from None
