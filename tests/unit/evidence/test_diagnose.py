"""The base diagnostic: its distances by hand, and one run on the tiny model whose counts are
recounted from the data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tiny_r1v.data import Example, convert
from tiny_r1v.evidence.base import BaseConfig, split_val
from tiny_r1v.evidence.diagnose import diagnose, first_digit_accuracy, mean_pairwise_tv, total_variation


def test_distances_by_hand() -> None:
    p, q, r = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.0, 0.5, 0.5]), torch.tensor([0.5, 0.5, 0.0])
    assert total_variation(p, q) == pytest.approx(0.5)
    assert total_variation(p, r) == 0.0
    assert mean_pairwise_tv([p, q, r]) == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    with pytest.raises(ValueError, match="at least two"):
        mean_pairwise_tv([p])


def test_first_digit_accuracy_by_hand() -> None:
    rows = [
        Example(uid=str(i), task="ocr", question="q", answer=answer, images=(), min_pixels=1, max_pixels=1)
        for i, answer in enumerate(("31", "70", "5"))
    ]
    one_hot = [torch.nn.functional.one_hot(torch.tensor(d), 10).float() for d in (3, 1, 5)]
    assert first_digit_accuracy(one_hot, rows) == pytest.approx(2 / 3)


def test_diagnose_on_the_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    ocr, math = tmp_path / "data" / "ocr", tmp_path / "data" / "math"
    images = BaseConfig().digit_image_args()  # as the base builds them: diagnose reads them with its bounds
    for kind, out, rows, val in (("tb-ocr", ocr, 12, 4), ("tb-math", math, 6, 3)):
        convert.main([kind, "--split", "train", "--limit", str(rows), "--out", str(out), *images])
        split_val(out, val, seed=0)
    shutil.copytree(tiny_model_dir, tmp_path / "warm-model")
    report = diagnose(tmp_path, "warm-model", rows=8)
    val_digits = sum(len(json.loads(line)["answer"]) for line in (ocr / "val.jsonl").read_text().splitlines())
    assert (report["val_images"], report["probe_val_digits"]) == (4, val_digits)
    assert 0 <= report["probe_val_accuracy"] <= 1 and 0 <= report["first_digit_accuracy"] <= 1
    assert 0 <= report["first_digit_accuracy_train"] <= 1
    config = json.loads((tiny_model_dir / "config.json").read_text())["text_config"]
    layers, heads = range(config["num_hidden_layers"]), range(config["num_attention_heads"])
    assert list(report["image_attention"]) == [f"layer{layer}/head{head}" for layer in layers for head in heads]
    for shares in report["image_attention"].values():
        assert 0 < shares["image"] <= 1 + 1e-6
        assert 0 <= shares["first_cell"] and 0 <= shares["blank_cells"]
        assert shares["first_cell"] + shares["blank_cells"] <= 1 + 1e-6  # disjoint cells
    assert 0 <= report["first_digit_mean_pairwise_tv"] <= 1
    for task, key in (("ocr", "reading_accuracy"), ("math", "math_reading_accuracy")):
        readings = [json.loads(line)["rationale"] for line in (tmp_path / "data" / task / "val.jsonl").open()]
        assert len(report[key]) == max(map(len, readings))
        for k, share in enumerate(report[key]):  # a share of the rows whose reading has a character k
            rows = sum(len(reading) > k for reading in readings)
            assert 0 <= share <= 1 and (share * rows) == pytest.approx(round(share * rows))
