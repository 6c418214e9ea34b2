"""Checkpoint directories: written under a temporary name, renamed when complete, last K kept;
and the one place that says what a model directory or a run's checkpoint must hold (training,
the merge and evaluation all find their inputs through `resolve_model_dir`).

Layout of ``<run>/checkpoints/step-000042/``: ``model/`` (Hugging Face safetensors checkpoint
with processor files: loads in transformers and vLLM), ``optim/rank-<r>.safetensors`` (each
learner rank's optimizer shard) and ``trainer_state.json`` (step, weight version, the settings
that fix the data order), written last and deleted first. A checkpoint counts as complete only
when all three are there (see `checkpoint_problems`): one still named ``*.tmp``, one whose
deletion was cut short, or one whose files were lost since is never resumed from, merged or
evaluated; the newest complete one is.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from tiny_r1v.config.train import TrainConfig

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d+)$")
_RANK = re.compile(r"^rank-(\d+)\.safetensors$")
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
"""The run's metrics, one JSON row per training step or validation, in the run directory."""
MODEL_DIR = "model"
OPTIM_DIR = "optim"
MODEL_CONFIG = "config.json"
WEIGHTS_INDEX = "model.safetensors.index.json"
"""Index of a sharded safetensors model: ``weight_map`` names each tensor's shard file."""


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
    """A run cannot start in its run directory as asked: a new run would write over an earlier
    one's checkpoints or metrics, or the checkpoint to resume was saved under other settings."""


class CheckpointError(ValueError):
    """A directory given as a model or a run holds no usable model; the message names the
    directory and what it lacks."""


def order_of(cfg: TrainConfig, dataset_size: int) -> dict[str, int | bool]:
    """The settings a resumed run must share with the interrupted one (see ``TrainerState.order``)."""
    return {
        "dataset_size": dataset_size,
        "data.seed": cfg.data.seed,
        "data.shuffle": cfg.data.shuffle,
        "trainer.rollout_batch_size": cfg.trainer.rollout_batch_size,
        "rollout.seed": cfg.rollout.seed,
        "rollout.n": cfg.rollout.n,
        # Each learner rank resumes its own optimizer shard.
        "learner.num_workers": cfg.learner.num_workers,
    }


