"""What counts as a model directory and a complete checkpoint (`tiny_r1v.trainer.checkpoint`), the
same for the merge and evaluation: the newest complete checkpoint is chosen, a damaged newer one
is passed over, and a directory without its weights is refused naming what is missing."""

from __future__ import annotations

import json
import re

import pytest
from helpers import fill_checkpoint, stand_in_model
from safetensors.torch import save_file

from tiny_r1v.config import ConfigError, ModelRef, load_config
from tiny_r1v.eval import EvalConfig, EvalError
from tiny_r1v.eval.inputs import resolve_models
from tiny_r1v.merge import MergeConfig, MergeError
from tiny_r1v.merge.sources import resolve
from tiny_r1v.trainer import checkpoint
from tiny_r1v.trainer.checkpoint import CheckpointError, checkpoint_problems, resolve_model_dir


def complete_step(run, step: int, ranks: int = 1):
    path = checkpoint.checkpoint_root(run) / f"step-{step:06d}"
    stand_in_model(fill_checkpoint(path) / "model")
    for rank in range(1, ranks):
        save_file({}, path / "optim" / f"rank-{rank}.safetensors")
    (path / checkpoint.STATE_FILE).write_text(json.dumps({"step": step, "weight_version": step, "order": {}}))
    return path


def test_the_last_ranks_missing_shard_counts_when_the_state_names_the_ranks(tmp_path):
    path = complete_step(tmp_path, 2, ranks=3)
    state = {"step": 2, "weight_version": 2, "order": {"learner.num_workers": 3}}
    (path / checkpoint.STATE_FILE).write_text(json.dumps(state))
    assert checkpoint_problems(path) == []
    (path / "optim" / "rank-2.safetensors").unlink()
    assert checkpoint_problems(path) == ["no optim/rank-2.safetensors"]


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda p: (p / "model" / "model.safetensors").unlink(), "model/: no weights"),
        (lambda p: (p / "model" / "config.json").unlink(), "model/: no config.json"),
        (lambda p: (p / "optim" / "rank-1.safetensors").unlink(), "no optim/rank-1.safetensors"),
        (lambda p: [f.unlink() for f in (p / "optim").iterdir()], "no optimizer shard"),
        (lambda p: (p / checkpoint.STATE_FILE).write_text('{"step": 3'), "trainer_state.json does not parse"),
    ],
    ids=["weights", "config", "optim-gap", "optim", "state"],
)
def test_a_damaged_newest_checkpoint_is_passed_over_for_the_previous_complete_one(tmp_path, damage, problem):
    older, newer = complete_step(tmp_path, 2, ranks=3), complete_step(tmp_path, 3, ranks=3)
    assert checkpoint.latest(tmp_path)[0] == newer
    damage(newer)
    assert any(problem in line for line in checkpoint_problems(newer)), checkpoint_problems(newer)
    assert checkpoint.complete_checkpoints(checkpoint.checkpoint_root(tmp_path)) == [older]
    assert checkpoint.latest(tmp_path) == (older, checkpoint.TrainerState(2, 2, {}))
    assert resolve_model_dir(tmp_path, None, "expert 'x'") == (older / "model").resolve()
    listed = rf"(?s)a complete checkpoint step 3 under checkpoints/\n  step-000003: .*{re.escape(problem)}"
    with pytest.raises(CheckpointError, match=listed):
        resolve_model_dir(tmp_path, 3, "expert 'x'")


def test_publish_keeps_the_last_complete_checkpoints_and_never_a_damaged_one_in_their_place(tmp_path):
    for step in (1, 2):
        complete_step(tmp_path, step)
    (checkpoint.checkpoint_root(tmp_path) / "step-000002" / "optim" / "rank-0.safetensors").unlink()
    staging = checkpoint.staging_dir(tmp_path, 3)
    stand_in_model(fill_checkpoint(staging) / "model")
    checkpoint.publish(staging, checkpoint.TrainerState(3, 3, {}), keep=2)
    # Step 2 is damaged: step 1 is still one of the last two complete checkpoints.
    names = [p.name for p in checkpoint.complete_checkpoints(checkpoint.checkpoint_root(tmp_path))]
    assert names == ["step-000001", "step-000003"]


@pytest.mark.parametrize(
    "build, missing",
    [
        (lambda d: (d / "config.json").write_text("{}"), "no weights (no *.safetensors file"),
        (lambda d: save_file({}, d / "model.safetensors"), "no config.json"),
        (
            lambda d: [
                (d / "config.json").write_text("{}"),
                (d / checkpoint.WEIGHTS_INDEX).write_text(json.dumps({"weight_map": {"w": "model-2.safetensors"}})),
            ],
            "shard files listed in model.safetensors.index.json are missing: model-2.safetensors",
        ),
    ],
    ids=["no-weights", "no-config", "missing-shard"],
)
def test_an_incomplete_model_directory_is_named_with_what_it_lacks_for_merge_and_eval(tmp_path, build, missing):
    model = tmp_path / "m"
    model.mkdir()
    build(model)
    with pytest.raises(CheckpointError, match=f"model directory {model} is incomplete: .*{re.escape(missing)}"):
        resolve_model_dir(model, None, "x")
    cfg = load_config(MergeConfig, None, [f"base={model}"])
    with pytest.raises(MergeError, match=f"base: model directory {model} is incomplete: .*{re.escape(missing)}"):
        resolve(cfg, [str(stand_in_model(tmp_path / "e"))])
    with pytest.raises(EvalError, match=f"model 'm': model directory {model} is incomplete: .*{re.escape(missing)}"):
        resolve_models(load_config(EvalConfig, None), [f"m={model}"])


@pytest.mark.parametrize("label", ["", " a", "a,b", "a=b", "a/b", "a\\b"])
def test_merge_and_eval_share_one_model_reference_with_the_same_label_rules(label):
    for cls, key in ((MergeConfig, "experts"), (EvalConfig, "models")):
        with pytest.raises(ConfigError, match=rf"{key}\[0\]\.name: must be a non-empty label"):
            load_config(cls, None, ["base=b", f"{key}=[{{name: {json.dumps(label)}, path: x}}]"][cls is EvalConfig :])
    with pytest.raises(ConfigError, match=r"step: must be >= 0"):
        ModelRef("a", "x", -1).validate()
    assert load_config(MergeConfig, None, ["base=b", "experts=[{name: a, path: x}]"]).experts == (ModelRef("a", "x"),)
