"""The recipe's pure parts: its config rules, the stage configs it derives, the λ choice and the
table's figures recounted by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import ROOT

from tiny_r1v.config import ConfigError, load_config
from tiny_r1v.eval.metrics import Summary
from tiny_r1v.evidence import recipe
from tiny_r1v.evidence.base import BaseConfig
from tiny_r1v.evidence.recipe_report import read_rows, summarize, write_report

EXPERTS = {"math": "m", "ocr": "o"}


def _cfg(*overrides: str) -> recipe.RecipeConfig:
    return load_config(recipe.RecipeConfig, ROOT / "configs" / "recipe.yaml", overrides)


def test_shipped_config_loads_and_every_stage_config_checks() -> None:
    cfg = _cfg()
    recipe.check(cfg)  # every training and merge config of every seed loads
    assert [m.name for m in cfg.merges][:1] == ["task_arithmetic"] and cfg.mixture
    # The shipped recipe builds the base the evidence docs describe: `python -m tiny_r1v.evidence.base`'s.
    assert cfg.base == BaseConfig()


def test_mixture_sees_every_task_and_as_many_samples_as_the_experts() -> None:
    cfg = _cfg("seeds=[7]")
    mixture = recipe.training_config(cfg, 7, recipe.MIXTURE)
    expert = recipe.training_config(cfg, 7, "ocr")
    assert mixture.data.task == "mixed" and mixture.trainer.total_steps == 3 * expert.trainer.total_steps
    assert mixture.data.image_position == expert.data.image_position == cfg.base.image_position
    assert [Path(f).parent.name for f in mixture.data.train_files] == ["math", "chart", "ocr"]
    assert all(Path(f).name == "val.jsonl" for f in (*mixture.data.val_files, *expert.data.val_files))
    assert (expert.data.task, expert.data.seed, expert.rollout.seed, expert.trainer.seed) == ("ocr", 7, 7, 7)
    assert Path(expert.trainer.output_dir, expert.trainer.experiment_name) == Path("outputs/recipe/seed-7/runs/ocr")
    assert expert.model.path == "outputs/evidence/warm-model"


def test_choose_makes_one_candidate_per_entry_and_the_best_wins_ties_to_the_first() -> None:
    spec = recipe.MergeSpec(
        "ta", "task_arithmetic", ("vision=base",), ("task_arithmetic.lam=0.1", "task_arithmetic.lam=0.5")
    )
    assert recipe.candidates(spec) == [
        ("ta-0", ("vision=base", "task_arithmetic.lam=0.1")),
        ("ta-1", ("vision=base", "task_arithmetic.lam=0.5")),
    ]
    assert recipe.candidates(recipe.MergeSpec("x", "amm")) == [("x", ())]
    assert recipe.choose_best({"a": 0.5, "b": 0.7, "c": 0.7}, ["a", "b", "c"]) == "b"
    merge = recipe.merge_config(_cfg(), 1, spec, "ta-1", recipe.candidates(spec)[1][1])
    assert (merge.method, merge.task_arithmetic.lam, merge.vision) == ("task_arithmetic", 0.5, "base")
    assert Path(merge.output) == (Path("outputs/recipe/seed-1/merges/ta-1")).absolute()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seeds=[1,1]", "seeds: must be unique"),
        ("eval_samples=-1", "eval_samples: must be >= 0"),
        ("expert_steps=0", "expert_steps: must be > 0"),
        ("experts=[{name: a, task: vqa}]", "experts[0].task: must be a testbed task"),
        ("merges=[{name: math, method: amm}]", "merges: expert and merge names must be unique"),
        ("merges=[{name: x, method: amm, choose: [lam]}]", "merges[0].overrides: 'lam': expected key.sub=value"),
        ("base.val_rows=0", "base.val_rows: the recipe chooses on the validation split"),
    ],
)
def test_bad_settings_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _cfg(override)


def _row(model: str, task: str, accuracy: float, tokens: float) -> Summary:
    return Summary(model, task, 4, accuracy, accuracy, 1.0, tokens, tokens, 0.0)


def _seed(merged_math: float) -> list[Summary]:
    return [
        _row("m", "math", 0.8, 20),
        _row("m", "ocr", 0.1, 30),
        _row("o", "math", 0.2, 40),
        _row("o", "ocr", 0.5, 10),
        _row("merged", "math", merged_math, 10),
        _row("merged", "ocr", 0.25, 20),
    ]


def test_table_figures_recounted_by_hand(tmp_path: Path) -> None:
    rows = {row.model: row for row in summarize({1: _seed(0.4), 2: _seed(0.6)}, EXPERTS)}
    merged = rows["merged"]
    assert merged.accuracy["math"].mean == pytest.approx(0.5)
    assert merged.accuracy["math"].std == pytest.approx(math.sqrt(0.02))  # sample std of 0.4, 0.6
    # normalised: seed 1 (0.4/0.8 + 0.25/0.5) / 2 = 0.5, seed 2 (0.6/0.8 + 0.5) / 2 = 0.625
    assert merged.normalized_accuracy.mean == pytest.approx(0.5625)
    assert merged.average_accuracy.mean == pytest.approx((0.325 + 0.425) / 2)
    assert merged.average_tokens.mean == 15 and merged.average_tokens.std == 0
    assert rows["m"].normalized_accuracy.mean == pytest.approx((1 + 0.1 / 0.5) / 2)

    files = write_report(tmp_path / "one", {1: _seed(0.4)}, EXPERTS, "Decoding: greedy.")
    assert read_rows(tmp_path / "one") == _seed(0.4)
    assert "Decoding: greedy." in files[0].read_text()
    assert "| merged | 40.0 | 10.0 | 25.0 | 20.0 | 32.5 | 15.0 | 50.0 |" in files[0].read_text()
    assert json.loads(files[2].read_text())["table"][2]["model"] == "merged"


def test_an_expert_scoring_zero_leaves_the_normalised_score_undefined(tmp_path: Path) -> None:
    rows = [_row("m", "math", 0.0, 5), _row("m", "ocr", 0.1, 5), _row("o", "math", 0.1, 5), _row("o", "ocr", 0.5, 5)]
    (m, _) = summarize({1: rows}, EXPERTS)
    assert math.isnan(m.normalized_accuracy.mean)
    files = write_report(tmp_path, {1: rows}, EXPERTS, "Decoding: greedy.")
    assert json.loads(files[2].read_text())["table"][0]["normalized_accuracy"] is None
    assert "| n/a |" in files[0].read_text()
