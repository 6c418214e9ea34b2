"""The base's models: the tiny model with the configured rotary base, the reading stage on the
OCR and math rows without fillers, the mixture stage from its result, each built once."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tiny_r1v.data import convert
from tiny_r1v.evidence.base import TESTBED_KINDS, BaseConfig, build_models

TINY = BaseConfig(
    train_rows=12, val_rows=4, reading_steps=2, warm_start_steps=(2, 1), reading_lr=2e-3, mrope_section=(2, 2, 28)
)


def _testbed(out: Path) -> None:
    """A few rows per task and split (the build converts only what is missing)."""
    for task, kind in TESTBED_KINDS.items():
        options = TINY.converter_args(task)
        for split, rows in (("train", TINY.train_rows), ("test", 4)):
            convert.main([kind, "--split", split, "--out", str(out / "data" / task), "--limit", str(rows), *options])


def _log(model: Path) -> dict:
    return json.loads((model / "warm_start.json").read_text())


def test_reading_then_mixture_each_built_once(tmp_path: Path) -> None:
    _testbed(tmp_path)
    timings = build_models(tmp_path, TINY)
    assert set(timings) == {"reading", "warm_start/1", "warm_start/2"}
    config = json.loads((tmp_path / "base-model" / "config.json").read_text())
    assert config["text_config"]["rope_parameters"]["mrope_section"] == [2, 2, 28]
    train_rows = TINY.train_rows - TINY.val_rows
    reading, first, warm = (_log(tmp_path / name) for name in ("read-model", "warm-model-1", "warm-model"))
    assert reading["source"] == str(tmp_path / "base-model")
    assert reading["examples"] == len(TINY.reading_tasks) * train_rows
    assert (reading["steps"], reading["lr"], reading["max_fillers"]) == (2, TINY.reading_lr, 0)
    assert first["source"] == str(tmp_path / "read-model") and first["examples"] == 3 * train_rows
    assert (first["steps"], first["lr"], first["max_fillers"]) == (2, TINY.warm_start_lr, 6)
    # The second round starts from the first's model, its schedule started again.
    assert warm["source"] == str(tmp_path / "warm-model-1") and warm["examples"] == 3 * train_rows
    assert (warm["steps"], warm["lr"], warm["max_fillers"]) == (1, TINY.warm_start_lr, 6)
    assert reading["image_position"] == warm["image_position"] == TINY.image_position == "last"
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")}
    assert build_models(tmp_path, TINY) == {}
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")} == stamps


def test_no_reading_stage_warms_the_tiny_model(tmp_path: Path) -> None:
    _testbed(tmp_path)
    assert set(build_models(tmp_path, replace(TINY, reading_steps=0, warm_start_steps=(2,)))) == {"warm_start/1"}
    assert _log(tmp_path / "warm-model")["source"] == str(tmp_path / "base-model")
    assert not (tmp_path / "read-model").exists()


def test_no_mixture_round_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    for steps in ((), (2, 0)):
        with pytest.raises(ValueError, match="warm_start_steps"):
            build_models(tmp_path, replace(TINY, warm_start_steps=steps))
    assert not any(tmp_path.iterdir())
