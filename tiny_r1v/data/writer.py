"""The output side shared by the converters: a writer of our format and the seeded row choice.

A converted dataset is a directory ``<out>/`` holding ``<split>.jsonl`` and the PNG images the
rows reference under ``<out>/images/``. The splits of one source share the directory; ids and
image names carry the source's and the split's name, so that datasets from several sources can
be loaded together.
"""

from __future__ import annotations

import io
import json
import random
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


class DatasetWriter:
    """Writes rows to ``<out>/<split>.jsonl`` and their images to ``<out>/images/`` as PNG.

    Ids and image file names are prefixed with ``<prefix>-<split>-`` so that outputs of different
    converters and splits never collide. Use as a context manager.
    """

    def __init__(self, out_dir: str | Path, *, split: str, prefix: str) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / f"{split}.jsonl"
        self._prefix = f"{prefix}-{split}-"
        self._saved: dict[str, str] = {}  # image name -> path relative to out_dir
        self.rows = 0
        (self.out_dir / "images").mkdir(parents=True, exist_ok=True)
        # Rows go to a temporary file, renamed on success: a failed conversion leaves no
        # truncated dataset that would look complete.
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._handle = self._partial.open("w", encoding="utf-8")

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
            self._partial.replace(self.path)
        else:
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
            relative = f"images/{self._prefix}{name}.png"
            image.save(self.out_dir / relative, format="PNG")
            self._saved[name] = relative
        return self._saved[name]

    def row(self, *, uid: str, task: Task, question: str, answer: str, images: list[str]) -> None:
        """Append one row; `images` are paths returned by `image`."""
        record = {
            "id": self._prefix + uid,
            "task": task,
            "question": question,
            "answer": answer,
            "images": images,
        }
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.rows += 1
