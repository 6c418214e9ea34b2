"""The recipe pipeline end to end on the tiny model: two experts (math's binary reward, OCR's
continuous one) and the mixture (1 step each per task), a task-arithmetic λ chosen on the
validation split and an AMM merge, evaluation of every model on the test splits and the report;
then the same pipeline again, which repeats nothing."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from helpers import ROOT, launcher, snapshot

from tiny_r1v.config import TrainConfig, load_config
from tiny_r1v.data import convert
from tiny_r1v.eval import EvalConfig
from tiny_r1v.evidence import recipe
from tiny_r1v.evidence.base import TESTBED_KINDS, split_val
from tiny_r1v.evidence.recipe_report import REPORT_FILES
from tiny_r1v.evidence.sweep import finished

pytestmark = pytest.mark.vllm

# The third expert (chart) trains and evaluates as these do: left out, it saves a run's start-up.
EXPERTS = ("math", "ocr")

TRAINING = [
    "rollout.n=2",
    "rollout.max_response_length=8",
    "learner.num_workers=1",
    "learner.global_batch_size=2",
    "learner.micro_batch_size=4",
    "trainer.rollout_batch_size=2",
    "trainer.save_freq=1",
    "trainer.loggers=[jsonl]",
]


def write_base(base: Path, model_dir: Path) -> None:
    """The layout `python -m tiny_r1v.evidence.base` writes, on a few testbed rows and the tiny model."""
    for task in EXPERTS:
        kind = TESTBED_KINDS[task]
        for split, rows in (("train", 6), ("test", 2)):
            convert.main([kind, "--split", split, "--limit", str(rows), "--out", str(base / "data" / task)])
        split_val(base / "data" / task, 2, seed=0)
    shutil.copytree(model_dir, base / "warm-model")


def write_recipe(tmp: Path) -> Path:
    config = {
        "output_dir": str(tmp / "recipe"),
        "base_dir": str(tmp / "base"),
        "train_config": str(ROOT / "configs" / "quickstart.yaml"),
        "train_overrides": TRAINING,
        "expert_steps": 1,
        "experts": [{"name": task, "task": task} for task in EXPERTS],
        "merge_config": str(ROOT / "configs" / "amm.yaml"),
        "merge_overrides": ["device=cpu", "hash_inputs=false", "amm.steps=2"],
        "merges": [
            {
                "name": "task_arithmetic",
                "method": "task_arithmetic",
                "choose": ["task_arithmetic.lam=0.3", "task_arithmetic.lam=1.0"],
            },
            {"name": "amm", "method": "amm", "overrides": ["amm.alpha=uniform"]},
        ],
        "seeds": [1],
        "eval_samples": 2,
    }
    path = tmp / "recipe.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def test_pipeline_reaches_the_report_and_a_second_run_repeats_no_stage(ray_local, tiny_model_dir, tmp_path, caplog):
    write_base(tmp_path / "base", tiny_model_dir)
    cfg = load_config(recipe.RecipeConfig, write_recipe(tmp_path))
    recipe.check(cfg)
    caplog.set_level(logging.INFO, logger="tiny_r1v")

    paths = recipe.run_recipe(cfg)
    seed = tmp_path / "recipe" / "seed-1"
    assert [p.name for p in paths] == list(REPORT_FILES) and all(p.parent == seed / "report" for p in paths)
    table = json.loads((seed / "report" / "recipe.json").read_text())["table"]
    assert [row["model"] for row in table] == ["base", *EXPERTS, "mixture", "task_arithmetic", "amm"]
    for row in table:
        assert {f"{t}/accuracy" for t in EXPERTS} <= set(row) and 0 <= row["average_accuracy"] <= 1
    # Sampled as the rollouts sample, for the table and the choice alike.
    assert "2 samples" in (seed / "report" / "recipe.md").read_text()
    temperature = load_config(TrainConfig, seed / "runs" / "math" / "config.yaml").rollout.temperature
    for name in ("eval.yaml", "eval-val-task_arithmetic.yaml"):
        decoding = load_config(EvalConfig, seed / "configs" / name).decoding
        assert (decoding.n, decoding.temperature) == (2, temperature) and temperature > 0
    # Each expert's own task normalises to 1 (unless it scores 0 there, which leaves it undefined).
    math = next(row for row in table if row["model"] == "math")
    assert math["math/accuracy"] == 0 or math["normalized_accuracy"] is not None

    # Stages wrote what a user would run alone: training runs, merges with provenance, configs.
    mixture = load_config(TrainConfig, seed / "runs" / "mixture" / "config.yaml")
    assert (mixture.data.task, mixture.trainer.total_steps, len(mixture.data.train_files)) == ("mixed", 2, 2)
    for name in EXPERTS:
        assert finished(seed / "runs" / name, 1)
    choice = json.loads((seed / recipe.CHOICES_FILE).read_text())["task_arithmetic"]
    assert choice["chosen"] in ("task_arithmetic-0", "task_arithmetic-1")
    assert set(choice["val_accuracy"]) == {"task_arithmetic-0", "task_arithmetic-1"}
    for merge in ("task_arithmetic-0", "task_arithmetic-1", "amm"):
        assert (seed / "merges" / merge / "merge_provenance.json").is_file()
    assert sorted(p.name for p in (seed / "configs").iterdir()) == sorted(
        [f"train-{n}.yaml" for n in (*EXPERTS, "mixture")]
        + [f"merge-{m}.yaml" for m in ("task_arithmetic-0", "task_arithmetic-1", "amm")]
        + ["eval.yaml", "eval-val-task_arithmetic.yaml"]
    )
    # The test split is used only by the final evaluation, the validation split only for the choice.
    val_samples = {p.stem for p in (seed / "eval-val" / "samples").rglob("*.jsonl")}
    assert val_samples == set(EXPERTS)
    evaluated = {p.parent.name for p in (seed / "eval" / "samples").rglob("*.jsonl")}
    assert evaluated == {"base", *EXPERTS, "mixture", "task_arithmetic", "amm"}

    stages = [seed / "runs", seed / "merges", seed / "eval" / "samples", seed / "eval-val" / "samples"]
    before = snapshot(*stages)
    caplog.clear()
    recipe.run_recipe(cfg)
    assert snapshot(*stages) == before
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage() or "reused" in r.getMessage()]
    assert sum("trained earlier" in m for m in skipped) == len(EXPERTS) + 1
    assert sum("done earlier" in m for m in skipped) == 3
    assert not [r for r in caplog.records if "starting an engine" in r.getMessage()]


def test_launcher_names_a_bad_merge_override_before_ray(tmp_path, capsys):
    path = write_recipe(tmp_path)
    code = launcher("recipe").main(
        ["--config", str(path), 'merges=[{name: x, method: amm, overrides: ["amm.bogus=1"]}]']
    )
    assert code == 2
    assert "seed 1 merge x: amm.bogus" in capsys.readouterr().err
