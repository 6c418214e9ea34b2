"""The sweep's sampled held-out evaluation: each task's base model and every finished run's final
weights, sampled as the runs' rollouts sample, on the task's held-out files.

The greedy validation every run logs shows the mode of the policy; a length-control method first
changes the distribution it samples from, which a few dozen steps may move long before the mode
moves. `evaluate` runs ``launch/eval.py``'s `run_eval` once per task (temperature and top_p of
the runs' rollouts, ``eval_samples`` samples per prompt, the same sampling seeds for every model;
pairs evaluated before with the same settings and model files are reused), into
``<output_dir>/eval/<task>/``; `with_sampled` reads the figures back into the report's records.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tiny_r1v.eval.config import like_training
from tiny_r1v.evidence.sweep import SweepConfig, finished, plan, run_dir, train_config
from tiny_r1v.evidence.sweep_report import BASE, SAMPLED_KEYS, RunRecord, validations

if TYPE_CHECKING:
    from tiny_r1v.eval.runner import EvalResult

logger = logging.getLogger(__name__)


def eval_dir(sweep: SweepConfig, task: str) -> Path:
    return Path(sweep.output_dir) / "eval" / task


def model_label(method: str, seed: int) -> str:
    """A run's name in the evaluation's tables (``<method>.seed-<s>``)."""
    return f"{method}.seed-{seed}"


def evaluate(sweep: SweepConfig) -> dict[str, EvalResult]:
    """Evaluate, per task with a finished run, the runs' base model and every finished run (Ray
    started or startable); returns each task's result. Every run of a task shares its base model,
    prompts and sampling (the sweep sets only data, seeds and method keys per run): the first
    finished run's config is used."""
    from tiny_r1v.eval.inputs import resolve_benchmarks, resolve_models
    from tiny_r1v.eval.runner import run_eval

    runs = plan(sweep)
    results = {}
    for task in sweep.tasks:
        done = [
            run
            for run in runs
            if run.task == task.name and finished(run_dir(sweep, run), train_config(sweep, run).trainer.total_steps)
        ]
        if not done:
            continue
        first = train_config(sweep, done[0])
        cfg = like_training(first, eval_dir(sweep, task.name), sweep.eval_samples)
        runs_done = (f"{model_label(run.method, run.seed)}={run_dir(sweep, run)}" for run in done)
        models = [f"{BASE}={first.model.path}", *runs_done]
        files = task.val_files
        benchmarks = [f"{task.name}{f'-{i}' if len(files) > 1 else ''}={path}" for i, path in enumerate(files)]
        logger.info(
            "sampled evaluation of %s: %d models x %d samples per prompt", task.name, len(models), sweep.eval_samples
        )
        results[task.name] = run_eval(cfg, resolve_models(cfg, models), resolve_benchmarks(cfg, benchmarks))
    return results


def sampled_figures(sweep: SweepConfig) -> dict[tuple[str, str], dict[str, float]]:
    """(task, model label) -> `SAMPLED_KEYS` of the model's row averaged over the task's files,
    from each task's last evaluation (none before one has run, or with ``eval_samples`` 0)."""
    out = {}
    for task in sweep.tasks if sweep.eval_samples else ():
        path = eval_dir(sweep, task.name) / "results.json"
        if not path.is_file():
            continue
        for row in json.loads(path.read_text())["rows"]:
            if row["benchmark"] == "average":
                out[task.name, row["model"]] = {key: float(row[key]) for key in SAMPLED_KEYS}
    return out


def with_sampled(sweep: SweepConfig, records: Sequence[RunRecord]) -> list[RunRecord]:
    """``records`` with their sampled figures, each task's led by a `BASE` record: the step-0
    validation of its first finished run (the base model, before any update) and the base's
    sampled figures."""
    figures = sampled_figures(sweep)
    out: list[RunRecord] = []
    for task in dict.fromkeys(r.task for r in records):
        mine = [r for r in records if r.task == task]
        start = next(
            (row for r in mine if r.status == "finished" for row in validations(r.rows) if row["step"] == 0), None
        )
        if start is not None or (task, BASE) in figures:
            rows = () if start is None else (start,)
            out.append(RunRecord(task, BASE, 0, "finished", rows, sampled=figures.get((task, BASE))))
        out += [replace(r, sampled=figures.get((task, model_label(r.method, r.seed)))) for r in mine]
    return out
