"""Converters from Hugging Face `datasets` Parquet exports (Geometry3K, ChartQA, OCR-VQA/TextVQA
layouts) into our format.

Which column holds which field is data (`LAYOUTS`), not code: a layout lists candidate column
names per field and the first one a file has wins. Values are normalised the same way for every
layout:

- images: a `datasets` Image struct ``{"bytes": ..., "path": ...}`` with embedded bytes, or plain
  binary; a single image or a list of them;
- question: ``<image>`` placeholders removed (our prompts put the images first);
- answer: a string or a number; a list (ChartQA's ``label``, TextVQA's ten annotator
  ``answers``) gives its most frequent entry, the earliest one on ties.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiny_r1v.data.writer import DatasetWriter, OutputExistsError, sample_indices
from tiny_r1v.tasks import Task


class ConvertError(ValueError):
    """Source data that does not fit the expected layout; the message names file, row, column."""


@dataclass(frozen=True)
class ParquetLayout:
    """Where one kind of export keeps each field: candidate columns, first present wins."""

    task: Task
    question: tuple[str, ...]
    answer: tuple[str, ...]
    images: tuple[str, ...]
    description: str


LAYOUTS: dict[str, ParquetLayout] = {
    "geometry3k": ParquetLayout(
        task="math",
        question=("problem", "question"),
        answer=("answer",),
        images=("images", "image"),
        description="Geometry3K-style math: images/image, problem, answer",
    ),
    "chartqa": ParquetLayout(
        task="chart",
        question=("query", "question"),
        answer=("label", "answer"),
        images=("image",),
        description="ChartQA-style chart QA: image, query, label (string or list)",
    ),
    "ocrvqa": ParquetLayout(
        task="ocr",
        question=("question",),
        answer=("answers", "answer"),
        images=("image",),
        description="OCR-VQA/TextVQA-style OCR: image, question, answers (list) or answer",
    ),
}

_FIELDS = ("question", "answer", "images")
_IMAGE_PLACEHOLDER = "<image>"


def convert_parquet(
    writer: DatasetWriter,
    layout: ParquetLayout,
    files: Sequence[str | Path],
    *,
    limit: int | None,
    seed: int,
) -> None:
    """Write the rows of `files` (one split of an export, in order) through `writer`.

    With `limit`, that many rows are drawn with `seed` from all files together. Raises
    ConvertError for a missing column or a value that cannot be converted.
    """
    sources = [(Path(file), _open_parquet(Path(file))) for file in files]
    columns = [_resolve_columns(layout, file, source.schema_arrow.names) for file, source in sources]
    total = sum(source.metadata.num_rows for _, source in sources)
    chosen = set(sample_indices(total, limit, seed))

    for index, (file, row, mapping, record) in enumerate(_records(sources, columns)):
        if index not in chosen:
            continue
        where = {field: f"{file}, row {row}, column {column!r}" for field, column in mapping.items()}
        question = _question(record[mapping["question"]], where["question"])
        answer = _answer(record[mapping["answer"]], where["answer"])
        uid = str(index)
        try:
            images = [
                writer.image(f"{uid}-{i}", data)
                for i, data in enumerate(_images(record[mapping["images"]], where["images"]))
            ]
        except OutputExistsError:  # an OSError too, but about our output, not the source
            raise
        except OSError as error:  # PIL cannot decode the bytes
            raise ConvertError(f"{where['images']}: {error}") from error
        writer.row(uid=uid, task=layout.task, question=question, answer=answer, images=images)


def _open_parquet(file: Path) -> Any:
    """The `pyarrow.parquet.ParquetFile` of `file`; ConvertError naming it if it cannot be read."""
    import pyarrow  # deferred: the offline converters do not need it
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file)
    except (OSError, pyarrow.ArrowException) as error:  # missing, unreadable, or not Parquet
        raise ConvertError(f"{file}: cannot read as Parquet: {error}") from None


def _records(
    sources: list[tuple[Path, Any]], columns: list[dict[str, str]]
) -> Iterator[tuple[Path, int, dict[str, str], dict[str, Any]]]:
    """(file, 1-based row in it, its field -> column mapping, row) over all files, in order."""
    for (file, source), mapping in zip(sources, columns, strict=True):
        batches = source.iter_batches(columns=list(mapping.values()))
        for row, record in enumerate((r for b in batches for r in b.to_pylist()), start=1):
            yield file, row, mapping, record


def _resolve_columns(layout: ParquetLayout, file: Path, names: list[str]) -> dict[str, str]:
    """Field -> the first of its candidate columns that `file` has."""
    mapping = {}
    for field in _FIELDS:
        candidates: tuple[str, ...] = getattr(layout, field)
        found = next((name for name in candidates if name in names), None)
        if found is None:
            raise ConvertError(
                f"{file}: no column for {field!r}: expected one of {list(candidates)}, the file has {names}"
            )
        mapping[field] = found
    return mapping


def _question(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConvertError(f"{where}: expected a string, got {type(value).__name__}")
    question = value.replace(_IMAGE_PLACEHOLDER, "").strip()
    if not question:
        raise ConvertError(f"{where}: empty question")
    return question


def _answer(value: Any, where: str) -> str:
    candidates = value if isinstance(value, list) else [value]
    # bool is an int subclass, but True is no ground truth.
    if not all(isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in candidates):
        raise ConvertError(f"{where}: expected a string, a number or a list of them, got {value!r}")
    answers = [str(c).strip() for c in candidates if str(c).strip()]
    if not answers:
        raise ConvertError(f"{where}: empty answer")
    return Counter(answers).most_common(1)[0][0]


def _images(value: Any, where: str) -> list[bytes]:
    cells = value if isinstance(value, list) else [value]
    images = []
    for cell in cells:
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not isinstance(data, bytes):
            raise ConvertError(
                f"{where}: expected embedded image bytes (an Image struct with 'bytes', or binary), got {cell!r:.80}"
            )
        images.append(data)
    return images
