"""The table as Markdown, CSV and JSON, and the accuracy-vs-length plot.

The formatters are pure (rows in, text out); `write_report` writes all four files.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from tiny_r1v.eval.metrics import AVERAGE, Summary

MARKERS = "osD^vP*Xph<>"
"""Scatter markers, one per benchmark or task."""
REPORT_FILES = ("results.md", "results.csv", "results.json", "results.png")
"""What `write_report` writes into the output directory."""


def _percent(share: float) -> str:
    return f"{100 * share:.1f}"


def markdown(rows: Sequence[Summary], settings: str) -> str:
    """A side-by-side table (accuracy / mean tokens per benchmark, one line per model), then the
    full table; `settings` is a line saying how the responses were produced."""
    models = list(dict.fromkeys(row.model for row in rows))
    benchmarks = list(dict.fromkeys(row.benchmark for row in rows))
    cell = {(row.model, row.benchmark): f"{_percent(row.accuracy)} / {row.mean_tokens:.1f}" for row in rows}
    lines = [
        "# Evaluation",
        "",
        settings,
        "",
        "Accuracy (%) / mean generated tokens:",
        "",
        "| model | " + " | ".join(benchmarks) + " |",
        "|---|" + "---:|" * len(benchmarks),
        *("| " + " | ".join([model, *(cell[model, b] for b in benchmarks)]) + " |" for model in models),
        "",
        "| model | benchmark | samples | accuracy (%) | pass@k (%) | format (%) | mean tokens | median tokens "
        "| truncated (%) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.model} | {row.benchmark} | {row.samples} | {_percent(row.accuracy)} | {_percent(row.pass_at_k)} "
            f"| {_percent(row.format)} | {row.mean_tokens:.1f} | {row.median_tokens:.1f} | {_percent(row.truncated)} |"
        )
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Summary]) -> str:
    """One line per row, shares in [0, 1] at full precision."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(Summary)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    return buffer.getvalue()


def json_payload(rows: Sequence[Summary], settings: dict[str, Any]) -> dict[str, Any]:
    return {"settings": settings, "rows": [asdict(row) for row in rows]}


def plot(rows: Sequence[Summary], path: Path) -> None:
    """Accuracy against mean tokens: one point per model per benchmark (colour: model, marker:
    benchmark); averaged rows are left out, being no benchmark's point."""
    from matplotlib.figure import Figure  # deferred: only the report needs matplotlib

    points = [row for row in rows if row.benchmark != AVERAGE]
    models = list(dict.fromkeys(row.model for row in points))
    benchmarks = list(dict.fromkeys(row.benchmark for row in points))
    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    axes = figure.add_subplot()
    colours = [f"C{i % 10}" for i in range(len(models))]
    for row in points:
        axes.scatter(
            row.mean_tokens,
            100 * row.accuracy,
            color=colours[models.index(row.model)],
            marker=MARKERS[benchmarks.index(row.benchmark) % len(MARKERS)],
            s=60,
        )
    finish_scatter(figure, axes, dict(zip(models, colours, strict=True)), benchmarks, "mean generated tokens", path)


def finish_scatter(
    figure: Any, axes: Any, colours: dict[str, str], marked: Sequence[str], xlabel: str, path: Path
) -> None:
    """Label an accuracy (%) scatter plot, add legend entries by hand (one per colour, one per
    marker: the ``i``-th of ``marked`` has ``MARKERS[i]``) and save the figure to ``path``."""
    for label, colour in colours.items():
        axes.scatter([], [], color=colour, marker="o", label=label)
    for i, label in enumerate(marked):
        axes.scatter([], [], color="black", marker=MARKERS[i % len(MARKERS)], label=label)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=120)


def write_report(out_dir: Path, rows: Sequence[Summary], settings: dict[str, Any], settings_line: str) -> list[Path]:
    """Write `REPORT_FILES` into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in REPORT_FILES]
    md, csv_path, json_path, png = paths
    md.write_text(markdown(rows, settings_line))
    csv_path.write_text(csv_text(rows))
    json_path.write_text(json.dumps(json_payload(rows, settings), indent=2) + "\n")
    plot(rows, png)
    return paths