def check_resumable(path: Path, state: TrainerState, order: dict[str, int | bool]) -> None:
    """Raise if the checkpoint at ``path`` was saved under another data order than ``order``."""
    changed = [
        f"{key} {state.order.get(key)} -> {value}" for key, value in order.items() if state.order.get(key) != value
    ]
    if changed:
        raise ExistingRunError(
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
    published = _published(checkpoint_root(run_dir))
    damaged = {path: problems for path in published if (problems := checkpoint_problems(path))}
    complete = [path for path in published if path not in damaged]
    if resume and complete:
        found = complete[-1], read_state(complete[-1])
        check_resumable(*found, order)
        for path, problems in damaged.items():
            if _step(path) > found[1].step:
                logger.warning("passing over the incomplete checkpoint %s: %s", path, "; ".join(problems))
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
            + "".join(f"\n  incomplete: {path}: {'; '.join(problems)}" for path, problems in damaged.items())
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
    """Write the state file, rename the staging directory to its final name, keep the last ``keep``
    complete checkpoints (and remove any damaged one older than them)."""
    (staging / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    final = staging.with_name(staging.name.removesuffix(".tmp"))
    if final.exists():  # the same step saved by an earlier, interrupted attempt
        _remove(final)
    os.replace(staging, final)
    complete = complete_checkpoints(staging.parent)
    if len(complete) > keep:
        oldest_kept = _step(complete[-keep])
        for old in _published(staging.parent):
            if _step(old) < oldest_kept:
                _remove(old)
    return final


def _remove(path: Path) -> None:
    """Delete a checkpoint, its state file first: a deletion cut short leaves an incomplete one."""
    (path / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(path)


def _published(root: Path) -> list[Path]:
    """Checkpoint directories with their final name and a state file, oldest first (what the
    last-K rule counts and removes, complete or damaged)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=_step)


def _step(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories (no `checkpoint_problems`), oldest first."""
    return [path for path in _published(root) if not checkpoint_problems(path)]


def model_problems(model: Path) -> list[str]:
    """What model directory `model` lacks to load (empty: nothing): its config.json, and its
    weights: a ``*.safetensors`` file, or an index whose listed shard files all exist."""
    problems = [] if (model / MODEL_CONFIG).is_file() else [f"no {MODEL_CONFIG}"]
    index = model / WEIGHTS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            return [*problems, f"{WEIGHTS_INDEX} has no readable weight_map ({type(err).__name__}: {err})"]
        missing = [shard for shard in shards if not (model / shard).is_file()]
        if missing:
            problems.append(f"shard files listed in {WEIGHTS_INDEX} are missing: {', '.join(missing)}")
    elif not any(model.glob("*.safetensors")):
        problems.append(f"no weights (no *.safetensors file, no {WEIGHTS_INDEX})")
    return problems


def checkpoint_problems(path: Path) -> list[str]:
    """What checkpoint directory `path` lacks to count as complete (empty: nothing): the model,
    a parsable state file, and the optimizer shard of every learner rank the state names (of
    ranks 0..R-1 with none missing in between, for a state that names none)."""
    problems = [f"{MODEL_DIR}/: {problem}" for problem in model_problems(path / MODEL_DIR)]
    state: object = None
    try:
        state = json.loads((path / STATE_FILE).read_text())
        if not isinstance(state, dict):
            problems.append(f"{STATE_FILE} is not a JSON object")
    except OSError:
        problems.append(f"no {STATE_FILE}")
    except ValueError as err:
        problems.append(f"{STATE_FILE} does not parse ({err})")
    order = state.get("order") if isinstance(state, dict) else None
    ranks_saved = order.get("learner.num_workers") if isinstance(order, dict) else None
    optim = path / OPTIM_DIR
    ranks = sorted(int(m.group(1)) for p in optim.glob("rank-*") if (m := _RANK.match(p.name)) and p.is_file())
    if not ranks and ranks_saved is None:
        problems.append(f"no optimizer shard ({OPTIM_DIR}/rank-<r>.safetensors)")
    else:
        expected = ranks_saved if isinstance(ranks_saved, int) else ranks[-1] + 1
        problems += [f"no {OPTIM_DIR}/rank-{rank}.safetensors" for rank in sorted(set(range(expected)) - set(ranks))]
    return problems


def is_model_dir(path: Path) -> bool:
    """Whether `path` is meant as a model directory (a config or weights of its own), as opposed
    to a run directory."""
    return (path / MODEL_CONFIG).is_file() or (path / WEIGHTS_INDEX).is_file() or any(path.glob("*.safetensors"))


def resolve_model_dir(path: Path, step: int | None, who: str) -> Path:
    """The absolute model directory `path` stands for: `path` itself when it is a model directory
    (which must then be complete), else the model of the run directory's newest complete
    checkpoint, or of checkpoint `step`. CheckpointError naming `who`, the directory and what
    is missing otherwise."""
    if not path.is_dir():
        raise CheckpointError(f"{who}: no such directory {path}")
    if is_model_dir(path):
        if step is not None:
            raise CheckpointError(f"{who}: {path} is a model directory, so step {step} cannot apply")
        problems = model_problems(path)
        if problems:
            raise CheckpointError(f"{who}: model directory {path} is incomplete: {'; '.join(problems)}")
        return path.resolve()
    root = checkpoint_root(path)
    found = complete_checkpoints(root)
    if step is not None:
        found = [ckpt for ckpt in found if ckpt.name == f"step-{step:06d}"]
    if not found:
        wanted = f"complete checkpoint step {step}" if step is not None else "complete checkpoint"
        broken = [
            f"{ckpt.name}: {'; '.join(problems)}"
            for ckpt in _published(root)
            if (step is None or ckpt.name == f"step-{step:06d}") and (problems := checkpoint_problems(ckpt))
        ]
        raise CheckpointError(
            f"{who}: {path} is neither a model directory (no {MODEL_CONFIG}, no weights) nor a run "
            f"directory with a {wanted} under checkpoints/" + "".join(f"\n  {line}" for line in broken)
        )
    return (found[-1] / MODEL_DIR).resolve()


def latest(run_dir: Path) -> tuple[Path, TrainerState] | None:
    """The newest complete checkpoint of a run and its state, if any."""
    found = complete_checkpoints(checkpoint_root(run_dir))
    return (found[-1], read_state(found[-1])) if found else None


def read_state(path: Path) -> TrainerState:
    """The state of complete checkpoint `path` (CheckpointError when its state file is of
    another version)."""
    try:
        return TrainerState(**json.loads((path / STATE_FILE).read_text()))
    except TypeError as err:
        raise CheckpointError(f"{path / STATE_FILE}: not a state file of this version ({err})") from None
