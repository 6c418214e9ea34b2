"""Datasets: the row format, its validating loader, prompts, and converters into the format.

Dataset format
--------------
A dataset file is JSON Lines (``.jsonl``, one JSON object per line, UTF-8; blank lines are
ignored) or Parquet (``.parquet``). Every row has these columns (the last two optional):

=============  ============  =================================================================
column         type          meaning
=============  ============  =================================================================
``question``   str           the question, non-blank; images are not referenced in the text
``answer``     str           the ground truth, non-blank
``task``       str           ``math``, ``chart``, ``ocr`` or ``vqa``: the accuracy reward
``images``     list          the images, in prompt order; may be empty
``id``         str           optional, non-blank, unique across the files loaded together;
                             default ``<file stem>-<row number>``
``rationale``  str           optional: a worked step towards the answer (e.g. the expression
                             an image shows), used only as reasoning by the supervised warm
                             start; never shown to the policy or graded
=============  ============  =================================================================

An ``images`` entry is one of:

- a **string**: always a file path, relative to the directory of the dataset file, that stays
  inside it (no absolute paths, no ``..``, no symbolic link that leads out of it), e.g.
  ``"images/train-17.png"``;
- **embedded bytes** of an encoded image (PNG, JPEG, ...), written as an object with the single
  key ``bytes``: ``{"bytes": "<base64>"}`` in JSONL (standard base64 alphabet, padded), a
  ``struct<bytes: binary>`` in Parquet. Parquet also accepts a plain ``binary`` element.

A JSONL row nested too deeply for the parser is an error of that row, like invalid JSON. Row
numbers are 1-based: the line number in a JSONL file (blank lines count), the row index in a
Parquet file. Unknown columns are errors, not ignored: a typo such as ``anwser`` must not
silently drop the ground truth.

Images are resized when loaded (`Example.load_images`) with Qwen2-VL's ``smart_resize``: sides
become multiples of 28 and the pixel count lands within the configured
``[min_pixels, max_pixels]``, aspect ratio kept.

The converters (``python -m tiny_r1v.data.convert --help``) write this format as
``<out>/<split>.jsonl`` plus PNG files under ``<out>/images/``; they refuse to replace an
existing split file or image unless given ``--overwrite``.
"""

from tiny_r1v.data.dataset import (
    IMAGE_FACTOR,
    SUFFIXES,
    DatasetError,
    Example,
    ImageRef,
    load_examples,
)
from tiny_r1v.data.prompts import TEMPLATES, build_messages, render_prompt
from tiny_r1v.tasks import TASKS, Task

__all__ = [
    "IMAGE_FACTOR",
    "SUFFIXES",
    "TASKS",
    "TEMPLATES",
    "DatasetError",
    "Example",
    "ImageRef",
    "Task",
    "build_messages",
    "load_examples",
    "render_prompt",
]
