"""The sweep's report: per task and method, mean ± std over seeds of the final held-out greedy
accuracy, mean tokens, truncated share and tokens at equal accuracy, and of the sampled held-out
evaluation's accuracy, mean tokens and truncated share (`tiny_r1v.evidence.sweep_eval`); each
task led by its base model (`BASE`); as Markdown, CSV, JSON and PNG plots.

Everything but `collect` and `write_report` is pure: `RunRecord`s (a run's metrics rows, or its
failure) in, rows and text out, so the maths is tested on hand-written rows.

"Tokens at equal accuracy" of a run: the mean tokens at the first validation step where its
accuracy reaches the final accuracy of the reference method (GRPO) on the same task and seed;
None ("never") when it never does, and no figure at all where the reference run is not finished.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from tiny_r1v.eval.report import MARKERS, finish_scatter

ACCURACY, TOKENS, CLIPPED = "val/reward/accuracy", "val/length/mean", "val/length/clip_frac"
ROLLOUT, ROLLOUT_ACCURACY, ROLLOUT_TOKENS = "reward/mean", "reward/accuracy", "length/mean"
"""A training row's marker key, and the accuracy and mean length of the step's rollouts."""
SMOOTHING = 5
"""Steps in the trailing mean of the plotted training-rollout curves (one step is a few prompts)."""
VALIDATION = "val/samples"
SAMPLED_KEYS = ("accuracy", "mean_tokens", "truncated")
"""The figures of a `RunRecord`'s sampled evaluation (a model's averaged row of `launch/eval.py`)."""
DIAGNOSTICS = ("lipo/boosted_frac", "lipo/penalized_frac", "lipo/l_opt_mean", "lipo/weight_mean")
"""Training-row keys of a method's own mechanics (what LIPO's switches change: how often the
boost and the penalty fire, L_opt and the length weights), averaged over each run's steps."""
BASE = "base"
"""The report's name for the model every run of a task starts from (a row, not a method)."""
REPORT_FILES = ("sweep.md", "sweep.csv", "sweep.json", "accuracy-vs-tokens.png")
"""What `write_report` writes into ``<output_dir>/report/``, besides ``curves-<task>.png`` per task."""

Status = Literal["finished", "incomplete", "failed", "not started"]


@dataclass(frozen=True)
class RunRecord:
    """What a run left: its metrics rows (step order) and, for a failed run, its error."""

    task: str
    method: str
    seed: int
    status: Status
    rows: tuple[Mapping[str, float], ...] = ()
    error: str | None = None
    sampled: Mapping[str, float] | None = None
    """The sampled held-out evaluation of the final weights (``accuracy``, ``mean_tokens``,
    ``truncated``), if one ran."""


def _by_step(rows: Sequence[Mapping[str, float]], key: str) -> list[Mapping[str, float]]:
    """The rows holding ``key``, by step (a step logged twice keeps its last row)."""
    by_step = {row["step"]: row for row in rows if key in row}
    return [by_step[step] for step in sorted(by_step)]


def validations(rows: Sequence[Mapping[str, float]]) -> list[Mapping[str, float]]:
    """The validation rows, by step (a step validated twice keeps its last row)."""
    return _by_step(rows, VALIDATION)


def final_validation(rows: Sequence[Mapping[str, float]]) -> Mapping[str, float] | None:
    """The validation row of the last validated step, if any."""
    found = validations(rows)
    return found[-1] if found else None


def tokens_at_accuracy(rows: Sequence[Mapping[str, float]], target: float) -> tuple[int, float] | None:
    """(step, mean tokens) of the first validation whose accuracy reaches ``target``; None: never."""
    for row in validations(rows):
        if row[ACCURACY] >= target:
            return int(row["step"]), float(row[TOKENS])
    return None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); NaN for what the values cannot give (no
    values: both; one value: the std)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


@dataclass(frozen=True)
class MethodRow:
    """One task and method over its finished seeds."""

    task: str
    method: str
    seeds: int
    """Finished runs (seeds) the figures average."""
    accuracy: float
    accuracy_std: float
    tokens: float
    tokens_std: float
    truncated: float
    truncated_std: float
    equal_accuracy_tokens: float
    """Mean over the seeds that reach the reference's final accuracy; NaN if none does."""
    equal_accuracy_tokens_std: float
    equal_accuracy_reached: int
    """Seeds (with a finished reference run) whose accuracy reaches the reference's final one."""
    equal_accuracy_compared: int
    """Seeds with a finished reference run to compare with."""
    sampled_accuracy: float
    sampled_accuracy_std: float
    sampled_tokens: float
    sampled_tokens_std: float
    sampled_truncated: float
    sampled_truncated_std: float
    sampled_runs: int
    """Finished runs whose sampled evaluation the sampled figures average."""
    failed: int
    """Runs of this task and method that failed."""
    unfinished: int
    """Runs of this task and method neither finished nor failed (interrupted or not started)."""


