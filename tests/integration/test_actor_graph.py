"""The actor graph end to end on CPU: real Ray, vLLM (CPU backend) and FSDP2 on 2 gloo ranks."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import ANY

import pytest
import ray
import torch
from helpers import engine_parameters, vllm_tensor
from PIL import Image
from safetensors.torch import load_file

from tiny_r1v.config import load_config
from tiny_r1v.config.train import TrainConfig
from tiny_r1v.data import load_examples
from tiny_r1v.protocol import Prompt
from tiny_r1v.trainer import checkpoint
from tiny_r1v.trainer.checkpoint import ExistingRunError, run_dir
from tiny_r1v.trainer.driver import Driver
from tiny_r1v.trainer.sampler import step_indices

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
    "actor/lr",
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


AfterCall = Callable[[object, str, tuple, object], None]


class _Recorded:
    """An actor handle whose calls are written to a shared list as the driver submits them (the
    real actor runs each one); `after(handle, method, args, ref)` runs after each submission."""

    def __init__(self, handle, name: str, calls: list, after: AfterCall | None) -> None:
        self.handle, self.name, self.calls, self.after = handle, name, calls, after

    def __getattr__(self, method: str):
        def remote(*args):
            self.calls.append((self.name, method, _summary(method, args)))
            ref = getattr(self.handle, method).remote(*args)
            if self.after is not None:
                self.after(self.handle, method, args, ref)
            return ref

        return SimpleNamespace(remote=remote)


def _summary(method: str, args: tuple) -> tuple:
    """What identifies a call's input (temporary paths and tensors left out)."""
    if method == "generate":
        prompts, seed, first_slot, *greedy = args
        return (tuple(p.uid for p in prompts), seed, first_slot, *greedy)
    if method in ("load_weights", "receive_weights"):
        return (args[1],)
    if method == "train_step":
        return (args[1], tuple((s.prompt.uid, len(s.response_ids)) for s in args[0]))
    if method in ("score", "validation_metrics"):
        return tuple(c.uid for c in args[0])
    return ()


def record_calls(trainer: Driver, after: AfterCall | None = None) -> tuple[list, Callable[[], None]]:
    """Record every actor call of `trainer` from now on; returns the list and what undoes it."""
    graph, calls = trainer.graph, []
    originals = list(graph.rollouts), list(graph.learners), graph.scorer
    graph.rollouts[:] = [_Recorded(h, f"rollout{i}", calls, after) for i, h in enumerate(originals[0])]
    graph.learners[:] = [_Recorded(h, f"learner{i}", calls, after) for i, h in enumerate(originals[1])]
    graph.scorer = _Recorded(originals[2], "scorer", calls, after)

    def undo() -> None:
        graph.rollouts[:], graph.learners[:], graph.scorer = originals

    return calls, undo


def strict_step_calls(step: int, batch: int, n: int, uids: list[str], version: int) -> list[tuple]:
    """The calls of one strict step (one rollout worker, two learner ranks, a checkpoint)."""
    prompts = tuple(f"{step}:{slot}:{uid}" for slot, uid in enumerate(uids))
    completions = tuple(uid for uid in prompts for _ in range(n))
    return [
        ("rollout0", "generate", (prompts, 1, step * batch, False)),
        ("scorer", "score", completions),
        *[("learner" + str(rank), "train_step", (step, ANY)) for rank in range(2)],
        ("learner0", "packed_weights", ()),
        ("learner1", "packed_weights", ()),
        ("rollout0", "load_weights", (version,)),
        ("learner0", "save", ()),
        ("learner1", "save", ()),
    ]


