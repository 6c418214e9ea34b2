"""The sweep: methods × seeds × tasks as ordinary training runs, one at a time, on one Ray instance.

`SweepConfig` is the schema of ``configs/sweep.yaml`` (loaded with `load_config`). `plan` lists
the runs of its grid; `train_config` builds a run's `TrainConfig` (the base config, the sweep's
overrides, the task's data, the method's overrides, then the seed and the run directory
``<output_dir>/<task>/<method>/seed-<s>/``), so each run is a normal training run that
``launch/lipo.py --config <run>/config.yaml --resume`` could continue. `run_grid` runs the
runs that are not `finished`, with ``--resume`` semantics, and records a run's exception in its
directory (`ERROR_FILE`) instead of stopping the grid.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tiny_r1v.config.loader import ConfigError, labelled, load_config, require, section, to_dict
from tiny_r1v.config.train import TrainConfig
from tiny_r1v.evidence.sweep_report import BASE, ROLLOUT, VALIDATION, RunRecord, Status
from tiny_r1v.tasks import Task
from tiny_r1v.trainer import checkpoint
from tiny_r1v.trainer.checkpoint import METRICS_FILE, TrainerState

if TYPE_CHECKING:
    from tiny_r1v.data import Example
    from tiny_r1v.trainer.driver import StepHook

logger = logging.getLogger(__name__)

ERROR_FILE = "sweep-error.txt"
"""In a run directory: the traceback of the run's last failed attempt (removed when it finishes)."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RESERVED_KEYS = (
    "data.task",
    "data.train_files",
    "data.val_files",
    "data.seed",
    "rollout.seed",
    "trainer.seed",
    "trainer.output_dir",
    "trainer.experiment_name",
)
"""Training keys the sweep sets for every run; no method or sweep override may set them."""


def _names(key: str, names: Sequence[str]) -> None:
    require(len(names) > 0, key, "must list at least one")
    for name in names:
        require(bool(_NAME.match(name)), key, f"{name!r} is not a plain name (letters, digits, _ . -)")
    dup = sorted({n for n in names if names.count(n) > 1})
    require(not dup, key, f"names must be unique, repeated: {', '.join(dup)}")


def _overrides(key: str, overrides: Sequence[str]) -> None:
    for item in overrides:
        name, sep, _ = item.partition("=")
        require(bool(sep) and all(name.strip().split(".")), key, f"{item!r}: expected key.sub=value")
        require(name.strip() not in RESERVED_KEYS, key, f"{item!r}: the sweep sets {name.strip()} for every run")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    """The method's name: a directory name of its runs and its label in the report."""
    overrides: tuple[str, ...] = ()
    """Training config overrides (``key.sub=value``) that make the method, applied after the
    sweep's own ``overrides`` and the task's data."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    """The task's name: a directory name of its runs and its label in the report."""
    task: Task
    """``data.task`` of its runs: selects the accuracy reward."""
    train_files: tuple[str, ...]
    """``data.train_files`` of its runs."""
    val_files: tuple[str, ...]
    """``data.val_files`` of its runs: the held-out set validated greedily (the report's figures)."""


@dataclass(frozen=True)
class GridBlock:
    """Part of the grid: every listed method × every listed seed on every listed task."""

    tasks: tuple[str, ...]
    """Task names."""
    methods: tuple[str, ...] = ()
    """Method names; empty: every method."""
    seeds: tuple[int, ...] = ()
    """Seeds; empty: every seed."""


