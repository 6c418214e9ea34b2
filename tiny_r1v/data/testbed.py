"""A testbed of three small offline image tasks that mirror the paper's experts (issue "Evidence I").

- `tb_math` (task ``math``): an expression of two or three handwritten scikit-learn digits with
  ``+``, ``-`` or ``×`` drawn between them (usual precedence; ``--operands`` keeps some lengths);
  the answer is its value, so it can only be found by reading the image.
- `tb_chart` (task ``chart``): a bar chart, titled with its table and month, rendered with
  matplotlib's Agg canvas from a real table that ``vega_datasets`` ships locally (stocks:
  prices of five companies in one month; seattle-weather: days of each weather type in one
  month; crimea: deaths by cause in one month of the Crimean War), with questions on the
  largest and smallest bar, the value of a bar and the gap between the largest and smallest
  (``--questions`` keeps some kinds: `CHART_QUESTIONS`); numeric answers are the values as
  labelled on the bars, graded by the relaxed (5%) match.
- `tb_ocr` (task ``ocr``): transcribe a string of 3 to 6 handwritten scikit-learn digits; graded
  by ``1 - NED``.

Every image is exactly ``width`` x ``height`` pixels (white background, small enough for the
tiny model). No source item is shared between the splits: the digits come from `_digit_split`
(every fifth digit of ``load_digits`` is test), and a chart's group of table rows (one month)
belongs to the test split iff its position among the table's months is a multiple of
`CHART_TEST_EVERY`. Each converter is a pure function of (split, limit, seed, size); the
``*_items`` functions return the plan with its source items, which the tests check.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from PIL import Image

from tiny_r1v.data.hf_parquet import ConvertError
from tiny_r1v.data.offline import DIGITS_TEST_EVERY, GENERATED_DEFAULT_SIZE, _digit_split, ink_image
from tiny_r1v.data.writer import DatasetWriter, sample_indices
from tiny_r1v.tasks import Task

CHART_TEST_EVERY = DIGITS_TEST_EVERY
"""A table's months are sorted; every fifth (position % 5 == 0) is test, the rest train."""

OCR_LENGTHS = (3, 6)
"""Digits per OCR string, both inclusive."""

MATH_OPERATORS = ("+", "-", "×")
MATH_OPERANDS = (2, 3)
"""Digits per expression, drawn uniformly (``--operands`` keeps some)."""
MATH_RATIONALES = ("expression", "worked")
"""What a math row's rationale holds: the expression (``7*3+2``) or the expression worked out
(``7*3+2=23``)."""

_GLYPH = 8  # side of a scikit-learn digit, in source pixels


# ---------------------------------------------------------------------------------------------
# glyphs: scikit-learn digits and drawn operators on one canvas


def _operator_glyphs() -> dict[str, np.ndarray]:
    """8x8 operator glyphs with ink 0..16, two pixels thick like the digits' strokes."""
    plus, minus, times = (np.zeros((_GLYPH, _GLYPH)) for _ in range(3))
    plus[3:5, 1:7] = 16
    plus[1:7, 3:5] = 16
    minus[3:5, 1:7] = 16
    for i in range(1, 7):
        times[i, i] = times[i, 7 - i] = 16
        times[i, min(i + 1, 6)] = times[i, max(6 - i, 1)] = 12
    return {"+": plus, "-": minus, "×": times}


_OPERATORS = _operator_glyphs()


LAYOUTS = ("centred", "cells")
"""How glyphs are placed: `centred`, side by side, scaled by the largest integer factor that fits,
centred; `cells`, one glyph per ``height`` x ``height`` cell from the left edge, scaled by the
largest integer factor that fits a cell and centred in it (with ``height`` 28, Qwen2.5-VL's
merged patch, each glyph is exactly one vision token)."""


