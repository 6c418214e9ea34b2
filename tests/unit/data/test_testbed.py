"""The testbed kinds (tb-math, tb-chart, tb-ocr): deterministic, disjoint splits down to the source
items, every ground truth worth 1.0 when boxed, images of the configured size, loadable rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny_r1v.data import load_examples
from tiny_r1v.data import testbed as tb
from tiny_r1v.data.convert import main
from tiny_r1v.rewards.accuracy import score

KINDS = {"tb-math": "math", "tb-chart": "chart", "tb-ocr": "ocr"}
DEFAULT_SIZES = {"tb-math": (112, 56), "tb-chart": (112, 112), "tb-ocr": (112, 56)}
BOUNDS = {"min_pixels": 28 * 28, "max_pixels": 28 * 28 * 64}


def _write(out: Path, kind: str, split: str = "train", *options: str) -> list[dict]:
    main([kind, "--out", str(out), "--split", split, *options])
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def _files(out: Path) -> dict[str, bytes]:
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


def _pairs(out: Path, rows: list[dict]) -> set[tuple[str, bytes]]:
    """(question, image bytes) of each row."""
    return {(row["question"], (out / row["images"][0]).read_bytes()) for row in rows}


@pytest.mark.parametrize("kind", list(KINDS))
def test_same_arguments_write_byte_identical_output(tmp_path: Path, kind: str) -> None:
    for out in ("a", "b"):
        _write(tmp_path / out, kind, "train", "--limit", "6", "--seed", "5")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    _write(tmp_path / "c", kind, "train", "--limit", "6", "--seed", "6")
    assert (tmp_path / "c" / "train.jsonl").read_bytes() != (tmp_path / "a" / "train.jsonl").read_bytes()


@pytest.mark.parametrize("kind", list(KINDS))
def test_rows_load_with_images_of_the_configured_size(tmp_path: Path, kind: str) -> None:
    rows = _write(tmp_path / "default", kind, "train", "--limit", "5")
    test_rows = _write(tmp_path / "default", kind, "test", "--limit", "3")
    assert len(rows) == 5 and len(test_rows) == 3  # --limit
    for row in rows + test_rows:
        assert row["task"] == KINDS[kind] and "\n" not in row["question"] and len(row["images"]) == 1
        with Image.open(tmp_path / "default" / row["images"][0]) as image:
            assert image.size == DEFAULT_SIZES[kind]
    examples = load_examples(
        [tmp_path / "default" / "train.jsonl", tmp_path / "default" / "test.jsonl"], task=KINDS[kind], **BOUNDS
    )
    assert [example.uid for example in examples] == [row["id"] for row in rows + test_rows]
    assert all(example.load_images() for example in examples)

    resized = _write(tmp_path / "resized", kind, "train", "--limit", "2", "--width", "168", "--height", "84")
    for row in resized:
        with Image.open(tmp_path / "resized" / row["images"][0]) as image:
            assert image.size == (168, 84)


@pytest.mark.parametrize("kind", list(KINDS))
def test_no_question_and_image_crosses_splits(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    train = _write(out, kind, "train", "--limit", "40")
    test = _write(out, kind, "test", "--limit", "40")
    assert _pairs(out, train).isdisjoint(_pairs(out, test))
    train_images = {(out / row["images"][0]).read_bytes() for row in train}
    assert train_images.isdisjoint((out / row["images"][0]).read_bytes() for row in test)
    assert {row["id"] for row in train}.isdisjoint(row["id"] for row in test)


@pytest.mark.parametrize("items", [tb.math_items, tb.ocr_items])
def test_digit_tasks_draw_on_disjoint_scikit_learn_digits(items) -> None:
    train = {digit for item in items("train", None, 0) for digit in item.digits}
    test = {digit for item in items("test", None, 0) for digit in item.digits}
    assert train.isdisjoint(test)
    assert all(digit % 5 == 0 for digit in test) and not any(digit % 5 == 0 for digit in train)


def test_chart_splits_share_no_table_rows() -> None:
    train, test = tb.chart_split("train"), tb.chart_split("test")
    for table in tb.CHART_TABLES:
        train_rows = {row for chart in train if chart.table == table for row in chart.rows}
        test_rows = {row for chart in test if chart.table == table for row in chart.rows}
        assert train_rows and test_rows and train_rows.isdisjoint(test_rows), table
    assert {(c.table, c.key) for c in train}.isdisjoint((c.table, c.key) for c in test)


ALL_ITEMS = {"math": tb.math_items, "chart": tb.chart_items, "ocr": tb.ocr_items}


@pytest.mark.parametrize("task", list(ALL_ITEMS))
def test_every_ground_truth_scores_one_when_boxed(task: str) -> None:
    answers = {item.answer for split in ("train", "test") for item in ALL_ITEMS[task](split, None, 0)}
    assert answers
    for answer in sorted(answers):
        result = score(task, f"<think>I read the image.</think> \\boxed{{{answer}}}", answer)
        assert result.accuracy == 1.0 and result.total == 1.0, answer


def test_math_answers_evaluate_the_drawn_expression() -> None:
    from sklearn.datasets import load_digits

    labels = load_digits().target
    for item in tb.math_items("test", 200, 1):
        expression = " ".join(
            token
            for digit, op in zip(item.digits, (*item.operators, ""), strict=True)
            for token in (str(labels[digit]), op)
        )
        assert item.answer == str(eval(expression.replace("×", "*")))  # noqa: S307 - digits and + - * only


def test_digit_rows_carry_what_the_image_shows_as_rationale_and_charts_none(tmp_path: Path) -> None:
    math_rows = _write(tmp_path / "math", "tb-math", "test", "--limit", "50")
    for row in math_rows:
        assert set(row["rationale"]) <= set("0123456789+-*"), row
        assert row["answer"] == str(eval(row["rationale"])), row  # noqa: S307 - digits and + - * only
    assert {e.rationale for e in load_examples(tmp_path / "math" / "test.jsonl", **BOUNDS)} == {
        row["rationale"] for row in math_rows
    }
    assert all(row["rationale"] == row["answer"] for row in _write(tmp_path / "ocr", "tb-ocr", "test", "--limit", "5"))
    assert all("rationale" not in row for row in _write(tmp_path / "chart", "tb-chart", "test", "--limit", "5"))


def test_math_operands_and_worked_rationale(tmp_path: Path) -> None:
    rows = _write(tmp_path / "two", "tb-math", "test", "--limit", "40", "--operands", "2", "--rationale", "worked")
    for row in rows:
        expression, value = row["rationale"].split("=", 1)
        assert len(expression) == 3 and value == row["answer"] == str(eval(expression)), row  # noqa: S307
    lengths = {len(item.digits) for item in tb.math_items("test", 40, 0, (3,))}
    assert lengths == {3}
    # The default still draws both lengths, as the testbed always has.
    assert {len(item.digits) for item in tb.math_items("test", 40, 0)} == {2, 3}


@pytest.mark.parametrize(("option", "value"), [("--operands", "4"), ("--operands", "2,x"), ("--rationale", "value")])
def test_math_options_refuse_unknown_values(tmp_path: Path, capsys, option: str, value: str) -> None:
    with pytest.raises(SystemExit):
        _write(tmp_path, "tb-math", "test", "--limit", "2", option, value)
    assert f"{option} '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "test.jsonl").exists()


def test_cells_layout_puts_one_glyph_in_each_cell_from_the_left(tmp_path: Path) -> None:
    rows = _write(tmp_path, "tb-ocr", "test", "--limit", "20", "--width", "224", "--height", "28", "--layout", "cells")
    for row in rows:
        ink = np.asarray(Image.open(tmp_path / row["images"][0])) < 255  # (28, 224)
        assert ink.shape == (28, 224)
        inked = [bool(ink[:, 28 * i : 28 * (i + 1)].any()) for i in range(8)]
        assert inked == [i < len(row["answer"]) for i in range(8)], row  # a 0 or 1 always leaves ink
        assert not ink[:2].any() and not ink[-2:].any()  # 24-pixel glyphs centred in 28-pixel cells


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--width", "20"], "20x56 pixels cannot hold"),
        (
            ["--width", "112", "--height", "28", "--layout", "cells"],
            "112x28 pixels cannot hold 6 glyphs of 8x8 (cells)",
        ),
        (["--layout", "grid"], "--layout 'grid': expected one of centred, cells"),
    ],
)
def test_an_image_that_cannot_hold_the_glyphs_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as info:  # a 6-digit string needs 6 cells of 28 pixels
        main(["tb-ocr", "--out", str(tmp_path), "--limit", "20", *options])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "train.jsonl").exists()


def test_chart_answers_come_from_the_table() -> None:
    from vega_datasets import local_data

    stocks = local_data.stocks()
    questions = [q for q in tb.chart_items("test", None, 0) if q.chart.table == "stocks"]
    for question in questions:
        rows = stocks.iloc[list(question.chart.rows)]
        if question.question.startswith("What is the price of "):
            symbol = question.question.removeprefix("What is the price of ").removesuffix("?")
            price = float(rows.loc[rows["symbol"] == symbol, "price"].iloc[0])
            assert abs(float(question.answer) - price) <= 0.01 * price
        elif question.question == "Which stock has the highest price?":
            assert question.answer == rows.loc[rows["price"].idxmax(), "symbol"]


def test_chart_question_kinds_keep_their_ids() -> None:
    every = tb.chart_items("test", None, 0)
    kept = tb.chart_items("test", None, 0, ("most", "least"))
    asks = {"Which stock has the highest price?", "Which stock has the lowest price?"}
    stocks = [q for q in kept if q.chart.table == "stocks"]
    assert stocks and {q.question for q in stocks} <= asks
    by_uid = {q.uid: q for q in every}
    assert all(by_uid[q.uid] == q for q in kept)  # the same question under the same id
    assert len(kept) < len(every)


def test_unknown_chart_question_kind_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["tb-chart", "--out", str(tmp_path), "--limit", "3", "--questions", "most,median"])
    assert info.value.code == 2
    assert "--questions 'most,median': expected kinds among most, least, value, gap" in capsys.readouterr().err
    assert not (tmp_path / "train.jsonl").exists()
