"""Per-sample records and the figures the table reports (pure: no I/O, no engine).

Accuracy is the mean of the task's accuracy reward over every sample (all k per prompt), so for
OCR it is the mean 1 - NED (SPEC §1), for the other tasks the share answered correctly; pass@k
is the share of prompts with at least one correct sample among their k. A model's `average` row
is the unweighted mean of its per-benchmark figures, as papers average benchmarks.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

AVERAGE = "average"
"""The benchmark label of a model's averaged row."""


@dataclass(frozen=True)
class SampleRecord:
    """One generated response and its scores: a line of the per-sample JSONL files."""

    model: str
    benchmark: str
    id: str
    """The example's id (the row's `id`, or `<file stem>-<row number>`)."""
    sample: int
    """Index among the k samples of the prompt (0 when greedy)."""
    task: str
    prompt: str
    """The prompt as the engine saw it (chat template applied, one placeholder per image)."""
    response: str
    """The generated text, special tokens removed (what the reward functions saw)."""
    answer: str
    """The ground truth."""
    tokens: int
    """Generated tokens, the stop token included (as training counts lengths)."""
    finish_reason: str
    """`stop`, or `length` when cut off at `engine.max_response_length`."""
    reward: dict[str, float]
    """`accuracy`, `format` and `total` (SPEC §1), from the same reward functions as training."""
    correct: bool
    """Accuracy reward 1 (for OCR: an exact transcription)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SampleRecord:
        return cls(**data)


@dataclass(frozen=True)
class Summary:
    """One row of the table: a model on a benchmark, or its average over benchmarks."""

    model: str
    benchmark: str
    samples: int
    """Responses scored (prompts x k); for the average row, the sum over benchmarks."""
    accuracy: float
    """Mean accuracy reward, in [0, 1]."""
    pass_at_k: float
    """Share of prompts with a correct response (OCR: an exact one) among their k samples; with
    k = 1, the share answered correctly."""
    format: float
    """Share of responses in the requested format."""
    mean_tokens: float
    median_tokens: float
    truncated: float
    """Share of responses cut off at the generation limit."""


def summarize(model: str, benchmark: str, records: Sequence[SampleRecord]) -> Summary:
    """The row of `model` on `benchmark` from its records (at least one)."""
    if not records:
        raise ValueError(f"no records for model {model!r} on benchmark {benchmark!r}")
    tokens = [record.tokens for record in records]
    solved: dict[str, bool] = {}
    for record in records:
        solved[record.id] = solved.get(record.id, False) or record.correct
    return Summary(
        model=model,
        benchmark=benchmark,
        samples=len(records),
        accuracy=statistics.fmean(record.reward["accuracy"] for record in records),
        pass_at_k=statistics.fmean(solved.values()),
        format=statistics.fmean(record.reward["format"] for record in records),
        mean_tokens=statistics.fmean(tokens),
        median_tokens=float(statistics.median(tokens)),
        truncated=statistics.fmean(record.finish_reason == "length" for record in records),
    )


def average(model: str, rows: Sequence[Summary]) -> Summary:
    """The unweighted mean of a model's per-benchmark rows."""
    if not rows:
        raise ValueError(f"no rows to average for model {model!r}")
    return Summary(
        model=model,
        benchmark=AVERAGE,
        samples=sum(row.samples for row in rows),
        **{
            key: statistics.fmean(getattr(row, key) for row in rows)
            for key in ("accuracy", "pass_at_k", "format", "mean_tokens", "median_tokens", "truncated")
        },
    )


def table(
    records: dict[tuple[str, str], Sequence[SampleRecord]], models: Sequence[str], benchmarks: Sequence[str]
) -> list[Summary]:
    """Rows in model order, each model's benchmarks in order followed by its average."""
    rows = []
    for model in models:
        per_benchmark = [summarize(model, benchmark, records[model, benchmark]) for benchmark in benchmarks]
        rows += [*per_benchmark, average(model, per_benchmark)]
    return rows
