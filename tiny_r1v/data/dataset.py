"""Loading and up-front validation of dataset files (the format is described in `tiny_r1v.data`).

`load_examples` reads every row of every file, checks it completely (images are decoded) and
either returns the examples or raises one `DatasetError` listing the problems found, each naming
the file, the 1-based row and, where it applies, the column. Training never starts on a dataset
that would fail half-way through an epoch.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from tiny_r1v.tasks import TASKS

IMAGE_FACTOR = 28
"""Qwen2.5-VL: 14-pixel patches merged 2x2, so resized image sides are multiples of 28."""

ImageRef = Path | bytes
"""An image kept undecoded: an absolute path inside the dataset directory, or encoded bytes.
Absolute, because the example may be used from another working directory (a Ray actor's)."""

SUFFIXES: tuple[str, ...] = (".jsonl", ".parquet")

# Column -> required Python type. `images` is a list of image references; `id` is optional.
_REQUIRED_COLUMNS: dict[str, type] = {"question": str, "answer": str, "task": str, "images": list}
_OPTIONAL_COLUMNS: dict[str, type] = {"id": str, "rationale": str}
_COLUMNS = {**_REQUIRED_COLUMNS, **_OPTIONAL_COLUMNS}


class DatasetError(ValueError):
    """Invalid dataset rows or files; `errors` lists every problem found, in file and row order."""

    def __init__(self, errors: Sequence[str], *, truncated: bool = False) -> None:
        self.errors = tuple(errors)
        lines = list(self.errors)
        if truncated:
            lines.append(f"(stopped after {len(self.errors)} errors)")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Example:
    """One validated prompt. Images stay encoded until `load_images`, so a dataset costs little
    memory however many images it has."""

    uid: str
    """Unique across the loaded files: the row's `id`, or `<file stem>-<row number>`."""
    task: str
    """One of `TASKS`; selects the prompt template and the accuracy reward."""
    question: str
    answer: str
    """Ground truth, non-empty."""
    images: tuple[ImageRef, ...] = field(repr=False)
    """Image references, in prompt order (kept out of the repr: bytes would flood it)."""
    min_pixels: int
    """`load_images` upscales images with fewer pixels than this."""
    max_pixels: int
    """`load_images` downscales images with more pixels than this."""
    rationale: str = ""
    """The row's optional worked step towards the answer; only the warm start reads it."""

    def load_images(self) -> list[Image.Image]:
        """The images as RGB, resized by Qwen2-VL's `smart_resize` into [min_pixels, max_pixels].

        Sides become multiples of 28 with the aspect ratio kept, so the processor (configured with
        the same bounds) leaves them as they are and the rollout engine and the learner see the
        same pixels.
        """
        # Deferred: transformers' image processing pulls in torch and torchvision (about 15 s on
        # a small CPU), which the converters and plain loading do not need.
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        images = []
        for ref in self.images:
            with _open_image(ref) as image:
                height, width = smart_resize(image.height, image.width, IMAGE_FACTOR, self.min_pixels, self.max_pixels)
                rgb = image.convert("RGB")
            if rgb.size != (width, height):
                rgb = rgb.resize((width, height), Image.Resampling.BICUBIC)
            images.append(rgb)
        return images


def load_examples(
    files: str | PathLike[str] | Sequence[str | PathLike[str]],
    *,
    min_pixels: int,
    max_pixels: int,
    task: str | None = None,
    max_errors: int = 20,
) -> list[Example]:
    """Read and validate every row of `files` (JSONL or Parquet), in order.

    Args:
        files: one dataset file or several; ids must be unique across all of them.
        min_pixels, max_pixels: resize bounds stored on each example; every image must also be
            resizable within them (aspect ratio below 200, as `smart_resize` requires).
        task: when given, every row's task must equal it (the config's `data.task`).
        max_errors: problems collected before giving up; 1 stops at the first.

    Raises:
        DatasetError: listing the problems, each as ``<file>, row <n>, column '<c>': <problem>``
            (``<file>: <problem>`` for a file-level one: missing, unreadable, unsupported, empty).
    """
    if isinstance(files, (str, PathLike)):
        files = [files]
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels} and {max_pixels}")
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if max_errors < 1:
        raise ValueError(f"max_errors must be >= 1, got {max_errors}")

    loader = _Loader(min_pixels=min_pixels, max_pixels=max_pixels, task=task)
    errors: list[str] = []
    for file in map(Path, files):
        for location, problem in loader.load(file):
            errors.append(f"{location}: {problem}")
            if len(errors) >= max_errors:
                raise DatasetError(errors, truncated=True)
    if errors:
        raise DatasetError(errors)
    return loader.examples


