"""Converters: Hugging Face Parquet layouts on tiny self-written exports, and the offline sources
on a few rows. Every output must pass `load_examples`."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import snapshot
from PIL import Image

from tiny_r1v.data import load_examples
from tiny_r1v.data.convert import main
from tiny_r1v.data.hf_parquet import LAYOUTS, ConvertError, convert_parquet
from tiny_r1v.data.writer import DatasetWriter

BOUNDS = {"min_pixels": 28 * 28, "max_pixels": 28 * 28 * 64}
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _image(color: tuple[int, int, int], image_format: str = "PNG") -> dict[str, Any]:
    """A `datasets` Image struct with embedded bytes, as the Hub's Parquet exports store it."""
    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), color).save(buffer, format=image_format)
    return {"bytes": buffer.getvalue(), "path": f"{color}.{image_format.lower()}"}


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _parquet(path: Path, columns: dict[str, tuple[pa.DataType, list[Any]]]) -> Path:
    schema = pa.schema([(name, dtype) for name, (dtype, _) in columns.items()])
    pq.write_table(pa.table({name: values for name, (_, values) in columns.items()}, schema=schema), path)
    return path


# kind -> (files as {column: (type, values)}, expected rows as (question, answer, image colours))
HF_CASES: dict[str, tuple[list[dict[str, tuple[pa.DataType, list[Any]]]], list[tuple[str, str, list]]]] = {
    "geometry3k": (
        [
            {
                "images": (pa.list_(IMAGE), [[_image(RED)], [_image(GREEN), _image(BLUE, "JPEG")]]),
                "problem": (
                    pa.string(),
                    ["<image>Find x.", "<image><image>Find the area of ABCD."],
                ),
                "answer": (pa.string(), ["3", "12\\sqrt{3}"]),
            }
        ],
        [("Find x.", "3", [RED]), ("Find the area of ABCD.", "12\\sqrt{3}", [GREEN, BLUE])],
    ),
    "chartqa": (
        [
            {
                "image": (IMAGE, [_image(RED), _image(GREEN)]),
                "query": (pa.string(), ["How many bars are red?", "Which year peaked?"]),
                "label": (pa.list_(pa.string()), [["14"], ["2019"]]),
                "human_or_machine": (pa.int64(), [0, 1]),  # ignored: not in the layout
            },
            {  # a second file of the same split whose label is a plain string
                "image": (IMAGE, [_image(BLUE)]),
                "query": (pa.string(), ["What is the total?"]),
                "label": (pa.string(), ["3.5"]),
            },
        ],
        [
            ("How many bars are red?", "14", [RED]),
            ("Which year peaked?", "2019", [GREEN]),
            ("What is the total?", "3.5", [BLUE]),
        ],
    ),
    "ocrvqa": (
        [
            {
                "image": (IMAGE, [_image(RED), _image(GREEN)]),
                "question": (pa.string(), ["What is the title?", "Who is the author?"]),
                # annotators disagree: the most frequent answer wins, the earliest on ties
                "answers": (
                    pa.list_(pa.string()),
                    [["Dune", "dune", "Dune"], ["Herbert", "F. Herbert"]],
                ),
            },
            {
                "image": (IMAGE, [_image(BLUE)]),
                "question": (pa.string(), ["What is the price?"]),
                "answer": (pa.string(), ["$9.99"]),
            },
        ],
        [
            ("What is the title?", "Dune", [RED]),
            ("Who is the author?", "Herbert", [GREEN]),
            ("What is the price?", "$9.99", [BLUE]),
        ],
    ),
}


@pytest.mark.parametrize("kind", list(HF_CASES))
def test_hf_parquet_layouts_convert_to_loadable_data(tmp_path: Path, kind: str) -> None:
    files, expected = HF_CASES[kind]
    inputs = [str(_parquet(tmp_path / f"part-{i}.parquet", columns)) for i, columns in enumerate(files)]
    out = tmp_path / "out"
    main([kind, "--out", str(out), "--split", "test", "--input", *inputs])

    examples = load_examples(out / "test.jsonl", task=LAYOUTS[kind].task, **BOUNDS)
    assert [e.uid for e in examples] == [f"{kind}-test-{i}" for i in range(len(expected))]
    assert [(e.question, e.answer) for e in examples] == [(q, a) for q, a, _ in expected]
    for example, (_, _, colours) in zip(examples, expected, strict=True):
        assert all(isinstance(ref, Path) and ref.suffix == ".png" for ref in example.images)
        # JPEG is lossy: compare colours approximately.
        loaded = [image.getpixel((28, 28)) for image in example.load_images()]
        assert len(loaded) == len(colours)
        for got, want in zip(loaded, colours, strict=True):
            assert max(abs(g - w) for g, w in zip(got, want, strict=True)) <= 8


