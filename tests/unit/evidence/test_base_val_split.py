"""The base's validation split: a seeded move of train rows into val.jsonl that a killed build
finishes when run again, and never lets a row sit in both files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny_r1v.evidence.base import split_val


def _write_train(directory: Path, rows: int) -> list[str]:
    lines = [
        json.dumps({"id": f"r{i}", "task": "ocr", "question": "q", "answer": str(i), "images": []}) + "\n"
        for i in range(rows)
    ]
    (directory / "train.jsonl").write_text("".join(lines))
    return lines


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_split_moves_a_seeded_choice_and_is_idempotent(tmp_path: Path) -> None:
    lines = _write_train(tmp_path, 20)
    split_val(tmp_path, 5, seed=3)
    train, val = _ids(tmp_path / "train.jsonl"), _ids(tmp_path / "val.jsonl")
    assert len(val) == 5 and len(train) == 15 and not set(train) & set(val)
    # the union is the original file, each part in its original order
    assert sorted(train + val, key=lambda uid: int(uid[1:])) == [f"r{i}" for i in range(20)]
    assert train == sorted(train, key=lambda uid: int(uid[1:])) and val == sorted(val, key=lambda uid: int(uid[1:]))
    before = {name: (tmp_path / name).read_bytes() for name in ("train.jsonl", "val.jsonl")}
    split_val(tmp_path, 5, seed=3)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    # another seed chooses other rows
    other = tmp_path / "other"
    other.mkdir()
    (other / "train.jsonl").write_text("".join(lines))
    split_val(other, 5, seed=4)
    assert _ids(other / "val.jsonl") != val


def test_a_build_killed_between_the_renames_finishes_the_split(tmp_path: Path) -> None:
    _write_train(tmp_path, 12)
    split_val(tmp_path, 4, seed=0)
    expected = {name: (tmp_path / name).read_bytes() for name in ("train.jsonl", "val.jsonl")}
    # the state after val.jsonl was renamed into place but before train.jsonl was rewritten
    _write_train(tmp_path, 12)
    split_val(tmp_path, 4, seed=0)
    assert {name: (tmp_path / name).read_bytes() for name in expected} == expected
    assert not list(tmp_path.glob("*.tmp"))


def test_too_few_rows_is_refused_naming_the_file(tmp_path: Path) -> None:
    _write_train(tmp_path, 3)
    with pytest.raises(ValueError, match=r"train\.jsonl: 3 rows cannot spare 3"):
        split_val(tmp_path, 3, seed=0)
    assert not (tmp_path / "val.jsonl").exists()


def test_a_base_whose_warm_start_saw_every_train_row_is_refused(tmp_path: Path, capsys) -> None:
    """A base directory written before the validation split: moving rows to val.jsonl now would
    make a split the warm model was trained on."""
    from tiny_r1v.evidence.base import TESTBED_KINDS, main

    for task in TESTBED_KINDS:
        (tmp_path / "data" / task).mkdir(parents=True)
        _write_train(tmp_path / "data" / task, 10)
        (tmp_path / "data" / task / "test.jsonl").write_text("")
    (tmp_path / "warm-model").mkdir()
    (tmp_path / "warm-model" / "config.json").write_text("{}")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as info:
        main(["--out", str(tmp_path)])
    assert "math: no val.jsonl, but" in str(info.value.code) and "build the base in a new --out" in str(info.value.code)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
