"""Dataset format: the validating loader, image resizing, and prompt messages."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tiny_r1v.data import TASKS, TEMPLATES, DatasetError, Example, build_messages, load_examples

MIN_PIXELS = 28 * 28 * 4
MAX_PIXELS = 28 * 28 * 64
BOUNDS = {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}


def _png(size: tuple[int, int] = (40, 30), color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD_ROW: dict[str, Any] = {
    "question": "What colour is the shape?",
    "answer": "red",
    "task": "vqa",
    "images": ["images/red.png"],
}


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """A dataset directory with valid and broken images under images/."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "red.png").write_bytes(_png())
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    (images / "truncated.png").write_bytes(_png((300, 300), (1, 2, 3))[:200])
    (images / "thin.png").write_bytes(_png((1, 250)))  # aspect ratio 250 > smart_resize's 200
    return tmp_path


def _write_jsonl(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _with(**changes: Any) -> dict[str, Any]:
    """GOOD_ROW with `changes`; a value of ... removes the column."""
    row = {**GOOD_ROW, **changes}
    return {key: value for key, value in row.items() if value is not ...}


_b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731

# (case id, bad row 2 (a dict or a raw line), column named in the message or None, problem text)
JSONL_ERRORS = [
    ("missing image", _with(images=["images/missing.png"]), "images[0]", "not found"),
    ("corrupt image", _with(images=["images/corrupt.png"]), "images[0]", "cannot use image"),
    ("truncated image", _with(images=["images/truncated.png"]), "images[0]", "cannot use image"),
    ("extreme aspect ratio", _with(images=["images/thin.png"]), "images[0]", "aspect ratio"),
    ("corrupt embedded", _with(images=[{"bytes": _b64(b"garbage")}]), "images[0]", "embedded"),
    ("bad base64", _with(images=[{"bytes": "not base64!"}]), "images[0]", "invalid base64"),
    ("bad image entry", _with(images=[5]), "images[0]", "expected a relative path"),
    ("base64 as bare string", _with(images=[_b64(_png())]), "images[0]", "not found"),
    ("escaping path", _with(images=["../red.png"]), "images[0]", "inside the dataset directory"),
    ("escaping inner path", _with(images=["images/../../x.png"]), "images[0]", "inside"),
    ("absolute path", _with(images=["/etc/hosts"]), "images[0]", "must be relative"),
    ("empty answer", _with(answer=""), "answer", "must not be empty"),
    ("blank answer", _with(answer="  \n"), "answer", "must not be empty"),
    ("empty question", _with(question=" "), "question", "must not be empty"),
    ("empty id", _with(id=""), "id", "must not be empty"),
    ("unknown column", _with(anwser="red"), "anwser", "unknown column"),
    ("missing column", _with(answer=...), "answer", "missing"),
    ("missing images", _with(images=...), "images", "missing"),
    ("answer not a string", _with(answer=42), "answer", "expected str, got int"),
    ("null question", _with(question=None), "question", "expected str, got NoneType"),
    ("images not a list", _with(images="images/red.png"), "images", "expected list, got str"),
    ("id not a string", _with(id=7), "id", "expected str, got int"),
    ("unknown task", _with(task="physics"), "task", "unknown task 'physics'"),
    ("other task", _with(task="ocr"), "task", "differs from the configured 'vqa'"),
    ("invalid JSON", '{"question": "x",', None, "invalid JSON"),
    ("not an object", "[1, 2]", None, "expected a JSON object, got list"),
    ("deeply nested array", "[" * 100_000 + "]" * 100_000, None, "invalid JSON: nested too deeply"),
    ("deeply nested value", '{"question": ' + "[" * 100_000 + "]" * 100_000 + "}", None, "nested too deeply"),
    ("duplicate default id", _with(id="data-1"), "id", "duplicate id 'data-1'"),
]


@pytest.mark.parametrize(
    ("bad_row", "column", "problem"),
    [case[1:] for case in JSONL_ERRORS],
    ids=[case[0] for case in JSONL_ERRORS],
)
def test_jsonl_error_names_file_row_and_column(
    dataset_dir: Path, bad_row: dict[str, Any] | str, column: str | None, problem: str
) -> None:
    path = _write_jsonl(dataset_dir / "data.jsonl", [GOOD_ROW, bad_row, GOOD_ROW])
    with pytest.raises(DatasetError) as info:
        load_examples([path], task="vqa", **BOUNDS)
    assert len(info.value.errors) == 1, info.value.errors
    first = info.value.errors[0]
    location = f"{path}, row 2" + ("" if column is None else f", column {column!r}")
    assert first.startswith(location + ": "), first
    assert problem in first
    assert str(info.value).startswith(first)


@pytest.mark.parametrize(
    ("link", "target", "image"),
    [
        ("images/link.png", "outside.png", "images/link.png"),  # a file link
        ("linked", "outside", "linked/red.png"),  # a directory link on the way
    ],
)
def test_symlink_out_of_the_dataset_directory_is_refused(tmp_path: Path, link: str, target: str, image: str) -> None:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside.png").write_bytes(_png())
    (tmp_path / "outside" / "red.png").write_bytes(_png())
    (data / link).symlink_to(tmp_path / target)
    path = _write_jsonl(data / "data.jsonl", [_with(images=[image])])
    with pytest.raises(DatasetError) as info:
        load_examples(path, **BOUNDS)
    assert info.value.errors == (
        f"{path}, row 1, column 'images[0]': path {image!r} leads to {(data / image).resolve()}, "
        f"outside the dataset directory {data.resolve()}",
    )


def test_symlink_inside_the_dataset_directory_is_followed(dataset_dir: Path) -> None:
    (dataset_dir / "images" / "alias.png").symlink_to(dataset_dir / "images" / "red.png")
    path = _write_jsonl(dataset_dir / "data.jsonl", [_with(images=["images/alias.png"])])
    (example,) = load_examples(path, **BOUNDS)
    assert example.load_images()[0].getpixel((0, 0)) == (200, 30, 30)


def test_duplicate_ids_across_files_name_both_places(dataset_dir: Path) -> None:
    first = _write_jsonl(dataset_dir / "a.jsonl", [_with(id="q1")])
    second = _write_jsonl(dataset_dir / "b.jsonl", [_with(id="q2"), _with(id="q1")])
    with pytest.raises(DatasetError, match="duplicate id 'q1'") as info:
        load_examples([first, second], **BOUNDS)
    assert info.value.errors == (f"{second}, row 2, column 'id': duplicate id 'q1' (first at {first}, row 1)",)


def _write_parquet(path: Path, columns: dict[str, list[Any]], schema: pa.Schema | None = None) -> Path:
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def _parquet_columns(rows: int = 3, **changes: list[Any]) -> dict[str, list[Any]]:
    columns = {
        "question": ["What colour?"] * rows,
        "answer": ["red"] * rows,
        "task": ["vqa"] * rows,
        "images": [[_png()]] * rows,
    }
    return {**columns, **changes}


PARQUET_ERRORS = [
    ("empty answer", _parquet_columns(answer=["red", "", "red"]), 2, "answer", "must not be empty"),
    ("null task", _parquet_columns(task=["vqa", None, "vqa"]), 2, "task", "got NoneType"),
    (
        "corrupt bytes",
        _parquet_columns(images=[[_png()], [b"junk"], []]),
        2,
        "images[0]",
        "cannot use",
    ),
    ("unknown column", _parquet_columns(extra=[1, 2, 3]), 1, "extra", "unknown column"),
    (
        "missing column",
        {"question": ["q"], "answer": ["a"], "task": ["vqa"]},
        1,
        "images",
        "missing",
    ),
    ("int ids", _parquet_columns(id=[1, 2, 3]), 1, "id", "expected str, got int"),
]


@pytest.mark.parametrize(
    ("columns", "row", "column", "problem"),
    [case[1:] for case in PARQUET_ERRORS],
    ids=[case[0] for case in PARQUET_ERRORS],
)
def test_parquet_error_names_file_row_and_column(
    tmp_path: Path, columns: dict[str, list[Any]], row: int, column: str, problem: str
) -> None:
    path = _write_parquet(tmp_path / "data.parquet", columns)
    with pytest.raises(DatasetError) as info:
        load_examples(path, max_errors=1, **BOUNDS)
    first = info.value.errors[0]
    assert first.startswith(f"{path}, row {row}, column {column!r}: "), first
    assert problem in first


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("data.csv", b"question,answer\n", "unsupported file type '.csv'"),
        ("data.json", b"[]", "unsupported file type '.json'"),
        ("missing.jsonl", None, "no such file"),
        ("empty.jsonl", b"\n\n", "contains no rows"),
        ("empty.parquet", None, "contains no rows"),
        ("broken.parquet", b"PAR1 this is not parquet", "cannot read"),
    ],
)
def test_file_level_errors_name_the_file(tmp_path: Path, name: str, content: bytes | None, problem: str) -> None:
    path = tmp_path / name
    if name == "empty.parquet":
        _write_parquet(path, {"question": []}, pa.schema([("question", pa.string())]))
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DatasetError) as info:
        load_examples([path], **BOUNDS)
    assert info.value.errors[0].startswith(f"{path}: "), info.value.errors
    assert problem in info.value.errors[0]