def test_hf_limit_draws_a_seeded_subset_in_source_order(tmp_path: Path) -> None:
    questions = [f"Question {i}?" for i in range(8)]
    source = _parquet(
        tmp_path / "chart.parquet",
        {
            "image": (IMAGE, [_image(RED)] * 8),
            "query": (pa.string(), questions),
            "label": (pa.string(), [str(i) for i in range(8)]),
        },
    )

    def convert(out: str, seed: int) -> list[str]:
        main(
            [
                "chartqa",
                "--out",
                str(tmp_path / out),
                "--input",
                str(source),
                "--limit",
                "3",
                "--seed",
                str(seed),
            ]
        )
        return (tmp_path / out / "train.jsonl").read_text().splitlines()

    first, again, other = convert("a", 1), convert("b", 1), convert("c", 2)
    assert first == again and first != other
    answers = [int(json.loads(line)["answer"]) for line in first]
    assert len(answers) == 3 and answers == sorted(answers)
    assert [json.loads(line)["id"] for line in first] == [f"chartqa-train-{a}" for a in answers]


def test_hf_missing_column_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _parquet(
        tmp_path / "chart.parquet",
        {"image": (IMAGE, [_image(RED)]), "query": (pa.string(), ["How many?"])},
    )
    with pytest.raises(SystemExit) as info:
        main(["chartqa", "--out", str(tmp_path / "out"), "--input", str(source)])
    assert info.value.code == 2
    message = capsys.readouterr().err
    assert f"{source}: no column for 'answer': expected one of ['label', 'answer']" in message
    assert not (tmp_path / "out" / "train.jsonl").exists()  # no half-written dataset


@pytest.mark.parametrize(
    ("column", "values", "dtype", "problem"),
    [
        (
            "image",
            [_image(RED), {"bytes": None, "path": "elsewhere.png"}],
            IMAGE,
            "embedded image bytes",
        ),
        ("image", [_image(RED), {"bytes": b"junk", "path": None}], IMAGE, "cannot identify image"),
        ("answers", [["a"], ["", " "]], pa.list_(pa.string()), "empty answer"),
        ("question", ["Ok?", "<image>"], pa.string(), "empty question"),
    ],
)
def test_hf_bad_values_name_file_row_and_column(
    tmp_path: Path, column: str, values: list[Any], dtype: pa.DataType, problem: str
) -> None:
    columns = {
        "image": (IMAGE, [_image(RED)] * 2),
        "question": (pa.string(), ["Ok?"] * 2),
        "answers": (pa.list_(pa.string()), [["a"]] * 2),
    }
    source = _parquet(tmp_path / "ocr.parquet", {**columns, column: (dtype, values)})
    with (
        pytest.raises(ConvertError, match=problem) as info,
        DatasetWriter(tmp_path / "out", split="train", prefix="ocrvqa") as writer,
    ):
        convert_parquet(writer, LAYOUTS["ocrvqa"], [source], limit=None, seed=0)
    assert str(info.value).startswith(f"{source}, row 2, column {column!r}: ")


OFFLINE_KINDS = {"easy-vqa": "vqa", "digits": "ocr", "digit-sum": "math", "reasoning-gym": "math"}


def _convert(out: Path, kind: str, *options: str) -> list[dict[str, Any]]:
    main([kind, "--out", str(out), "--limit", "4", *options])
    split = options[options.index("--split") + 1] if "--split" in options else "train"
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def _image_bytes(out: Path, rows: list[dict[str, Any]]) -> list[bytes]:
    return [(out / path).read_bytes() for row in rows for path in row["images"]]


@pytest.mark.parametrize("kind", list(OFFLINE_KINDS))
def test_offline_converters_are_deterministic_and_loadable(tmp_path: Path, kind: str) -> None:
    rows = _convert(tmp_path / "a", kind, "--seed", "3")
    again = _convert(tmp_path / "b", kind, "--seed", "3")
    assert rows == again
    assert _image_bytes(tmp_path / "a", rows) == _image_bytes(tmp_path / "b", again)
    assert _convert(tmp_path / "c", kind, "--seed", "4") != rows

    test_rows = _convert(tmp_path / "a", kind, "--seed", "3", "--split", "test")
    assert {row["id"] for row in test_rows}.isdisjoint(row["id"] for row in rows)
    assert [row["question"] for row in test_rows] != [row["question"] for row in rows] or [
        row["answer"] for row in test_rows
    ] != [row["answer"] for row in rows]

    examples = load_examples(
        [tmp_path / "a" / "train.jsonl", tmp_path / "a" / "test.jsonl"],
        task=OFFLINE_KINDS[kind],
        **BOUNDS,
    )
    assert len(examples) == 8
    assert all(len(example.images) == 1 for example in examples)