@pytest.fixture(scope="module")
def interrupted_run(ray_local, tiny_model_dir, tmp_path_factory):
    """Two steps of a three-step run; the rollout worker is killed after step 1 (Ray restarts
    it) and the driver dies after step 2."""
    tmp = tmp_path_factory.mktemp("trainer")
    cfg = make_config(tiny_model_dir, write_dataset(tmp / "data"), tmp / "out")
    trainer = trainer_of(cfg)
    calls, undo = record_calls(trainer)
    first_step: list[tuple] = []

    def faults(trainer: Driver, step: int, metrics: dict) -> None:
        if step == 1:
            # Up to here the calls are deterministic; the restart's retries are not.
            first_step.extend(calls)
            undo()
            ray.kill(trainer.graph.rollouts[0], no_restart=False)
        if step == 2:
            raise Interrupted

    try:
        with pytest.raises(Interrupted):
            trainer.run(on_step_end=faults)
        versions = ray.get([w.weight_version.remote() for w in trainer.graph.rollouts])
    finally:
        undo()
        trainer.shutdown()
    return cfg, trainer, versions, first_step


def read_metrics(cfg: TrainConfig, validation: bool = False) -> list[dict]:
    """The training steps' rows (with `validation`: only the rows with validation metrics)."""
    rows = [json.loads(line) for line in (run_dir(cfg) / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if ("val/samples" if validation else "reward/mean") in row]


def test_iterations_log_every_metric_and_sync_weights(interrupted_run, tiny_model_dir):
    cfg, trainer, versions, _ = interrupted_run
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


def test_strict_order_makes_the_same_calls_in_the_same_order(interrupted_run):
    """max_staleness 0: validation of the start weights, then rollout, scoring, learning, sync
    and checkpoint, each waiting for the one before (the order before pipelining existed)."""
    cfg, trainer, _, first_step = interrupted_run
    uids = [trainer.examples[i].uid for i in step_indices(len(trainer.examples), 4, 0, cfg.data.seed)]
    val_uids = tuple(f"val:{i}:{e.uid}" for i, e in enumerate(trainer.val_examples))
    assert first_step == [
        ("rollout0", "generate", (val_uids, 1, 0, True)),
        ("scorer", "validation_metrics", val_uids),
        *strict_step_calls(0, 4, cfg.rollout.n, uids, version=1),
    ]


def test_validation_runs_before_training_every_val_freq_steps_and_at_the_end(interrupted_run):
    cfg, _, _, _ = interrupted_run
    rows = read_metrics(cfg, validation=True)
    assert [row["step"] for row in rows] == [0, 2]  # the interrupted run: start weights, step 2
    for row in rows:
        assert all(key in row for key in VAL_METRICS)
        assert row["val/samples"] == len(COLOURS)  # one greedy response per validation prompt
        assert 0 <= row["val/reward/accuracy"] <= 1 and 0 <= row["val/reward/format"] <= 1
        assert 0 < row["val/length/mean"] <= cfg.rollout.max_response_length
    assert not any("reward/mean" in row for row in rows)  # validation has rows of its own


def test_killed_rollout_worker_is_restarted_with_current_weights(interrupted_run):
    cfg, _, versions, _ = interrupted_run
    rows = read_metrics(cfg)
    assert rows[0]["rollout/restarts"] == 0
    assert rows[1]["rollout/restarts"] >= 1  # step 2 found it restarted on the start weights
    assert versions == [2]


def test_a_new_run_does_not_write_over_an_earlier_runs_checkpoints(interrupted_run):
    cfg, _, _, _ = interrupted_run
    with pytest.raises(ExistingRunError, match="pass --resume"):
        trainer_of(cfg)


def test_resume_continues_without_repeating_or_losing_steps(interrupted_run):
    cfg, _, _, _ = interrupted_run
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


def test_checkpoint_loads_in_transformers_and_vllm(interrupted_run, vllm_engine, tiny_model_dir):
    """The final checkpoint loads in transformers, and its weights in the session's vLLM engine
    (served fresh by vLLM in the recipe test's evaluation)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from tiny_r1v.rollout.engine import RolloutEngine
    from tiny_r1v.trainer.actors import rollout_sampling

    cfg, _, _, _ = interrupted_run
    final = run_dir(cfg) / "checkpoints" / "step-000002" / "model"
    Qwen2_5_VLForConditionalGeneration.from_pretrained(final)
    processor = AutoProcessor.from_pretrained(final)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
        add_generation_prompt=True,
    )
    engine = RolloutEngine(vllm_engine, rollout_sampling(cfg))
    try:
        engine.load_model_dir(str(final))
        completions = engine.generate([Prompt("x", text, (Image.new("RGB", (56, 56)),))], seed=0)
        (loaded,) = vllm_engine.apply_model(
            lambda m: {n: p.detach().clone() for n, p in m.named_parameters() if p.numel()}
        )
    finally:
        engine.load_model_dir(str(tiny_model_dir))  # the session engine's own weights again
    assert len(completions) == cfg.rollout.n and all(c.token_ids for c in completions)
    saved = load_file(final / "model.safetensors")
    assert "language_model.lm_head.weight" in loaded
    for name, tensor in loaded.items():
        assert torch.equal(tensor, vllm_tensor(saved, name)), name


# ---------------------------------------------------------------------- pipelined rollouts


@pytest.fixture(scope="module")
def pipelined_run(ray_local, tiny_model_dir, tmp_path_factory):
    """max_staleness 1 with truncated importance weights, weights synced by the transfer engine:
    three steps of a four-step run. The rollout worker is killed in step 1's sync, once it has
    received version 1 and started step 3's batch (it misses step 2's broadcast, catches up
    through the object store and rejoins a new group); the driver dies after step 3, with step
    4's batch in flight; then the run is resumed to its end."""
    tmp = tmp_path_factory.mktemp("pipelined")
    cfg = make_config(
        tiny_model_dir,
        write_dataset(tmp / "data"),
        tmp / "out",
        **{
            "trainer.max_staleness": 1,
            "algorithm.tis_cap": 2.0,
            "trainer.total_steps": 4,
            "rollout.weight_sync": "transfer_engine",
            "rollout.weight_bucket_mb": 0.0625,  # buckets close inside the larger tensors
            "learner.lr_schedule": "cosine",  # each step's lr shows the step the learners were given
        },
    )
    trainer = trainer_of(cfg)
    loads: list = []

    def kill_during_overlap(handle, method: str, args: tuple, ref) -> None:
        if method == "receive_weights":
            loads.append(ref)
        if method == "generate" and args[2] == 8:  # step 3's batch, queued behind load 1
            ray.get(loads[-1])
            ray.kill(handle, no_restart=False)

    calls, undo = record_calls(trainer, after=kill_during_overlap)
    first_step: list[tuple] = []
    in_flight: list[int] = []

    def faults(trainer: Driver, step: int, metrics: dict) -> None:
        if step == 1:
            first_step.extend(calls)
            undo()
        if step == 3:
            in_flight.extend(trainer._ahead)
            raise Interrupted

    try:
        with pytest.raises(Interrupted):
            trainer.run(on_step_end=faults)
    finally:
        undo()
        trainer.shutdown()
    interrupted = read_metrics(cfg)
    resumed = trainer_of(cfg, resume=True)
    try:
        resumed_at = resumed.step
        resumed.run()
        versions = ray.get([w.weight_version.remote() for w in resumed.graph.rollouts])
        engine = engine_parameters(resumed.graph.rollouts[0])
    finally:
        resumed.shutdown()
    return cfg, trainer, first_step, in_flight, interrupted, resumed_at, (versions, engine)


