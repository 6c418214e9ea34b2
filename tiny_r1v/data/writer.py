"""The output side shared by the converters: a writer of our format and the seeded row choice.

A converted dataset is a directory ``<out>/`` holding ``<split>.jsonl`` and the PNG images the
rows reference under ``<out>/images/``. The splits of one source share the directory; ids and
image names carry the source's and the split's name, so that datasets from several sources can
be loaded together.

Nothing that exists is replaced unless the writer is told to (``overwrite``): the split file
and every image go to temporary files that are renamed into place only when the whole split
has been written, so a refused or failed conversion leaves the directory as it was. An existing
image whose bytes equal the new one is not a conflict (converters are deterministic): it is
kept as it is, so a split can be rebuilt next to the images an earlier run left.
"""

from __future__ import annotations

import io
import json
import os
import random
import uuid
from collections.abc import Collection
from pathlib import Path
from types import TracebackType

from PIL import Image

from tiny_r1v.tasks import Task

# Modes PNG stores as they are; others (CMYK, YCbCr JPEGs) become RGB.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


def sample_indices(size: int, limit: int | None, seed: int) -> list[int]:
    """`limit` of `range(size)` drawn with `seed`, in ascending order; all of them if no limit.

    Keeping source order makes the output of a limited run a subsequence of the full one.
    """
    if limit is None or limit >= size:
        return list(range(size))
    return sorted(random.Random(seed).sample(range(size), limit))


def _temporary(path: Path) -> Path:
    """An unused name next to `path` (same file system, so renaming it into place is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")


class OutputExistsError(FileExistsError):
    """An output file exists and the writer may not replace it; the message names the file."""


class DatasetWriter:
    """Writes rows to ``<out>/<split>.jsonl`` and their images to ``<out>/images/`` as PNG.

    Ids and image file names are prefixed with ``<prefix>-<split>-`` so that outputs of different
    converters and splits never collide. Use as a context manager: the files appear when the
    block ends without an exception.

    Raises OutputExistsError (from the constructor for the split file, from `image` for an
    image) when an output exists, unless ``overwrite``; and always when an output is one of
    ``inputs``, the files the conversion reads.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        split: str,
        prefix: str,
        overwrite: bool = False,
        inputs: Collection[str | Path] = (),
    ) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / f"{split}.jsonl"
        self.overwrite = overwrite
        self._inputs = {Path(path).resolve() for path in inputs}
        self._prefix = f"{prefix}-{split}-"
        self._saved: dict[str, str] = {}  # image name -> path relative to out_dir
        self._pending: list[tuple[Path, Path]] = []  # (temporary file, final path), in write order
        self.rows = 0
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise OutputExistsError(f"{self.out_dir}: output directory exists as a file")
        self._check_target(self.path)
        (self.out_dir / "images").mkdir(parents=True, exist_ok=True)
        self._partial = _temporary(self.path)
        self._handle = self._partial.open("x", encoding="utf-8")

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._handle.close()
        if exc_type is None:
            # Images first: the split file, once renamed, may reference only images in place.
            for temporary, final in self._pending:
                temporary.replace(final)
            self._partial.replace(self.path)
        else:
            for temporary, _ in self._pending:
                temporary.unlink()
            self._partial.unlink()

    def image(self, name: str, image: Image.Image | bytes) -> str:
        """Save `image` (a PIL image or encoded bytes) once under `name`; its relative path.

        Later calls with the same name reuse the file: sources where many questions share an
        image store it once.
        """
        if name not in self._saved:
            if isinstance(image, bytes):
                image = Image.open(io.BytesIO(image))
            if image.mode not in _PNG_MODES:
                image = image.convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            relative = f"images/{self._prefix}{name}.png"
            final = self.out_dir / relative
            data = buffer.getvalue()
            if not (final.is_file() and final.read_bytes() == data):
                self._check_target(final)
                temporary = _temporary(final)
                with temporary.open("xb") as handle:
                    handle.write(data)
                self._pending.append((temporary, final))
            self._saved[name] = relative
        return self._saved[name]

    def _check_target(self, path: Path) -> None:
        """Refuse to write `path` if it is an input, or exists and may not be replaced."""
        if path.resolve() in self._inputs:
            raise OutputExistsError(f"{path}: is an input of this conversion; choose another --out")
        if path.exists() and not self.overwrite:
            raise OutputExistsError(f"{path}: exists; pass --overwrite to replace it")

    def row(
        self, *, uid: str, task: Task, question: str, answer: str, images: list[str], rationale: str | None = None
    ) -> None:
        """Append one row; `images` are paths returned by `image`."""
        record = {
            "id": self._prefix + uid,
            "task": task,
            "question": question,
            "answer": answer,
            "images": images,
        }
        if rationale is not None:
            record["rationale"] = rationale
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.rows += 1