def test_errors_are_collected_in_order_up_to_max_errors(dataset_dir: Path) -> None:
    rows = [_with(answer=""), GOOD_ROW, _with(task="x"), "{", _with(images=["../x.png"])]
    path = _write_jsonl(dataset_dir / "data.jsonl", rows)
    with pytest.raises(DatasetError) as info:
        load_examples(path, **BOUNDS)
    assert [error.split(":")[0] for error in info.value.errors] == [
        f"{path}, row 1, column 'answer'",
        f"{path}, row 3, column 'task'",
        f"{path}, row 4",
        f"{path}, row 5, column 'images[0]'",
    ]
    with pytest.raises(DatasetError) as info:
        load_examples(path, max_errors=2, **BOUNDS)
    assert len(info.value.errors) == 2
    assert str(info.value).endswith("(stopped after 2 errors)")


def test_valid_jsonl_loads_every_image_convention(dataset_dir: Path) -> None:
    embedded = _png((56, 28), (0, 0, 255))
    path = _write_jsonl(
        dataset_dir / "train.jsonl",
        [
            GOOD_ROW,
            "",  # blank lines are skipped but keep line numbers
            _with(id="two-images", images=["images/red.png", {"bytes": _b64(embedded)}]),
            _with(task="math", question="What is 1 + 1?", answer="2", images=[]),
        ],
    )
    examples = load_examples(path, **BOUNDS)
    assert [e.uid for e in examples] == ["train-1", "two-images", "train-4"]
    assert [e.task for e in examples] == ["vqa", "vqa", "math"]
    assert examples[0] == Example(
        uid="train-1",
        task="vqa",
        question=GOOD_ROW["question"],
        answer="red",
        images=(dataset_dir / "images" / "red.png",),
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
    )
    # Images stay undecoded references until asked for.
    assert examples[1].images == (dataset_dir / "images" / "red.png", embedded)
    assert examples[2].images == ()
    assert examples[2].load_images() == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        examples[0].answer = "blue"  # type: ignore[misc]


