"""The recipe's table: every model on every task, accuracy and answer length, mean ± std over seeds.

Pure functions of the evaluation rows (`tiny_r1v.eval.metrics.Summary`, benchmarks named by
task); `write_report` writes Markdown, CSV, JSON (with the rows it was computed from, so seeds
can be combined later: `read_rows`) and a plot of accuracy against tokens.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tiny_r1v.eval.metrics import AVERAGE, Summary
from tiny_r1v.evidence.sweep_report import mean_std

REPORT_FILES = ("recipe.md", "recipe.csv", "recipe.json", "accuracy-vs-tokens.png")


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    """Sample standard deviation over seeds; NaN for one seed (and wherever the mean is NaN)."""


@dataclass(frozen=True)
class ModelRow:
    model: str
    accuracy: dict[str, Stat]
    """Per task, in [0, 1]."""
    tokens: dict[str, Stat]
    """Mean generated tokens per task."""
    average_accuracy: Stat
    """Unweighted mean over tasks."""
    average_tokens: Stat
    normalized_accuracy: Stat
    """Mean over tasks of accuracy / the task's expert's accuracy (the paper's normalised
    score; NaN when an expert scores 0 on its task)."""


def _stat(values: Sequence[float]) -> Stat:
    return Stat(*mean_std(values))


def normalized(rows: Sequence[Summary], model: str, experts: Mapping[str, str]) -> float:
    """Mean over `experts`' tasks of the model's accuracy divided by the task expert's."""
    acc = {(row.model, row.benchmark): row.accuracy for row in rows}
    shares = []
    for task, expert in experts.items():
        own = acc[expert, task]
        shares.append(acc[model, task] / own if own > 0 else math.nan)
    return statistics.fmean(shares)


def summarize(per_seed: Mapping[int, Sequence[Summary]], experts: Mapping[str, str]) -> list[ModelRow]:
    """One row per model (in the first seed's order) over the seeds that evaluated it.

    Args:
        per_seed: each seed's evaluation rows, per-task and average rows of every model.
        experts: task -> the name of its expert (whose accuracy normalises that task's).
    """
    tasks = list(experts)
    models = list(dict.fromkeys(row.model for rows in per_seed.values() for row in rows))
    out = []
    for model in models:
        seeds = [rows for rows in per_seed.values() if any(row.model == model for row in rows)]
        acc = {t: [_find(rows, model, t).accuracy for rows in seeds] for t in tasks}
        tok = {t: [_find(rows, model, t).mean_tokens for rows in seeds] for t in tasks}
        out.append(
            ModelRow(
                model=model,
                accuracy={t: _stat(v) for t, v in acc.items()},
                tokens={t: _stat(v) for t, v in tok.items()},
                average_accuracy=_stat([statistics.fmean(acc[t][i] for t in tasks) for i in range(len(seeds))]),
                average_tokens=_stat([statistics.fmean(tok[t][i] for t in tasks) for i in range(len(seeds))]),
                normalized_accuracy=_stat([normalized(rows, model, experts) for rows in seeds]),
            )
        )
    return out


def _find(rows: Sequence[Summary], model: str, task: str) -> Summary:
    for row in rows:
        if row.model == model and row.benchmark == task:
            return row
    raise KeyError(f"no evaluation of model {model!r} on task {task!r}")


def _pm(stat: Stat, scale: float = 1.0, digits: int = 1) -> str:
    if math.isnan(stat.mean):
        return "n/a"
    text = f"{scale * stat.mean:.{digits}f}"
    return text if math.isnan(stat.std) else f"{text} ± {scale * stat.std:.{digits}f}"