@dataclass(frozen=True)
class SweepConfig:
    base_config: str
    """The training config every run starts from (a YAML file of `TrainConfig`)."""
    output_dir: str
    """Root of the runs (``<output_dir>/<task>/<method>/seed-<s>/``) and of ``report/``."""
    methods: tuple[MethodSpec, ...]
    """The methods compared."""
    seeds: tuple[int, ...]
    """Seeds; each run sets data.seed, rollout.seed and trainer.seed to its seed."""
    tasks: tuple[TaskSpec, ...]
    """The tasks."""
    grid: tuple[GridBlock, ...] = ()
    """Which (task, method, seed) runs to make, as a union of blocks; empty: everything."""
    overrides: tuple[str, ...] = ()
    """Training config overrides for every run (``key.sub=value``), before the task's and method's."""
    reference_method: str = "grpo"
    """The method whose final accuracy defines "tokens at equal accuracy" in the report."""
    order: Literal["task-seed-method", "task-method-seed"] = "task-seed-method"
    """The order the runs are made in (the first key varies slowest)."""
    eval_samples: int = 2
    """Samples per held-out prompt in the sampled evaluation of the base and every finished run's
    final weights after the grid (`tiny_r1v.evidence.sweep_eval`); 0: none."""

    def validate(self) -> SweepConfig:
        require(self.base_config != "", "base_config", "must not be empty")
        require(self.output_dir != "", "output_dir", "must not be empty")
        _names("methods", [m.name for m in self.methods])
        require(all(m.name != BASE for m in self.methods), "methods", f"{BASE!r} names the base model's row")
        require(self.eval_samples >= 0, "eval_samples", f"must be >= 0, got {self.eval_samples}")
        _names("tasks", [t.name for t in self.tasks])
        require(len(self.seeds) > 0, "seeds", "must list at least one")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "must be unique")
        _overrides("overrides", self.overrides)
        for i, method in enumerate(self.methods):
            with section(f"methods[{i}]"):
                _overrides("overrides", method.overrides)
        for i, task in enumerate(self.tasks):
            require(len(task.train_files) > 0, f"tasks[{i}].train_files", "must list at least one file")
            # The report's figures are the held-out validation's.
            require(len(task.val_files) > 0, f"tasks[{i}].val_files", "must list at least one file")
        methods, tasks = {m.name for m in self.methods}, {t.name for t in self.tasks}
        require(self.reference_method in methods, "reference_method", f"{self.reference_method!r} is not a method")
        for i, block in enumerate(self.grid):
            unknown = [
                *(f"task {t!r}" for t in block.tasks if t not in tasks),
                *(f"method {m!r}" for m in block.methods if m not in methods),
                *(f"seed {s}" for s in block.seeds if s not in self.seeds),
            ]
            require(len(block.tasks) > 0, f"grid[{i}].tasks", "must list at least one task")
            require(not unknown, f"grid[{i}]", f"unknown {', '.join(unknown)}")
        return self


@dataclass(frozen=True)
class Run:
    """One run of the grid."""

    task: str
    method: str
    seed: int

    @property
    def label(self) -> str:
        return f"{self.task}/{self.method}/seed-{self.seed}"


def run_dir(sweep: SweepConfig, run: Run) -> Path:
    """The run's directory: ``<output_dir>/<task>/<method>/seed-<s>``."""
    return Path(sweep.output_dir) / run.task / run.method / f"seed-{run.seed}"


def report_dir(sweep: SweepConfig) -> Path:
    return Path(sweep.output_dir) / "report"


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> SweepConfig:
    """The sweep config at ``path`` with ``key=value`` overrides (ConfigError if it does not fit)."""
    return load_config(SweepConfig, path, overrides)


def plan(sweep: SweepConfig) -> list[Run]:
    """Every run of the grid, once, in the order they are made: blocks in order, and within a
    block by ``sweep.order``."""
    runs: dict[Run, None] = {}
    for block in sweep.grid or (GridBlock(tasks=tuple(t.name for t in sweep.tasks)),):
        methods = block.methods or tuple(m.name for m in sweep.methods)
        seeds = block.seeds or sweep.seeds
        for task in block.tasks:
            if sweep.order == "task-seed-method":
                runs.update((Run(task, m, s), None) for s in seeds for m in methods)
            else:
                runs.update((Run(task, m, s), None) for m in methods for s in seeds)
    return list(runs)


def run_overrides(
    task: str, train_files: Sequence[object], val_files: Sequence[object], seed: int, directory: Path
) -> list[str]:
    """The training overrides that place a run of a grid or pipeline: its data (``data.task``
    and files), its seed (``data.seed``, ``rollout.seed``, ``trainer.seed``) and its directory
    (``trainer.output_dir`` / ``trainer.experiment_name``): exactly the `RESERVED_KEYS`."""

    def flow(values: Sequence[object]) -> str:
        return json.dumps([str(v) for v in values])  # a JSON list is a YAML flow sequence, whatever the paths hold

    return [
        f"data.task={task}",
        f"data.train_files={flow(train_files)}",
        f"data.val_files={flow(val_files)}",
        *(f"{key}={seed}" for key in ("data.seed", "rollout.seed", "trainer.seed")),
        f"trainer.output_dir={json.dumps(str(directory.parent))}",
        f"trainer.experiment_name={json.dumps(directory.name)}",
    ]