def test_image_paths_survive_a_change_of_directory(
    dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_jsonl(dataset_dir / "data.jsonl", [GOOD_ROW])
    monkeypatch.chdir(dataset_dir)
    (example,) = load_examples("data.jsonl", **BOUNDS)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # as a Ray actor's working dir
    assert example.images == (dataset_dir / "images" / "red.png",)
    assert example.load_images()[0].getpixel((0, 0)) == (200, 30, 30)


GREEN = _png((112, 56), (0, 128, 0))


@pytest.mark.parametrize(
    ("images_type", "value"),
    [
        (pa.list_(pa.string()), "images/green.png"),
        (pa.list_(pa.binary()), GREEN),
        (pa.list_(pa.struct([("bytes", pa.binary())])), {"bytes": GREEN}),
    ],
    ids=["paths", "binary", "struct"],
)
def test_valid_parquet_loads(dataset_dir: Path, images_type: pa.DataType, value: Any) -> None:
    (dataset_dir / "images" / "green.png").write_bytes(GREEN)
    columns = _parquet_columns(rows=2, images=[[value], []], id=["first", "second"])
    schema = pa.schema(
        [(name, pa.string()) for name in ("question", "answer", "task", "id")] + [("images", images_type)]
    )
    path = _write_parquet(dataset_dir / "data.parquet", columns, schema)
    examples = load_examples(path, task="vqa", **BOUNDS)
    assert [e.uid for e in examples] == ["first", "second"]
    (loaded,) = examples[0].load_images()
    assert loaded.size == (112, 56)  # already within bounds and a multiple of 28: untouched
    assert loaded.getpixel((0, 0)) == (0, 128, 0)


@pytest.mark.parametrize(
    ("size", "mode"),
    [
        ((10, 10), "RGB"),
        ((64, 64), "L"),
        ((2000, 500), "RGBA"),
        ((33, 1000), "P"),
        ((1120, 1120), "RGB"),
    ],
)
def test_load_images_resizes_within_bounds(tmp_path: Path, size: tuple[int, int], mode: str) -> None:
    color = 7 if mode in ("L", "P") else (10, 20, 30, 40)[: len(mode)]
    (tmp_path / "image.png").write_bytes(_png(size, color, mode))
    row = _with(images=["image.png"])
    (example,) = load_examples(_write_jsonl(tmp_path / "data.jsonl", [row]), **BOUNDS)
    (image,) = example.load_images()
    width, height = image.size
    assert image.mode == "RGB"
    assert MIN_PIXELS <= width * height <= MAX_PIXELS
    assert width % 28 == 0 and height % 28 == 0
    # Aspect ratio kept up to the rounding to 28-pixel multiples.
    assert abs(width / height - size[0] / size[1]) <= size[0] / size[1] * 0.5


@pytest.mark.parametrize("image_position", ["first", "last"])
@pytest.mark.parametrize("prompt_format", ["boxed", "answer_tags"])
@pytest.mark.parametrize("task", TASKS)
def test_build_messages_shape(task: str, prompt_format: str, image_position: str) -> None:
    example = Example(
        uid="x",
        task=task,
        question="Which value is largest?",
        answer="3",
        images=(b"first", b"second"),
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
    )
    messages = build_messages(example, prompt_format, image_position)  # type: ignore[arg-type]
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    images, texts = (content[:2], content[2:]) if image_position == "first" else (content[1:], content[:1])
    assert images == [{"type": "image"}, {"type": "image"}]
    assert len(texts) == 1 and texts[0]["type"] == "text"
    text = texts[0]["text"]
    assert text.startswith("Which value is largest?")
    assert "<think> </think>" in text
    if prompt_format == "boxed":
        assert "\\boxed{}" in text and "<answer>" not in text
    else:
        assert "<answer> </answer>" in text and "boxed" not in text

    text_only = build_messages(dataclasses.replace(example, images=()), prompt_format, image_position)  # type: ignore[arg-type]
    assert text_only[0]["content"] == texts


def test_templates_cover_every_task_and_formats_are_checked() -> None:
    assert set(TEMPLATES) == set(TASKS)
    example = Example("x", "math", "q", "a", (), MIN_PIXELS, MAX_PIXELS)
    with pytest.raises(ValueError, match="prompt_format"):
        build_messages(example, "json")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown image_position 'middle'"):
        build_messages(example, "boxed", "middle")  # type: ignore[arg-type]


def test_image_last_puts_the_image_equally_far_from_every_answer(tiny_model_dir: Path) -> None:
    """With ``last`` the tokens between the image and the answer are the same for every task and
    question (what lets one reading head serve every task); with ``first`` they are not."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)

    def after_image(task: str, question: str, position: str) -> str:
        example = Example("x", task, question, "1", (b"png",), MIN_PIXELS, MAX_PIXELS)
        messages = build_messages(example, "boxed", position)  # type: ignore[arg-type]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text.count("<|vision_end|>") == 1
        return text.split("<|vision_end|>")[1]

    pairs = [("ocr", "Transcribe the digits in the image."), ("math", "What is the value of the expression?")]
    assert len({after_image(task, question, "last") for task, question in pairs}) == 1
    assert after_image("ocr", "q", "last") == "<|im_end|>\n<|im_start|>assistant\n"
    assert len({after_image(task, question, "first") for task, question in pairs}) == 2


def test_processor_sees_the_loaded_pixels_unchanged(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The chat template renders one vision block per image, and the processor (same pixel
    bounds) keeps the sizes `load_images` chose: one 14x14 patch grid per 28-multiple side."""
    from transformers import AutoProcessor

    from tiny_r1v.models.tiny import MAX_PIXELS as PROCESSOR_MAX
    from tiny_r1v.models.tiny import MIN_PIXELS as PROCESSOR_MIN

    (tmp_path / "wide.png").write_bytes(_png((300, 70)))
    (tmp_path / "small.png").write_bytes(_png((20, 20)))
    row = _with(images=["wide.png", "small.png"], task="chart")
    path = _write_jsonl(tmp_path / "data.jsonl", [row])
    (example,) = load_examples(path, min_pixels=PROCESSOR_MIN, max_pixels=PROCESSOR_MAX)
    images = example.load_images()

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    prompt = processor.apply_chat_template(build_messages(example, "boxed"), add_generation_prompt=True, tokenize=False)
    assert prompt.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert prompt.endswith("<|im_start|>assistant\n")
    inputs = processor(text=[prompt], images=images, return_tensors="pt")
    grids = [tuple(grid) for grid in inputs["image_grid_thw"].tolist()]
    assert grids == [(1, image.height // 14, image.width // 14) for image in images]