def markdown(rows: Sequence[ModelRow], seeds: Sequence[int], decoding: str) -> str:
    tasks = list(rows[0].accuracy) if rows else []
    header = " | ".join(f"{t} acc (%) | {t} tokens" for t in tasks)
    lines = [
        f"Seeds: {', '.join(map(str, seeds))} (mean ± sample std over seeds), on each task's held-out "
        f"test split; normalised = mean over tasks of accuracy / the task expert's. {decoding}",
        "",
        f"| model | {header} | avg acc (%) | avg tokens | normalised (%) |",
        "|---|" + "---:|" * (2 * len(tasks) + 3),
    ]
    for row in rows:
        cells = " | ".join(f"{_pm(row.accuracy[t], 100)} | {_pm(row.tokens[t])}" for t in tasks)
        lines.append(
            f"| {row.model} | {cells} | {_pm(row.average_accuracy, 100)} | {_pm(row.average_tokens)} "
            f"| {_pm(row.normalized_accuracy, 100)} |"
        )
    return "\n".join(lines) + "\n"


def _flat(row: ModelRow) -> dict[str, Any]:
    flat: dict[str, Any] = {"model": row.model}
    for task in row.accuracy:
        for kind, stats in (("accuracy", row.accuracy), ("tokens", row.tokens)):
            flat[f"{task}/{kind}"], flat[f"{task}/{kind}_std"] = stats[task].mean, stats[task].std
    for key in ("average_accuracy", "average_tokens", "normalized_accuracy"):
        stat = getattr(row, key)
        flat[key], flat[f"{key}_std"] = stat.mean, stat.std
    return flat


def csv_text(rows: Sequence[ModelRow]) -> str:
    buffer = io.StringIO()
    flats = [_flat(row) for row in rows]
    writer = csv.DictWriter(buffer, fieldnames=list(flats[0]) if flats else ["model"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(flats)
    return buffer.getvalue()


def _no_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def json_payload(rows: Sequence[ModelRow], per_seed: Mapping[int, Sequence[Summary]]) -> dict[str, Any]:
    return {
        "table": [{k: _no_nan(v) if isinstance(v, float) else v for k, v in _flat(row).items()} for row in rows],
        "rows": {str(seed): [asdict(row) for row in summaries] for seed, summaries in per_seed.items()},
    }


def read_rows(report_dir: Path) -> list[Summary]:
    """The evaluation rows a one-seed report was computed from."""
    payload = json.loads((report_dir / REPORT_FILES[2]).read_text())
    (rows,) = payload["rows"].values()
    return [Summary(**row) for row in rows]


def plot(rows: Sequence[ModelRow], path: Path) -> None:
    """Average accuracy against average tokens, one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5))
    axes = figure.add_subplot()
    for row in rows:
        x, y = row.average_tokens.mean, 100 * row.average_accuracy.mean
        xerr, yerr = (0.0 if math.isnan(s.std) else s.std for s in (row.average_tokens, row.average_accuracy))
        axes.errorbar(x, y, xerr=xerr, yerr=100 * yerr, fmt="o", capsize=3)
        axes.annotate(row.model, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes.set_xlabel("mean generated tokens (average over tasks)")
    axes.set_ylabel("accuracy (%, average over tasks)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_report(
    out_dir: Path, per_seed: Mapping[int, Sequence[Summary]], experts: Mapping[str, str], decoding: str
) -> list[Path]:
    """Write `REPORT_FILES` into `out_dir` (AVERAGE rows are recomputed, not read); ``decoding``
    (`tiny_r1v.eval.runner.describe_decoding`) says how the responses were produced."""
    per_seed = {seed: [row for row in rows if row.benchmark != AVERAGE] for seed, rows in per_seed.items()}
    rows = summarize(per_seed, experts)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv_path, json_path, png = (out_dir / name for name in REPORT_FILES)
    md.write_text(markdown(rows, list(per_seed), decoding))
    csv_path.write_text(csv_text(rows))
    json_path.write_text(json.dumps(json_payload(rows, per_seed), indent=1, allow_nan=False) + "\n")
    plot(rows, png)
    return [md, csv_path, json_path, png]