def test_pipelined_rollouts_are_requested_before_the_update_they_overlap(pipelined_run):
    """The next step's rollout is requested before this step trains, and the one after right
    after the weight load it must follow."""
    cfg, trainer, first_step, _, _, _, _ = pipelined_run
    val_uids = tuple(f"val:{i}:{e.uid}" for i, e in enumerate(trainer.val_examples))
    prompts = [
        tuple(f"{step}:{slot}:{trainer.examples[i].uid}" for slot, i in enumerate(step_indices(4, 4, step, 1)))
        for step in range(3)
    ]
    n = cfg.rollout.n
    assert first_step == [
        ("rollout0", "generate", (val_uids, 1, 0, True)),
        ("scorer", "validation_metrics", val_uids),
        ("rollout0", "generate", (prompts[0], 1, 0, False)),
        ("rollout0", "generate", (prompts[1], 1, 4, False)),
        ("scorer", "score", tuple(uid for uid in prompts[0] for _ in range(n))),
        ("learner0", "train_step", (0, ANY)),
        ("learner1", "train_step", (0, ANY)),
        ("learner0", "transfer_address", ()),
        ("learner0", "join_transfer", ()),
        ("rollout0", "join_transfer", ()),
        ("learner0", "update_info", ()),
        ("learner0", "send_weights", ()),
        ("learner1", "send_weights", ()),
        ("rollout0", "receive_weights", (1,)),
        ("rollout0", "generate", (prompts[2], 1, 8, False)),
        ("learner0", "save", ()),
        ("learner1", "save", ()),
    ]