def summarize(records: Sequence[RunRecord], reference: str = "grpo") -> list[MethodRow]:
    """One row per (task, method), in the records' order."""
    finals = {
        (r.task, r.method, r.seed): final
        for r in records
        if r.status == "finished" and (final := final_validation(r.rows)) is not None
    }
    out = []
    for task, method in dict.fromkeys((r.task, r.method) for r in records):
        mine = [r for r in records if (r.task, r.method) == (task, method)]
        done = [r for r in mine if (task, method, r.seed) in finals]
        final = [finals[task, method, r.seed] for r in done]
        equal: list[float] = []
        compared = 0
        for r in done:
            ref = finals.get((task, reference, r.seed))
            if ref is None:
                continue
            compared += 1
            if (hit := tokens_at_accuracy(r.rows, ref[ACCURACY])) is not None:
                equal.append(hit[1])
        stats = [mean_std([float(row[key]) for row in final]) for key in (ACCURACY, TOKENS, CLIPPED)]
        eq = mean_std(equal)
        sampled = [r.sampled for r in mine if r.status == "finished" and r.sampled is not None]
        sampled_stats = [mean_std([s[key] for s in sampled]) for key in SAMPLED_KEYS]
        out.append(
            MethodRow(
                task,
                method,
                len(done),
                *stats[0],
                *stats[1],
                *stats[2],
                *eq,
                len(equal),
                compared,
                *sampled_stats[0],
                *sampled_stats[1],
                *sampled_stats[2],
                len(sampled),
                sum(r.status == "failed" for r in mine),
                sum(r.status in ("incomplete", "not started") for r in mine),
            )
        )
    return out


def diagnostics(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Per (task, method) whose finished runs logged any of `DIAGNOSTICS`: the finished runs
    counted, and per key the (mean, sample std) over those runs of its mean over the run's steps."""
    out = []
    for task, method in dict.fromkeys((r.task, r.method) for r in records):
        runs = [training_rows(r.rows) for r in records if (r.task, r.method, r.status) == (task, method, "finished")]
        figures = {}
        for key in DIAGNOSTICS:
            if runs and all(any(key in row for row in rows) for rows in runs):
                figures[key] = mean_std(
                    [statistics.fmean(float(row[key]) for row in rows if key in row) for rows in runs]
                )
        if figures:
            out.append({"task": task, "method": method, "runs": len(runs), **figures})
    return out


def _pm(mean: float, std: float, digits: int, scale: float = 1.0) -> str:
    if math.isnan(mean):
        return "–"
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if not math.isnan(std) else "")


def _equal_cell(row: MethodRow) -> str:
    if row.equal_accuracy_compared == 0:
        return "–"
    if row.equal_accuracy_reached == 0:
        return f"never (0/{row.equal_accuracy_compared})"
    cell = _pm(row.equal_accuracy_tokens, row.equal_accuracy_tokens_std, 1)
    return f"{cell} ({row.equal_accuracy_reached}/{row.equal_accuracy_compared})"


