"""Converters from real data that ships inside registry packages (no hub download).

- `easy_vqa` (PyPI ``easy-vqa``): 64x64 images of one coloured shape; questions about its shape
  and colour and yes/no questions -> task ``vqa``.
- `digits` / `digit_sum` (scikit-learn's bundled ``load_digits``: 1,797 real 8x8 handwritten
  digits): read one digit -> task ``ocr``; add two digits tiled side by side -> task ``math``.
- `reasoning_gym` (PyPI ``reasoning-gym``): a seeded generator such as ``basic_arithmetic``,
  its expression (or whole question) rendered as an image -> task ``math``.

Every converter is deterministic given (split, limit, seed). Each source's package is imported
inside its converter: they are slow to import (reasoning-gym and scikit-learn take seconds) and
only the one being run is needed.
"""

from __future__ import annotations

import random
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tiny_r1v.data.writer import DatasetWriter, sample_indices

GENERATED_DEFAULT_SIZE = 1000
"""Rows written by the generated sources (`digit_sum`, `reasoning_gym`) when no limit is given."""

DIGIT_SCALE = 7
"""8x8 digits are upscaled by this factor: 56x56 pixels, two 28-pixel patches a side."""

DIGITS_TEST_EVERY = 5
"""`load_digits` has no split: every fifth digit (index % 5 == 0) is test, the rest train."""

_FONT_SIZE = 24
_TEXT_MARGIN = 12
_TEXT_WIDTH = 40  # characters per rendered line


def easy_vqa(writer: DatasetWriter, *, split: str, limit: int | None, seed: int) -> None:
    """easy-VQA's questions of `split` (train: 38,575, test: 9,673); images stored once each."""
    import easy_vqa as source

    if split == "train":
        questions, answers, image_ids = source.get_train_questions()
        image_paths = source.get_train_image_paths()
    else:
        questions, answers, image_ids = source.get_test_questions()
        image_paths = source.get_test_image_paths()
    for index in sample_indices(len(questions), limit, seed):
        image_id = image_ids[index]
        image = writer.image(str(image_id), Path(image_paths[image_id]).read_bytes())
        writer.row(
            uid=str(index),
            task="vqa",
            question=questions[index],
            answer=answers[index],
            images=[image],
        )


def digits(writer: DatasetWriter, *, split: str, limit: int | None, seed: int) -> None:
    """ "What digit is shown?" for the digits of `split` (train: 1,437, test: 360)."""
    indices, pixels, labels = _digit_split(split)
    for position in sample_indices(len(indices), limit, seed):
        uid = str(indices[position])  # the index in load_digits, stable across limits and seeds
        writer.row(
            uid=uid,
            task="ocr",
            question="What digit is shown in the image?",
            answer=str(labels[position]),
            images=[writer.image(uid, _digit_image(pixels[position]))],
        )


def digit_sum(writer: DatasetWriter, *, split: str, limit: int | None, seed: int) -> None:
    """Sums of two random digits of `split`, tiled left to right in one image."""
    _, pixels, labels = _digit_split(split)
    rng = random.Random(seed)
    for index in range(GENERATED_DEFAULT_SIZE if limit is None else limit):
        left, right = rng.randrange(len(labels)), rng.randrange(len(labels))
        tile = np.concatenate([pixels[left], pixels[right]], axis=1)
        writer.row(
            uid=str(index),
            task="math",
            question="What is the sum of the two digits shown in the image?",
            answer=str(labels[left] + labels[right]),
            images=[writer.image(str(index), _digit_image(tile))],
        )


def reasoning_gym(writer: DatasetWriter, *, split: str, limit: int | None, seed: int, dataset: str) -> None:
    """Problems from reasoning-gym's `dataset` generator, rendered as images.

    Generators that expose the bare expression (``basic_arithmetic``, ``chain_sum``) get it
    rendered and a short question; others get their whole question rendered. Train and test
    draw from differently seeded generators.
    """
    with warnings.catch_warnings():
        # Its dependency cellpylib compiles with SyntaxWarnings ('is' with a literal): noise.
        warnings.simplefilter("ignore", SyntaxWarning)
        import reasoning_gym as source

    size = GENERATED_DEFAULT_SIZE if limit is None else limit
    # One seed per (split, seed): the test split is not a replay of the train split.
    problems = source.create_dataset(dataset, size=size, seed=zlib.crc32(f"{split}/{seed}".encode()))
    for index, problem in enumerate(problems):
        expression = problem["metadata"].get("expression")
        if expression is None:
            text, question = problem["question"], "Answer the question shown in the image."
        else:
            text, question = expression, "Calculate the value of the expression shown in the image."
        writer.row(
            uid=str(index),
            task="math",
            question=question,
            answer=str(problem["answer"]),
            images=[writer.image(str(index), _text_image(text))],
        )


def _digit_split(split: str) -> tuple[list[int], np.ndarray, list[int]]:
    """(indices in load_digits, 8x8 images with values 0..16, labels) of `split`."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    indices = [i for i in range(len(bunch.target)) if (i % DIGITS_TEST_EVERY == 0) == (split == "test")]
    return indices, bunch.images[indices], [int(bunch.target[i]) for i in indices]


def ink_image(ink: np.ndarray, scale: int) -> Image.Image:
    """Ink intensities 0..16 as dark ink on white, upscaled `scale` times without blurring."""
    image = Image.fromarray(np.rint(255 - ink * (255 / 16)).astype(np.uint8))  # uint8, 2-D: mode "L"
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def _digit_image(pixels: np.ndarray) -> Image.Image:
    return ink_image(pixels, DIGIT_SCALE)


def _text_image(text: str) -> Image.Image:
    """`text`, wrapped, in black on white with PIL's default font."""
    font = ImageFont.load_default(size=_FONT_SIZE)
    wrapped = "\n".join(textwrap.wrap(text, _TEXT_WIDTH)) or text
    _, _, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).multiline_textbbox((0, 0), wrapped, font=font)
    image = Image.new("L", (int(right) + 2 * _TEXT_MARGIN, int(bottom) + 2 * _TEXT_MARGIN), 255)
    ImageDraw.Draw(image).multiline_text((_TEXT_MARGIN, _TEXT_MARGIN), wrapped, fill=0, font=font)
    return image