def train_overrides(sweep: SweepConfig, run: Run) -> list[str]:
    """The overrides of the base config that make ``run``: the sweep's, the method's, then the
    task's data, the seed and the run directory (no method may set those: `RESERVED_KEYS`)."""
    task = next(t for t in sweep.tasks if t.name == run.task)
    method = next(m for m in sweep.methods if m.name == run.method)
    placed = run_overrides(task.task, task.train_files, task.val_files, run.seed, run_dir(sweep, run))
    return [*sweep.overrides, *method.overrides, *placed]


def train_config(sweep: SweepConfig, run: Run) -> TrainConfig:
    """The run's training config; a ConfigError names the run (or the missing base config)."""
    if not Path(sweep.base_config).is_file():
        raise ConfigError(("base_config", f"no training config file at {sweep.base_config}"))
    with labelled(run.label):
        return load_config(TrainConfig, sweep.base_config, train_overrides(sweep, run))


def metrics_rows(directory: Path) -> list[dict]:
    """The rows of the run's metrics file (none without one); a line that does not parse (a
    write cut short) is left out."""
    path = directory / METRICS_FILE
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else ():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def finished(directory: Path, total_steps: int) -> bool:
    """Whether the run in ``directory`` is finished: its metrics file holds the training row of
    step ``total_steps`` (a row with ``reward/mean``) and that step's validation row (a row with
    ``val/samples``)."""
    kinds = {key for row in metrics_rows(directory) if row["step"] == total_steps for key in row}
    return {ROLLOUT, VALIDATION} <= kinds


def collect(sweep: SweepConfig) -> list[RunRecord]:
    """What every run of the grid left, for the report: finished (its metrics), failed (its last
    attempt's error, and whatever metrics it wrote), incomplete (an interrupted run) or not
    started."""
    records = []
    for run in plan(sweep):
        directory = run_dir(sweep, run)
        rows = tuple(metrics_rows(directory))
        error = directory / ERROR_FILE
        if finished(directory, train_config(sweep, run).trainer.total_steps):
            status: Status = "finished"
        elif error.is_file():
            status = "failed"
        else:
            status = "incomplete" if directory.is_dir() else "not started"
        text = error.read_text() if status == "failed" else None
        records.append(RunRecord(run.task, run.method, run.seed, status, rows, text))
    return records