def markdown(rows: Sequence[MethodRow], records: Sequence[RunRecord], reference: str) -> str:
    """The table per task, then the runs that failed (with the last line of their error) or did
    not finish."""
    lines = [
        "# Sweep",
        "",
        "Held-out greedy validation at each run's last step, mean ± sample std over the finished seeds. "
        f"Tokens at equal accuracy: mean tokens at the first validation where the method's accuracy "
        f"reaches {reference}'s final accuracy (same task and seed); (reached/compared) seeds. "
        "Sampled: the held-out evaluation of the final weights sampled as the rollouts sample "
        f"(<output_dir>/eval/<task>/). {BASE}: the model every run starts from (greedy: its step-0 validation).",
    ]
    for task in dict.fromkeys(row.task for row in rows):
        lines += [
            "",
            f"## {task}",
            "",
            "| method | seeds | accuracy (%) | mean tokens | truncated (%) | tokens at equal accuracy "
            "| sampled accuracy (%) | sampled tokens | sampled truncated (%) | failed | unfinished |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in (r for r in rows if r.task == task):
            lines.append(
                f"| {row.method} | {row.seeds} | {_pm(row.accuracy, row.accuracy_std, 1, 100)} "
                f"| {_pm(row.tokens, row.tokens_std, 1)} | {_pm(row.truncated, row.truncated_std, 1, 100)} "
                f"| {_equal_cell(row)} | {_pm(row.sampled_accuracy, row.sampled_accuracy_std, 1, 100)} "
                f"| {_pm(row.sampled_tokens, row.sampled_tokens_std, 1)} "
                f"| {_pm(row.sampled_truncated, row.sampled_truncated_std, 1, 100)} | {row.failed} | {row.unfinished} |"
            )
    found = diagnostics(records)
    if found:
        keys = [key for key in DIAGNOSTICS if any(key in row for row in found)]
        lines += [
            "",
            "## Method diagnostics",
            "",
            "Training rollouts: each key's mean over a run's steps, mean ± sample std over the finished seeds.",
            "",
            "| task | method | seeds | " + " | ".join(keys) + " |",
            "|---|---|---:|" + "---:|" * len(keys),
        ]
        for row in found:
            cells = [_pm(*row[key], 3) if key in row else "–" for key in keys]
            lines.append(f"| {row['task']} | {row['method']} | {row['runs']} | " + " | ".join(cells) + " |")
    problems = [r for r in records if r.status != "finished"]
    if problems:
        lines += ["", "## Runs not in the figures", "", "| run | status | error |", "|---|---|---|"]
        for r in problems:
            error = (r.error or "").strip().splitlines()[-1:] or [""]
            lines.append(f"| {r.task}/{r.method}/seed-{r.seed} | {r.status} | {error[0].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[MethodRow]) -> str:
    """One line per task and method; shares in [0, 1], NaN left empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(MethodRow)], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if (v := _no_nan(value)) is None else v for k, value in asdict(row).items()})
    return buffer.getvalue()


def _no_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def json_payload(rows: Sequence[MethodRow], records: Sequence[RunRecord], reference: str) -> dict[str, Any]:
    """The table (NaN as null) and every run's status, final validation and equal-accuracy point."""
    finals = {(r.task, r.method, r.seed): final_validation(r.rows) for r in records if r.status == "finished"}
    runs = []
    for r in records:
        final = finals.get((r.task, r.method, r.seed))
        ref = finals.get((r.task, reference, r.seed))
        hit = tokens_at_accuracy(r.rows, ref[ACCURACY]) if final is not None and ref is not None else None
        runs.append(
            {
                "task": r.task,
                "method": r.method,
                "seed": r.seed,
                "status": r.status,
                "error": r.error,
                "final": None if final is None else {k: final[k] for k in ("step", ACCURACY, TOKENS, CLIPPED)},
                "sampled": None if r.sampled is None else dict(r.sampled),
                "equal_accuracy": None
                if final is None or ref is None
                else ({"step": hit[0], "tokens": hit[1]} if hit else "never"),
            }
        )
    return {
        "reference_method": reference,
        "rows": [{k: _no_nan(v) for k, v in asdict(row).items()} for row in rows],
        "runs": runs,
        "diagnostics": [
            {k: [_no_nan(x) for x in v] if isinstance(v, tuple) else v for k, v in row.items()}
            for row in diagnostics(records)
        ],
    }


def training_rows(rows: Sequence[Mapping[str, float]]) -> list[Mapping[str, float]]:
    """The training rows (the step's rollouts: sampled, on training prompts), by step."""
    return _by_step(rows, ROLLOUT)


def curves(records: Sequence[RunRecord], task: str, rollout: bool = False) -> dict[str, dict[str, list[float]]]:
    """Per method of ``task``: steps and the seed-mean accuracy and mean tokens at each (over the
    runs with a row at that step; unfinished runs included), of the greedy validations, or with
    ``rollout`` of the training rollouts."""
    accuracy, tokens, rows_of = (
        (ROLLOUT_ACCURACY, ROLLOUT_TOKENS, training_rows) if rollout else (ACCURACY, TOKENS, validations)
    )
    out: dict[str, dict[str, list[float]]] = {}
    for method in dict.fromkeys(r.method for r in records if r.task == task and r.method != BASE):
        by_step: dict[int, list[Mapping[str, float]]] = {}
        for r in records:
            if (r.task, r.method) == (task, method):
                for row in rows_of(r.rows):
                    by_step.setdefault(int(row["step"]), []).append(row)
        steps = sorted(by_step)
        out[method] = {
            "step": [float(s) for s in steps],
            "accuracy": [statistics.fmean(float(row[accuracy]) for row in by_step[s]) for s in steps],
            "tokens": [statistics.fmean(float(row[tokens]) for row in by_step[s]) for s in steps],
        }
    return out


def trailing_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of each value and up to ``window - 1`` before it."""
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def plot_curves(records: Sequence[RunRecord], task: str, path: Path) -> None:
    """Accuracy and mean tokens per step, one line per method (mean over seeds): the greedy
    validations (top) and the training rollouts (bottom, trailing mean over `SMOOTHING` steps)."""
    from matplotlib.figure import Figure  # deferred: only the report needs matplotlib
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 7.5), layout="constrained")
    panels = figure.subplots(2, 2)
    for row, rollout in enumerate((False, True)):
        smooth = (lambda v: trailing_mean(v, SMOOTHING)) if rollout else list
        for i, (method, curve) in enumerate(curves(records, task, rollout).items()):
            style = {"color": f"C{i % 10}", "label": method, "marker": None if rollout else "o"}
            panels[row, 0].plot(curve["step"], smooth([100 * a for a in curve["accuracy"]]), **style)
            panels[row, 1].plot(curve["step"], smooth(curve["tokens"]), **style)
        kind = f"training rollouts (sampled), trailing mean of {SMOOTHING} steps" if rollout else "held-out, greedy"
        for axes, label in zip(panels[row], ("accuracy (%)", "mean generated tokens"), strict=True):
            axes.set_title(kind, fontsize="small")
            axes.set_xlabel("step")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.set_ylabel(label)
            axes.grid(alpha=0.3)
    panels[0, 0].legend(fontsize="small")
    figure.suptitle(f"{task}: mean over seeds")
    figure.savefig(path, dpi=120)


def plot_accuracy_vs_tokens(rows: Sequence[MethodRow], path: Path, sampled: bool = False) -> None:
    """Final accuracy against mean tokens, greedy or ``sampled``: one point per task and method
    (colour: method, marker: task), with ± std bars over seeds."""
    from matplotlib.figure import Figure

    prefix = "sampled_" if sampled else ""
    points = [row for row in rows if not math.isnan(getattr(row, prefix + "accuracy"))]
    # Only what has a point gets a colour and a legend entry.
    methods = list(dict.fromkeys(row.method for row in points))
    tasks = list(dict.fromkeys(row.task for row in points))
    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    axes = figure.add_subplot()
    for row in points:
        accuracy, accuracy_std, tokens, tokens_std = (
            getattr(row, prefix + name) for name in ("accuracy", "accuracy_std", "tokens", "tokens_std")
        )
        axes.errorbar(
            tokens,
            100 * accuracy,
            xerr=0 if math.isnan(tokens_std) else tokens_std,
            yerr=0 if math.isnan(accuracy_std) else 100 * accuracy_std,
            color=f"C{methods.index(row.method) % 10}",
            marker=MARKERS[tasks.index(row.task) % len(MARKERS)],
            markersize=7,
            capsize=3,
        )
    colours = {method: f"C{i % 10}" for i, method in enumerate(methods)}
    xlabel = "mean generated tokens (sampled, final weights)" if sampled else "mean generated tokens (final validation)"
    finish_scatter(figure, axes, colours, tasks, xlabel, path)


def write_report(out_dir: Path, records: Sequence[RunRecord], reference: str = "grpo") -> list[Path]:
    """Write `REPORT_FILES` and ``curves-<task>.png`` per task into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(records, reference)
    md, csv_path, json_path, png = (out_dir / name for name in REPORT_FILES)
    md.write_text(markdown(rows, records, reference))
    csv_path.write_text(csv_text(rows))
    json_path.write_text(json.dumps(json_payload(rows, records, reference), indent=2, allow_nan=False) + "\n")
    plot_accuracy_vs_tokens(rows, png)
    paths = [md, csv_path, json_path, png]
    if any(row.sampled_runs for row in rows):
        paths.append(out_dir / "accuracy-vs-tokens-sampled.png")
        plot_accuracy_vs_tokens(rows, paths[-1], sampled=True)
    for task in dict.fromkeys(r.task for r in records):
        paths.append(out_dir / f"curves-{task}.png")
        plot_curves(records, task, paths[-1])
    return paths