class _Loader:
    """The state of one `load_examples` call: the examples so far, and ids and images seen."""

    def __init__(self, *, min_pixels: int, max_pixels: int, task: str | None) -> None:
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.task = task
        self.examples: list[Example] = []
        self._first_seen: dict[str, str] = {}  # uid -> "<file>, row <n>" of its first row
        # Images already decoded in this call: in VQA data many questions share one image.
        self._checked: set[ImageRef] = set()

    def load(self, file: Path) -> Iterator[tuple[str, str]]:
        """Append the valid rows of `file` to `examples`; yield (location, problem) for the rest."""
        if file.suffix not in SUFFIXES:
            yield str(file), f"unsupported file type {file.suffix!r}; expected one of {SUFFIXES}"
            return
        if not file.is_file():
            yield str(file), "no such file"
            return
        rows = 0
        try:
            for row, record in _read_jsonl(file) if file.suffix == ".jsonl" else _read_parquet(file):
                rows += 1
                location = f"{file}, row {row}"
                example, problems = self._parse_row(record, file, row)
                for column, problem in problems:
                    yield (
                        (location if column is None else f"{location}, column {column!r}"),
                        problem,
                    )
                if example is None:
                    continue
                if example.uid in self._first_seen:
                    first = self._first_seen[example.uid]
                    yield (
                        f"{location}, column 'id'",
                        f"duplicate id {example.uid!r} (first at {first})",
                    )
                    continue
                self._first_seen[example.uid] = location
                self.examples.append(example)
        except OSError as error:  # unreadable file, or a Parquet file pyarrow cannot decode
            yield str(file), f"cannot read: {error}"
            return
        if rows == 0:
            yield str(file), "contains no rows"

    def _parse_row(self, record: Any, file: Path, row: int) -> tuple[Example | None, list[tuple[str | None, str]]]:
        """The row's Example, or None and its problems as (column or None, problem) pairs."""
        if isinstance(record, ValueError):
            return None, [(None, f"invalid JSON: {record}")]
        if not isinstance(record, dict):
            return None, [(None, f"expected a JSON object, got {type(record).__name__}")]

        problems: list[tuple[str | None, str]] = []
        problems += [(column, "unknown column") for column in record if column not in _COLUMNS]
        problems += [(column, "missing") for column in _REQUIRED_COLUMNS if column not in record]
        for column, expected in _COLUMNS.items():
            if column in record and not isinstance(record[column], expected):
                actual = type(record[column]).__name__
                problems.append((column, f"expected {expected.__name__}, got {actual}"))
        if problems:
            return None, problems

        for column in ("question", "answer", "id", "rationale"):
            if column in record and not record[column].strip():
                problems.append((column, "must not be empty"))
        task = record["task"]
        if task not in TASKS:
            problems.append(("task", f"unknown task {task!r}; expected one of {TASKS}"))
        elif self.task is not None and task != self.task:
            problems.append(("task", f"task {task!r} differs from the configured {self.task!r}"))

        images: list[ImageRef] = []
        for index, value in enumerate(record["images"]):
            try:
                images.append(self._image(value, file.parent.absolute()))
            except ValueError as error:
                problems.append((f"images[{index}]", str(error)))
        if problems:
            return None, problems

        example = Example(
            uid=record.get("id", f"{file.stem}-{row}"),
            task=task,
            question=record["question"],
            answer=record["answer"],
            images=tuple(images),
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            rationale=record.get("rationale", ""),
        )
        return example, []

    def _image(self, value: Any, directory: Path) -> ImageRef:
        """One `images` entry as a checked reference; ValueError saying why it is unusable."""
        ref = _image_ref(value, directory)
        if ref not in self._checked:
            _check_image(ref, self.min_pixels, self.max_pixels)
            self._checked.add(ref)
        return ref


def _read_jsonl(file: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON or the ValueError that parsing raised); blank lines skipped."""
    with file.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except ValueError as error:  # invalid JSON, or bytes that are not UTF-8
                yield number, error
            except RecursionError:  # arrays or objects nested deeper than the parser's stack
                yield number, ValueError("nested too deeply to parse")


def _read_parquet(file: Path) -> Iterator[tuple[int, Any]]:
    """(1-based row index, row as a dict), streamed in batches."""
    import pyarrow  # deferred: only Parquet datasets need it
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(file).iter_batches(batch_size=256)
        row = 0
        for batch in batches:
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except pyarrow.ArrowException as error:
        raise OSError(str(error)) from error


def _image_ref(value: Any, directory: Path) -> ImageRef:
    """Parse one `images` entry; ValueError saying why it is not a valid reference."""
    if isinstance(value, str):
        relative = PurePosixPath(value)
        # A dataset must not reach files outside its own directory: neither by its text...
        if not value or relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"path {value!r} must be relative and stay inside the dataset directory")
        path = directory / relative
        # ...nor through a symbolic link on the way.
        target, root = path.resolve(), directory.resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"path {value!r} leads to {target}, outside the dataset directory {root}")
        return path
    if isinstance(value, bytes):  # Parquet binary
        return value
    if isinstance(value, dict) and value.keys() == {"bytes"}:
        data = value["bytes"]
        if isinstance(data, bytes):  # Parquet struct<bytes: binary>
            return data
        if isinstance(data, str):
            try:
                return base64.b64decode(data, validate=True)
            except binascii.Error as error:
                raise ValueError(f"invalid base64 in 'bytes': {error}") from None
    raise ValueError(f"expected a relative path or {{'bytes': <base64>}}, got {type(value).__name__}")


def _check_image(ref: ImageRef, min_pixels: int, max_pixels: int) -> None:
    """Decode the image fully and check it can be resized within bounds; ValueError if not."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize  # see above

    if isinstance(ref, Path) and not ref.is_file():
        raise ValueError(f"image file not found: {ref}")
    try:
        # verify() checks the container (e.g. PNG chunk checksums) but leaves the image unusable;
        # a second open decodes the pixels, which catches truncated data.
        with _open_image(ref) as image:
            image.verify()
        with _open_image(ref) as image:
            image.load()
            smart_resize(image.height, image.width, IMAGE_FACTOR, min_pixels, max_pixels)
    # PIL reports unknown formats as UnidentifiedImageError (whose message shows only a stream
    # object), corrupt data as OSError, SyntaxError (broken PNG) or ValueError; smart_resize an
    # extreme aspect ratio as ValueError.
    except Image.UnidentifiedImageError:
        raise ValueError(f"cannot use image {_describe(ref)}: not a known image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot use image {_describe(ref)}: {error}") from None


def _describe(ref: ImageRef) -> str:
    return str(ref) if isinstance(ref, Path) else f"<{len(ref)} embedded bytes>"


def _open_image(ref: ImageRef) -> Image.Image:
    return Image.open(ref if isinstance(ref, Path) else io.BytesIO(ref))