def test_pipelined_samples_are_at_most_max_staleness_versions_old(pipelined_run):
    cfg, *_ = pipelined_run
    rows = read_metrics(cfg)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert all(0 <= row["staleness/mean"] <= row["staleness/max"] <= 1 for row in rows)
    # Step 2 trains on the batch sampled by the start weights while step 1 trained; step 3's was
    # lost with the worker and sampled again by the current weights, step 4's after the resume.
    assert [row["staleness/max"] for row in rows] == [0.0, 1.0, 0.0, 0.0]
    assert rows[1]["staleness/mean"] == 1.0
    for row in rows:
        assert 0 < row["rollout/is_weight_mean"] <= row["rollout/is_weight_max"] <= 2.0
        assert 0 <= row["rollout/is_clip_frac"] <= 1
        assert row["busy/rollout_s"] > 0 and row["busy/learner_s"] > 0
        assert row["idle/rollout_s"] >= 0 and row["idle/learner_s"] >= 0
        assert row["busy/learner_s"] + row["idle/learner_s"] == pytest.approx(row["time/step"])
    # One version behind: the learners' log-probs are no longer the engine's.
    assert rows[1]["rollout/logprob_diff_mean"] > rows[0]["rollout/logprob_diff_mean"]


def test_pipelined_run_replaces_a_killed_rollout_worker_and_resumes_without_losing_a_step(pipelined_run):
    cfg, _, _, in_flight, interrupted, resumed_at, (versions, _) = pipelined_run
    assert [row["step"] for row in interrupted] == [1, 2, 3]
    assert interrupted[2]["rollout/restarts"] >= 1  # step 3's batch died with the worker
    assert in_flight == [3]  # the driver died with step 4's batch requested
    assert resumed_at == 3 and versions == [4]
    rows = read_metrics(cfg)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert rows[:3] == interrupted  # nothing of the interrupted run was repeated
    assert rows[3]["rollout/restarts"] == 0
    # The cosine over 4 steps at the step the learners were given, after the resume too.
    factors = [(1 + math.cos(math.pi * step / 4)) / 2 for step in range(4)]
    assert [row["actor/lr"] for row in rows] == pytest.approx([cfg.learner.lr * f for f in factors])
    assert [row["step"] for row in read_metrics(cfg, validation=True)] == [0, 2, 4]
    # Step 2's broadcast found the restarted worker outside the group and delivered nothing; step
    # 3's went through a rebuilt group, step 4's through the resumed run's new one.
    assert [row["sync/bytes"] > 0 for row in rows] == [True, False, True, True]


def test_transferred_weights_equal_the_learners_in_the_model_dtype(pipelined_run):
    """After the last sync the engine holds the final checkpoint's weights (written in the model's
    dtype, as they are sent) in every parameter vLLM's CPU backend keeps."""
    cfg, *_, (_, engine) = pipelined_run
    saved = load_file(run_dir(cfg) / "checkpoints" / "step-000004" / "model" / "model.safetensors")
    assert {"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"} <= set(engine)
    for name, tensor in engine.items():
        assert torch.equal(tensor, vllm_tensor(saved, name)), name