def _glyph_row(glyphs: list[np.ndarray], width: int, height: int, layout: str = "centred") -> Image.Image:
    """Glyphs in a row on white, placed by `layout` (see `LAYOUTS`)."""
    if layout not in LAYOUTS:
        raise ConvertError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    cells = layout == "cells"
    scale = height // _GLYPH if cells else min(width // (_GLYPH * len(glyphs)), height // _GLYPH)
    if scale < 1 or (cells and width < height * len(glyphs)):
        raise ConvertError(f"{width}x{height} pixels cannot hold {len(glyphs)} glyphs of {_GLYPH}x{_GLYPH} ({layout})")
    canvas = Image.new("L", (width, height), 255)
    if cells:
        margin = (height - _GLYPH * scale) // 2
        for i, glyph in enumerate(glyphs):
            canvas.paste(ink_image(glyph, scale), (i * height + margin, margin))
        return canvas
    row = ink_image(np.concatenate(glyphs, axis=1), scale)
    canvas.paste(row, ((width - row.width) // 2, (height - row.height) // 2))
    return canvas


def _rng(kind: str, split: str, seed: int) -> random.Random:
    """One generator per (kind, split, seed): the test split is not a replay of the train split."""
    return random.Random(zlib.crc32(f"{kind}/{split}/{seed}".encode()))


# ---------------------------------------------------------------------------------------------
# math and ocr: generated from the digits of one split


@dataclass(frozen=True)
class GlyphItem:
    """A generated math or OCR item: digits (indices into ``load_digits``) and what is between them."""

    uid: str
    digits: tuple[int, ...]
    """Indices into scikit-learn's ``load_digits``, left to right."""
    operators: tuple[str, ...]
    """``len(digits) - 1`` operators for math, empty for OCR."""
    answer: str


def _evaluate(values: list[int], operators: tuple[str, ...]) -> int:
    """The expression's value with ``×`` before ``+`` and ``-``."""
    terms, signs = [values[0]], [1]
    for operator, value in zip(operators, values[1:], strict=True):
        if operator == "×":
            terms[-1] *= value
        else:
            terms.append(value)
            signs.append(1 if operator == "+" else -1)
    return sum(sign * term for sign, term in zip(signs, terms, strict=True))


Draw = Callable[[random.Random, list[int]], tuple[list[int], tuple[str, ...], str]]
"""(generator, labels of the split's digits) -> (positions of the drawn digits, operators, answer)."""


def _generate(kind: str, draw: Draw, split: str, limit: int | None, seed: int) -> list[GlyphItem]:
    """`limit` (default `GENERATED_DEFAULT_SIZE`) items drawn from the digits of `split`."""
    indices, _, labels = _digit_split(split)
    rng = _rng(kind, split, seed)
    items = []
    for number in range(GENERATED_DEFAULT_SIZE if limit is None else limit):
        picks, operators, answer = draw(rng, labels)
        items.append(GlyphItem(str(number), tuple(indices[pick] for pick in picks), operators, answer))
    return items


def _expression_draw(operands: Sequence[int]) -> Draw:
    """Draws expressions of a length among `operands` (digits per expression)."""

    def draw(rng: random.Random, labels: list[int]) -> tuple[list[int], tuple[str, ...], str]:
        picks = [rng.randrange(len(labels)) for _ in range(rng.choice(tuple(operands)))]
        operators = tuple(rng.choice(MATH_OPERATORS) for _ in picks[1:])
        return picks, operators, str(_evaluate([labels[pick] for pick in picks], operators))

    return draw


def _draw_string(rng: random.Random, labels: list[int]) -> tuple[list[int], tuple[str, ...], str]:
    picks = [rng.randrange(len(labels)) for _ in range(rng.randint(*OCR_LENGTHS))]
    return picks, (), "".join(str(labels[pick]) for pick in picks)


def math_items(split: str, limit: int | None, seed: int, operands: Sequence[int] = MATH_OPERANDS) -> list[GlyphItem]:
    """Expressions of `operands` (2 or 3 by default) digits of `split` with random operators;
    see `_generate`. The default draws as the testbed always has (same rows)."""
    return _generate("tb-math", _expression_draw(operands), split, limit, seed)


def math_operands(operands: str) -> tuple[int, ...]:
    """The lengths of a comma-separated ``--operands`` value, checked against `MATH_OPERANDS`."""
    try:
        lengths = tuple(int(length) for length in operands.split(","))
    except ValueError:
        lengths = ()
    if not lengths or any(length not in MATH_OPERANDS for length in lengths):
        raise ConvertError(f"--operands {operands!r}: expected comma-separated lengths among 2, 3")
    return lengths


def ocr_items(split: str, limit: int | None, seed: int) -> list[GlyphItem]:
    """Strings of 3 to 6 digits of `split`; see `_generate`."""
    return _generate("tb-ocr", _draw_string, split, limit, seed)


def _glyphs(item: GlyphItem, pixels: dict[int, np.ndarray]) -> list[np.ndarray]:
    """The item's glyphs left to right: digit, operator, digit, ... (digits only for OCR)."""
    glyphs = [pixels[item.digits[0]]]
    for position, digit in enumerate(item.digits[1:]):
        if item.operators:
            glyphs.append(_OPERATORS[item.operators[position]])
        glyphs.append(pixels[digit])
    return glyphs


def expression_text(item: GlyphItem, labels: dict[int, int]) -> str:
    """The expression a math item's image shows, in ASCII (``×`` as ``*``), e.g. ``7*3+2``:
    its row's rationale (an OCR row's is its digit string)."""
    text = str(labels[item.digits[0]])
    for operator, digit in zip(item.operators, item.digits[1:], strict=True):
        text += ("*" if operator == "×" else operator) + str(labels[digit])
    return text


def worked_text(item: GlyphItem, labels: dict[int, int]) -> str:
    """The expression worked out, e.g. ``7*3+2=23``: a math row's rationale with
    ``--rationale worked``, so a warm start computes the value right after reading it."""
    return f"{expression_text(item, labels)}={item.answer}"


Rationale = Callable[[GlyphItem, dict[int, int]], str]
"""(item, digit label by ``load_digits`` index) -> the row's rationale."""

_MATH_RATIONALE: dict[str, Rationale] = {"expression": expression_text, "worked": worked_text}


def _write_glyph_rows(
    writer: DatasetWriter,
    items: list[GlyphItem],
    *,
    split: str,
    task: Task,
    question: str,
    rationale: Rationale,
    width: int,
    height: int,
    layout: str,
) -> None:
    """Writes `items` (drawn from `split`'s digits) as rows of `task` asking `question`, one
    image per row."""
    source, images, labels = _digit_split(split)
    pixels = dict(zip(source, images, strict=True))
    label_of = dict(zip(source, labels, strict=True))
    for item in items:
        image = _glyph_row(_glyphs(item, pixels), width, height, layout)
        writer.row(
            uid=item.uid,
            task=task,
            question=question,
            answer=item.answer,
            images=[writer.image(item.uid, image)],
            rationale=rationale(item, label_of),
        )


def tb_math(
    writer: DatasetWriter,
    *,
    split: str,
    limit: int | None,
    seed: int,
    width: int,
    height: int,
    layout: str,
    operands: str,
    rationale: str,
) -> None:
    """Handwritten-digit arithmetic (math): expressions of the comma-separated `operands`
    lengths; `rationale` one of `MATH_RATIONALES`."""
    if rationale not in _MATH_RATIONALE:
        raise ConvertError(f"--rationale {rationale!r}: expected one of {', '.join(MATH_RATIONALES)}")
    _write_glyph_rows(
        writer,
        math_items(split, limit, seed, math_operands(operands)),
        split=split,
        task="math",
        question="What is the value of the expression in the image?",
        rationale=_MATH_RATIONALE[rationale],
        width=width,
        height=height,
        layout=layout,
    )


def tb_ocr(
    writer: DatasetWriter, *, split: str, limit: int | None, seed: int, width: int, height: int, layout: str
) -> None:
    """Handwritten digit strings to transcribe (ocr); the rationale is the digit string."""
    _write_glyph_rows(
        writer,
        ocr_items(split, limit, seed),
        split=split,
        task="ocr",
        question="Transcribe the digits in the image.",
        rationale=lambda item, labels: item.answer,
        width=width,
        height=height,
        layout=layout,
    )


# ---------------------------------------------------------------------------------------------
# chart


@dataclass(frozen=True)
class Chart:
    """One bar chart: a group of rows of a vega_datasets table (one month)."""

    table: str
    key: str
    """The group, e.g. ``2004-08``; unique within the table."""
    rows: tuple[int, ...]
    """Row positions in the table the values come from."""
    labels: tuple[str, ...]
    values: tuple[str, ...]
    """The values as labelled on the bars (and used as answers)."""


@dataclass(frozen=True)
class ChartQuestion:
    uid: str
    chart: Chart
    question: str
    answer: str


@dataclass(frozen=True)
class _Table:
    """How to turn a vega_datasets table into monthly bar charts and questions about them."""

    load: Callable[[], list[Chart]]
    title: str
    """The chart's title before its month: months with equal values still get distinct images."""
    most: str
    least: str
    value: str
    """Question template with ``{label}``."""
    gap: str


def _number(value: float) -> str:
    """A bar's label: three significant figures at most, no exponent (``707``, ``39.8``, ``5.97``)."""
    if abs(value) >= 100 or float(value).is_integer():
        return str(round(value))
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _stocks() -> list[Chart]:
    from vega_datasets import local_data

    frame = local_data.stocks()
    charts = []
    for date, group in frame.groupby("date", sort=True):
        charts.append(
            Chart(
                "stocks",
                date.strftime("%Y-%m"),
                tuple(int(i) for i in group.index),
                tuple(group["symbol"]),
                tuple(_number(price) for price in group["price"]),
            )
        )
    return charts


def _seattle_weather() -> list[Chart]:
    from vega_datasets import local_data

    frame = local_data.seattle_weather()
    kinds = ("sun", "rain", "fog", "drizzle", "snow")
    month = frame["date"].dt.strftime("%Y-%m")
    charts = []
    for key, group in frame.groupby(month, sort=True):
        counts = group["weather"].value_counts()
        charts.append(
            Chart(
                "seattle-weather",
                str(key),
                tuple(int(i) for i in group.index),
                kinds,
                tuple(str(int(counts.get(kind, 0))) for kind in kinds),
            )
        )
    return charts


def _crimea() -> list[Chart]:
    from vega_datasets import local_data

    frame = local_data.crimea()
    causes = ("disease", "wounds", "other")
    return [
        Chart(
            "crimea",
            row.date.strftime("%Y-%m"),
            (int(position),),
            causes,
            tuple(str(int(getattr(row, cause))) for cause in causes),
        )
        for position, row in zip(frame.index, frame.itertuples(), strict=True)
    ]


CHART_TABLES: dict[str, _Table] = {
    "stocks": _Table(
        _stocks,
        title="Stock prices",
        most="Which stock has the highest price?",
        least="Which stock has the lowest price?",
        value="What is the price of {label}?",
        gap="How much higher is the highest price than the lowest?",
    ),
    "seattle-weather": _Table(
        _seattle_weather,
        title="Seattle weather",
        most="Which weather has the most days?",
        least="Which weather has the fewest days?",
        value="How many days of {label} are shown?",
        gap="How many more days has the most common weather than the rarest?",
    ),
    "crimea": _Table(
        _crimea,
        title="Crimean War deaths",
        most="Which cause has the most deaths?",
        least="Which cause has the fewest deaths?",
        value="How many deaths from {label} are shown?",
        gap="How many more deaths has the top cause than the bottom one?",
    ),
}
"""vega_datasets tables (all bundled with the package, no network) -> their charts and questions."""


def chart_split(split: str) -> list[Chart]:
    """The charts of `split`: per table, months in order, every `CHART_TEST_EVERY`-th is test."""
    return [
        chart
        for table in CHART_TABLES.values()
        for position, chart in enumerate(table.load())
        if (position % CHART_TEST_EVERY == 0) == (split == "test")
    ]


CHART_QUESTIONS = ("most", "least", "value", "gap")
"""Kinds of chart question: the label of the largest bar and of the smallest (each only when
unique), each bar's value, and the gap between the largest and the smallest value."""


def _questions(chart: Chart, kinds: Sequence[str] = CHART_QUESTIONS) -> list[ChartQuestion]:
    """The chart's questions of `kinds`; each keeps the uid it has among all kinds."""
    table = CHART_TABLES[chart.table]
    numbers = [float(value) for value in chart.values]
    top, bottom = max(numbers), min(numbers)
    asked: list[tuple[str, str, str]] = []
    if numbers.count(top) == 1:
        asked.append(("most", table.most, chart.labels[numbers.index(top)]))
    if numbers.count(bottom) == 1:
        asked.append(("least", table.least, chart.labels[numbers.index(bottom)]))
    for label, value in zip(chart.labels, chart.values, strict=True):
        asked.append(("value", table.value.format(label=label), value))
    if top > bottom:
        asked.append(("gap", table.gap, _number(top - bottom)))
    prefix = f"{chart.table}-{chart.key}"
    return [
        ChartQuestion(f"{prefix}-{n}", chart, question, answer)
        for n, (kind, question, answer) in enumerate(asked)
        if kind in kinds
    ]


def chart_kinds(questions: str) -> tuple[str, ...]:
    """The kinds of a comma-separated ``--questions`` value, checked against `CHART_QUESTIONS`."""
    kinds = tuple(kind.strip() for kind in questions.split(","))
    if any(kind not in CHART_QUESTIONS for kind in kinds):
        raise ConvertError(f"--questions {questions!r}: expected kinds among {', '.join(CHART_QUESTIONS)}")
    return kinds


def chart_items(
    split: str, limit: int | None, seed: int, kinds: Sequence[str] = CHART_QUESTIONS
) -> list[ChartQuestion]:
    """`limit` of the (chart, question) pairs of `split` (questions of `kinds`) drawn with
    `seed`, in source order."""
    questions = [question for chart in chart_split(split) for question in _questions(chart, kinds)]
    return [questions[i] for i in sample_indices(len(questions), limit, seed)]


def render_chart(chart: Chart, width: int, height: int) -> Image.Image:
    """A bar chart with its values on the bars, exactly `width` x `height` RGB pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    font = max(3.0, 5.5 * min(width, height) / 112)
    month = datetime.strptime(chart.key, "%Y-%m").strftime("%b %Y")
    figure.suptitle(f"{CHART_TABLES[chart.table].title}, {month}", fontsize=font, y=0.98)
    axes = figure.add_axes((0.04, 0.16, 0.92, 0.68))
    numbers = [float(value) for value in chart.values]
    positions = range(len(numbers))
    axes.bar(positions, numbers, color="#4c72b0", width=0.7)
    for position, (number, text) in enumerate(zip(numbers, chart.values, strict=True)):
        axes.text(position, number, text, ha="center", va="bottom", fontsize=font)
    # Five labels ("fog drizzle snow") collide at the bars' font size: shrink them to fit.
    axes.set_xticks(list(positions), chart.labels, fontsize=font * min(1.0, 4 / len(numbers)))
    axes.set_ylim(0, max(numbers) * 1.22 or 1)
    axes.set_yticks([])
    axes.tick_params(axis="x", length=0, pad=1)
    for side in ("top", "right", "left"):
        axes.spines[side].set_visible(False)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
    if image.size != (width, height):  # figsize * dpi may round down by a pixel
        padded = Image.new("RGB", (width, height), "white")
        padded.paste(image, (0, 0))
        image = padded
    return image


def tb_chart(
    writer: DatasetWriter, *, split: str, limit: int | None, seed: int, width: int, height: int, questions: str
) -> None:
    """Questions on bar charts of vega_datasets tables (task ``chart``), of the comma-separated
    kinds `questions`; see `chart_items`."""
    images: dict[Chart, str] = {}  # each chart rendered and stored once; its questions share it
    for item in chart_items(split, limit, seed, chart_kinds(questions)):
        if item.chart not in images:
            name = f"{item.chart.table}-{item.chart.key}"
            images[item.chart] = writer.image(name, render_chart(item.chart, width, height))
        writer.row(uid=item.uid, task="chart", question=item.question, answer=item.answer, images=[images[item.chart]])
