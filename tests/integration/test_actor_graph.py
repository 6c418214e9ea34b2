"""The actor graph end to end on CPU: real Ray, vLLM (CPU backend) and FSDP2 on 2 gloo ranks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import ray
import torch
from PIL import Image
from safetensors.torch import load_file

from tiny_r1v.config import load_config
from tiny_r1v.config.train import TrainConfig
from tiny_r1v.data import load_examples
from tiny_r1v.protocol import Prompt
from tiny_r1v.trainer import checkpoint
from tiny_r1v.trainer.actors import RolloutWorker
from tiny_r1v.trainer.checkpoint import ExistingRunError, run_dir
from tiny_r1v.trainer.driver import Driver

pytestmark = pytest.mark.vllm

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "yellow": (220, 220, 40)}
VAL_METRICS = [
    "val/samples",
    "val/reward/mean",
    "val/reward/accuracy",
    "val/reward/format",
    "val/length/mean",
    "val/length/clip_frac",
    "time/validation",
]
METRICS = [
    "reward/mean",
    "reward/accuracy",
    "reward/format",
    "reward/timeouts",
    "reward/errors",
    "length/mean",
    "length/p50",
    "length/p90",
    "length/clip_frac",
    "lipo/bonus_mean",
    "lipo/boosted_frac",
    "adv/mean",
    "adv/std",
    "adv/max",
    "adv/min",
    "actor/kl",
    "actor/entropy",
    "actor/pg_clipfrac",
    "actor/grad_norm",
    "actor/pg_loss",
    "time/rollout",
    "time/reward",
    "time/learner",
    "time/old_logprob",
    "time/ref_logprob",
    "time/update",
    "time/sync",
    "time/step",
    "perf/tokens_per_s",
    "sync/seconds",
    "sync/bytes",
    "rollout/weight_version",
    "rollout/logprob_diff_mean",
    "rollout/logprob_diff_max",
]


def write_dataset(directory: Path) -> Path:
    (directory / "images").mkdir(parents=True)
    rows = []
    for name, rgb in COLOURS.items():
        Image.new("RGB", (56, 56), rgb).save(directory / "images" / f"{name}.png")
        rows.append(
            {"question": "What colour is the image?", "answer": name, "task": "vqa", "images": [f"images/{name}.png"]}
        )
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def make_config(model_dir: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    settings = {
        "model.path": str(model_dir),
        "data.train_files": f"[{data}]",
        "data.val_files": f"[{data}]",
        "data.task": "vqa",
        "rollout.n": 2,
        "rollout.max_response_length": 12,
        "learner.num_workers": 2,
        "learner.global_batch_size": 2,
        "learner.micro_batch_size": 2,
        "learner.lr": 1e-3,
        "trainer.rollout_batch_size": 4,
        "trainer.total_steps": 3,
        "trainer.save_freq": 1,
        "trainer.save_limit": 2,
        "trainer.val_freq": 2,
        "trainer.val_before_train": "true",
        "trainer.output_dir": str(out),
        "trainer.loggers": "[jsonl, tensorboard]",
        **overrides,
    }
    return load_config(TrainConfig, "configs/quickstart.yaml", [f"{k}={v}" for k, v in settings.items()])


def examples_of(cfg: TrainConfig, files: tuple[str, ...] | None = None):
    return load_examples(
        cfg.data.train_files if files is None else files, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels
    )


def trainer_of(cfg: TrainConfig, resume: bool = False) -> Driver:
    """A driver as launch/lipo.py builds one (the start point resolved first)."""
    examples = examples_of(cfg)
    start = checkpoint.start_point(run_dir(cfg), resume, checkpoint.order_of(cfg, len(examples)))
    return Driver(cfg, examples, examples_of(cfg, cfg.data.val_files), start)


class Interrupted(Exception):
    """Stands for a crash of the driver between two steps."""


@pytest.fixture(scope="module")
def interrupted_run(ray_local, tiny_model_dir, tmp_path_factory):
    """Two steps of a three-step run; the rollout worker is killed after step 1 (Ray restarts
    it) and the driver dies after step 2."""
    tmp = tmp_path_factory.mktemp("trainer")
    cfg = make_config(tiny_model_dir, write_dataset(tmp / "data"), tmp / "out")
    trainer = trainer_of(cfg)

    def faults(trainer: Driver, step: int, metrics: dict) -> None:
        if step == 1:
            ray.kill(trainer.graph.rollouts[0], no_restart=False)
        if step == 2:
            raise Interrupted

    try:
        with pytest.raises(Interrupted):
            trainer.run(on_step_end=faults)
        versions = ray.get([w.weight_version.remote() for w in trainer.graph.rollouts])
    finally:
        trainer.shutdown()
    return cfg, trainer, versions


def read_metrics(cfg: TrainConfig, validation: bool = False) -> list[dict]:
    """The training steps' rows (with `validation`: only the rows with validation metrics)."""
    rows = [json.loads(line) for line in (run_dir(cfg) / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if ("val/samples" if validation else "reward/mean") in row]


def test_iterations_log_every_metric_and_sync_weights(interrupted_run, tiny_model_dir):
    cfg, trainer, versions = interrupted_run
    assert trainer.step == 2 and versions == [2]
    rows = read_metrics(cfg)
    assert [row["step"] for row in rows] == [1, 2]
    for key in METRICS:
        assert all(key in row for row in rows), key
    assert [row["rollout/weight_version"] for row in rows] == [1.0, 2.0]
    assert rows[0]["sync/bytes"] > 0
    # Rollout and learner log-probs of the same tokens under the same float32 weights.
    assert all(row["rollout/logprob_diff_mean"] < 2e-3 and row["rollout/logprob_diff_max"] < 1e-2 for row in rows)
    assert any((run_dir(cfg) / "tensorboard").iterdir())
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(run_dir(cfg) / "checkpoints" / "step-000002" / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])