def test_digits_answers_are_the_real_labels(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = _convert(tmp_path, "digits", "--split", "test")
    for row in rows:
        index = int(row["id"].rsplit("-", 1)[1])
        assert index % 5 == 0  # the test split
        assert row["answer"] == str(digits.target[index])
        with Image.open(tmp_path / row["images"][0]) as image:
            assert image.size == (56, 56)
            # Dark ink where the digit has ink: the top-left 7x7 block is one source pixel.
            ink = digits.images[index][0, 0]
            assert image.getpixel((3, 3)) == round(255 - ink * 255 / 16)


def test_easy_vqa_answers_come_from_its_answer_set(tmp_path: Path) -> None:
    import easy_vqa

    rows = _convert(tmp_path, "easy-vqa")
    assert {row["answer"] for row in rows} <= set(easy_vqa.get_answers())


def test_reasoning_gym_renders_whole_questions_without_an_expression(tmp_path: Path) -> None:
    rows = _convert(tmp_path, "reasoning-gym", "--dataset", "fraction_simplification")
    assert {row["question"] for row in rows} == {"Answer the question shown in the image."}
    assert all(any(char.isdigit() for char in row["answer"]) for row in rows)
    load_examples(tmp_path / "train.jsonl", task="math", **BOUNDS)


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The error output of a conversion that must exit with status 2."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_existing_split_is_refused_without_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    main(["digits", "--out", str(out), "--limit", "6"])
    before = snapshot(out)

    err = _refused(["digits", "--out", str(out), "--limit", "3", "--seed", "1"], capsys)
    assert f"{out / 'train.jsonl'}: exists; pass --overwrite" in err
    assert snapshot(out) == before


def test_existing_image_with_other_bytes_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rows = _convert(out, "digit-sum", "--seed", "1")
    (out / "train.jsonl").unlink()  # only the images of an earlier run are left
    before = snapshot(out)

    err = _refused(["digit-sum", "--out", str(out), "--limit", "4", "--seed", "2"], capsys)
    assert f"{out / rows[0]['images'][0]}: exists; pass --overwrite" in err
    assert snapshot(out) == before  # no split file, no temporary file, no image changed


def test_identical_images_are_kept_so_a_split_can_be_rebuilt(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = _convert(out, "digits")
    (out / "train.jsonl").unlink()
    images = snapshot(out / "images")
    assert _convert(out, "digits") == rows
    assert snapshot(out / "images") == images


def test_overwrite_replaces_the_split_and_its_images(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _convert(out, "digit-sum", "--seed", "1")
    other = tmp_path / "other"
    rows = _convert(other, "digit-sum", "--seed", "2")

    assert _convert(out, "digit-sum", "--seed", "2", "--overwrite") == rows
    assert _image_bytes(out, rows) == _image_bytes(other, rows)
    assert not [path for path in out.rglob("*") if path.name.endswith(".partial")]


def test_an_input_is_never_an_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # A Parquet export that happens to sit where the converter writes its split file.
    source = _parquet(
        out / "train.jsonl",
        {"image": (IMAGE, [_image(RED)]), "query": (pa.string(), ["How many?"]), "label": (pa.string(), ["1"])},
    )
    before = snapshot(out)
    err = _refused(["chartqa", "--out", str(out), "--input", str(source), "--overwrite"], capsys)
    assert f"{source}: is an input of this conversion" in err
    assert snapshot(out) == before


@pytest.mark.parametrize(("name", "content"), [("missing.parquet", None), ("text.parquet", b"not parquet\n")])
def test_unreadable_input_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes | None
) -> None:
    source = tmp_path / name
    if content is not None:
        source.write_bytes(content)
    err = _refused(["chartqa", "--out", str(tmp_path / "out"), "--input", str(source)], capsys)
    assert f"error: {source}: cannot read as Parquet: " in err
    assert not (tmp_path / "out" / "train.jsonl").exists()
