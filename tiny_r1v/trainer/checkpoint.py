"""Checkpoint directories: written under a temporary name, renamed when complete, last K kept.

Layout of ``<run>/checkpoints/step-000042/``: ``model/`` (Hugging Face safetensors checkpoint
with processor files: loads in transformers and vLLM), ``optim/rank-<r>.safetensors`` (each
learner rank's optimizer shard) and ``trainer_state.json`` (step, weight version, data order),
written last. A directory without the state file, or still named ``*.tmp``, is incomplete and
never resumed from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

_NAME = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class TrainerState:
    """What the driver needs, besides the learners' files, to continue a run."""

    step: int
    """Training steps completed."""
    weight_version: int
    """Weight syncs completed (the version the rollout workers hold)."""
    data_seed: int
    """Seed of the data order; with ``step`` it fixes the next prompts (see ``sampler``)."""
    dataset_size: int
    """Number of training examples, checked on resume so the data order cannot drift."""


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
        shutil.rmtree(final)
    os.replace(staging, final)
    for old in complete_checkpoints(staging.parent)[:-keep]:
        shutil.rmtree(old)
    return final


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
    return path, TrainerState(**json.loads((path / STATE_FILE).read_text()))