def test_validation_runs_before_training_every_val_freq_steps_and_at_the_end(interrupted_run):
    cfg, _, _ = interrupted_run
    rows = read_metrics(cfg, validation=True)
    assert [row["step"] for row in rows] == [0, 2]  # the interrupted run: start weights, step 2
    for row in rows:
        assert all(key in row for key in VAL_METRICS)
        assert row["val/samples"] == len(COLOURS)  # one greedy response per validation prompt
        assert 0 <= row["val/reward/accuracy"] <= 1 and 0 <= row["val/reward/format"] <= 1
        assert 0 < row["val/length/mean"] <= cfg.rollout.max_response_length
    assert not any("reward/mean" in row for row in rows)  # validation has rows of its own


def test_killed_rollout_worker_is_restarted_with_current_weights(interrupted_run):
    cfg, _, versions = interrupted_run
    rows = read_metrics(cfg)
    assert rows[0]["rollout/restarts"] == 0
    assert rows[1]["rollout/restarts"] >= 1  # step 2 found it restarted on the start weights
    assert versions == [2]


def test_a_new_run_does_not_write_over_an_earlier_runs_checkpoints(interrupted_run):
    cfg, _, _ = interrupted_run
    with pytest.raises(ExistingRunError, match="pass --resume"):
        trainer_of(cfg)


def test_resume_continues_without_repeating_or_losing_steps(interrupted_run):
    cfg, _, _ = interrupted_run
    # The step-2 validation was cut short (it runs after step 2's checkpoint): the resumed run
    # runs it again first.
    path = run_dir(cfg) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows if row != read_metrics(cfg, validation=True)[-1]))
    assert [row["step"] for row in read_metrics(cfg, validation=True)] == [0]
    trainer = trainer_of(cfg, resume=True)
    try:
        assert trainer.step == 2 and trainer.weights.version == 2
        # Built from the configured model (what Ray rebuilds a restarted worker from), then
        # loaded with the checkpoint's weights.
        assert ray.get([w.weight_version.remote() for w in trainer.graph.rollouts]) == [2]
        trainer.run()
        versions = ray.get([w.weight_version.remote() for w in trainer.graph.rollouts])
    finally:
        trainer.shutdown()
    assert trainer.step == 3 and versions == [3]
    assert [row["step"] for row in read_metrics(cfg)] == [1, 2, 3]
    assert read_metrics(cfg)[-1]["rollout/restarts"] == 0
    assert [row["step"] for row in read_metrics(cfg, validation=True)] == [0, 2, 3]
    checkpoints = sorted(p.name for p in (run_dir(cfg) / "checkpoints").iterdir())
    assert checkpoints == ["step-000002", "step-000003"]  # save_limit 2


def test_checkpoint_loads_in_transformers_and_vllm(interrupted_run):
    cfg, _, _ = interrupted_run
    final = run_dir(cfg) / "checkpoints" / "step-000002" / "model"
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    Qwen2_5_VLForConditionalGeneration.from_pretrained(final)
    processor = AutoProcessor.from_pretrained(final)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
        add_generation_prompt=True,
    )
    worker = ray.remote(RolloutWorker).remote(replace(cfg, model=replace(cfg.model, path=str(final))))
    completions = ray.get(worker.generate.remote([Prompt("x", text, (Image.new("RGB", (56, 56)),))], 0, 0))
    assert len(completions) == cfg.rollout.n and all(c.token_ids for c in completions)
    ray.kill(worker)