IGNORED_KEYS = ("trainer.verbose",)
"""Training keys a run may change between invocations of the grid (they change no result)."""


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat.update(_flat(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return flat


def changed_runs(configs: Sequence[TrainConfig]) -> list[str]:
    """One line per run of `configs` (the grid's, `train_config`) whose directory holds a
    ``config.yaml`` (written when the run started) that is not its config now, naming each key
    that differs: such a run was trained for another grid (another base, method or code), so
    neither skipping it as finished, nor resuming it, nor reporting it would be honest. A stored
    config is read with today's defaults filled in, so keys added since it was written count only
    when set otherwise."""
    lines = []
    for cfg in configs:
        stored_file = checkpoint.run_dir(cfg) / "config.yaml"
        if not stored_file.is_file():
            continue
        try:
            stored = _flat(to_dict(load_config(TrainConfig, stored_file)))
        except ConfigError as err:
            lines.append(f"{stored_file}: cannot be read as a training config: {err}")
            continue
        planned = _flat(to_dict(cfg))
        differ = [
            f"{key} {stored.get(key)!r} -> {planned.get(key)!r}"
            for key in sorted(stored.keys() | planned.keys())
            if key not in IGNORED_KEYS and stored.get(key) != planned.get(key)
        ]
        if differ:
            lines.append(f"{stored_file}: made by another grid ({'; '.join(differ)}); use another output_dir")
    return lines


def missing_inputs(configs: Sequence[TrainConfig]) -> list[str]:
    """The model directories and data files the runs need that do not exist (one line each)."""
    missing: dict[str, None] = {}
    for cfg in configs:
        if not Path(cfg.model.path).is_dir():
            missing[f"model.path: no model directory at {cfg.model.path}"] = None
        for key in ("train_files", "val_files"):
            for file in getattr(cfg.data, key):
                if not Path(file).is_file():
                    missing[f"data.{key}: no file {file}"] = None
    return list(missing)


Outcome = Literal["finished", "skipped", "failed"]
RunOne = Callable[[TrainConfig], None]
RunHook = Callable[[Run, Outcome], None]


def start_of(directory: Path, order: dict[str, int | bool]) -> tuple[Path, TrainerState] | None:
    """Where a run of the grid starts: ``checkpoint.start_point(directory, resume=True, order)``,
    except for a run interrupted before its first checkpoint, which has nothing to resume from
    (``launch/lipo.py --resume`` refuses it): when its metrics file is all it left (no
    checkpoint directory of any kind), the file is set aside as ``metrics.jsonl.abandoned-<k>``
    and the run starts over at step 0."""
    try:
        return checkpoint.start_point(directory, True, order)
    except checkpoint.ExistingRunError:
        root = checkpoint.checkpoint_root(directory)
        if root.is_dir() and any(root.iterdir()):
            raise
    metrics = directory / METRICS_FILE
    k = 1 + sum(1 for _ in directory.glob(f"{METRICS_FILE}.abandoned-*"))
    metrics.rename(metrics.with_name(f"{METRICS_FILE}.abandoned-{k}"))
    logger.warning(
        "%s: no checkpoint to resume from; starting over (earlier metrics kept as %s.abandoned-%d)",
        directory,
        METRICS_FILE,
        k,
    )
    return checkpoint.start_point(directory, True, order)


def run_training(cfg: TrainConfig, on_step_end: StepHook | None = None) -> None:
    """One training run through the actor graph on the Ray instance already started, with
    ``launch/lipo.py --resume`` semantics (a new run starts at step 0, an interrupted one
    continues from its newest complete checkpoint; see `start_of`); its actors are shut down
    before it returns. ``on_step_end`` goes to `Driver.run`."""
    from tiny_r1v.trainer.driver import Driver

    examples, val_examples = (_examples(cfg, files) for files in (cfg.data.train_files, cfg.data.val_files))
    start = start_of(checkpoint.run_dir(cfg), checkpoint.order_of(cfg, len(examples)))
    driver = Driver(cfg, examples, val_examples, start)
    try:
        driver.run(on_step_end)
    finally:
        driver.shutdown()


def _examples(cfg: TrainConfig, files: Sequence[str]) -> list[Example]:
    from tiny_r1v.data import load_examples

    data = cfg.data
    return load_examples(files, min_pixels=data.min_pixels, max_pixels=data.max_pixels, task=data.row_task)


def run_grid(
    sweep: SweepConfig, run_one: RunOne = run_training, on_run_end: RunHook | None = None
) -> dict[Run, Outcome]:
    """Make every run of the grid that is not `finished`, one after the other (Ray must be
    started). A run that raises has its traceback written to ``<run>/sweep-error.txt`` and the
    grid goes on; a later grid retries it. ``on_run_end(run, outcome)`` is called after each
    run, outside the error handling (an exception from it stops the grid)."""
    outcomes: dict[Run, Outcome] = {}
    runs = plan(sweep)
    for i, run in enumerate(runs, start=1):
        cfg = train_config(sweep, run)
        directory = run_dir(sweep, run)
        if finished(directory, cfg.trainer.total_steps):
            logger.info("[%d/%d] %s: finished earlier, skipped", i, len(runs), run.label)
            outcome: Outcome = "skipped"
        else:
            logger.info("[%d/%d] %s: running", i, len(runs), run.label)
            error = directory / ERROR_FILE
            try:
                run_one(cfg)
                if not finished(directory, cfg.trainer.total_steps):
                    raise RuntimeError(f"the run returned, but {directory / METRICS_FILE} lacks its final rows")
            except Exception:  # a run's failure is recorded and reported; the grid goes on
                logger.exception("%s failed (recorded in %s)", run.label, error)
                directory.mkdir(parents=True, exist_ok=True)
                error.write_text(traceback.format_exc())
                outcome = "failed"
            else:
                error.unlink(missing_ok=True)
                outcome = "finished"
        outcomes[run] = outcome
        if on_run_end is not None:
            on_run_end(run, outcome)
    return outcomes
