"""Driver parts without actors: data order, metrics sinks, checkpoint directories."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import fill_checkpoint, snapshot, stand_in_model

from tiny_r1v.trainer import checkpoint
from tiny_r1v.trainer.metrics import MetricsLogger, trend
from tiny_r1v.trainer.sampler import step_indices
from tiny_r1v.trainer.weights import PackedWeights


def test_data_order_is_a_pure_function_of_seed_and_step():
    first = [step_indices(10, 4, step, seed=3) for step in range(5)]
    assert first == [step_indices(10, 4, step, seed=3) for step in range(5)]
    stream = [i for batch in first for i in batch]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))  # epochs
    assert stream[:10] != stream[10:20]  # each epoch reshuffled
    assert step_indices(10, 4, 0, seed=4) != first[0]
    assert step_indices(5, 3, 1, seed=0, shuffle=False) == [3, 4, 0]
    with pytest.raises(ValueError, match="empty"):
        step_indices(0, 1, 0, seed=0)


def test_metrics_file_is_cut_back_to_the_resumed_step(tmp_path):
    log = MetricsLogger(tmp_path, ["jsonl"], "x", total_steps=4, start_step=0)
    for step in (1, 2, 3):
        log.log(step, {"reward/mean": float(step)})
    log.close()
    # The run crashed after logging step 3; its last checkpoint is step 2.
    log = MetricsLogger(tmp_path, ["jsonl"], "x", total_steps=4, start_step=2)
    log.log(3, {"reward/mean": 30.0})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["reward/mean"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    # Validation rows kept on resume are known, so a resumed run validates only what is missing.
    log = MetricsLogger(tmp_path, ["jsonl"], "x", total_steps=4, start_step=3)
    assert log.validated == set()
    log.log(3, {"val/samples": 2.0}, advance=False)
    log.close()
    assert MetricsLogger(tmp_path, ["jsonl"], "x", total_steps=4, start_step=3).validated == {3}
    assert MetricsLogger(tmp_path, ["jsonl"], "x", total_steps=4, start_step=2).validated == set()
    # A new run (step 0) never writes over an earlier run's metrics.
    before = snapshot(tmp_path)
    with pytest.raises(checkpoint.ExistingRunError, match="metrics.jsonl"):
        MetricsLogger(tmp_path, ["jsonl"], "x", total_steps=4, start_step=0)
    assert snapshot(tmp_path) == before


ORDER = {
    "dataset_size": 10,
    "data.seed": 1,
    "data.shuffle": True,
    "trainer.rollout_batch_size": 4,
    "rollout.seed": 1,
    "rollout.n": 2,
}


def test_checkpoints_publish_atomically_and_keep_the_last(tmp_path, monkeypatch):
    def save(step):
        staging = checkpoint.staging_dir(tmp_path, step)
        assert staging.name.endswith(".tmp")
        assert checkpoint.latest(tmp_path) is None or checkpoint.latest(tmp_path)[1].step < step
        stand_in_model(fill_checkpoint(staging) / "model")
        return checkpoint.publish(staging, checkpoint.TrainerState(step, step, ORDER), keep=2)

    assert checkpoint.latest(tmp_path) is None
    assert checkpoint.start_point(tmp_path, False, ORDER) is None
    for step in (1, 2, 3):
        save(step)
    names = sorted(p.name for p in checkpoint.checkpoint_root(tmp_path).iterdir())
    assert names == ["step-000002", "step-000003"]
    # An interrupted write leaves a .tmp directory that is never resumed from.
    checkpoint.staging_dir(tmp_path, 4)
    path, state = checkpoint.latest(tmp_path)
    assert path.name == "step-000003" and state == checkpoint.TrainerState(3, 3, ORDER)
    # A deletion cut short (here: before any file went) leaves an incomplete checkpoint, never
    # one that would be resumed from.
    monkeypatch.setattr(checkpoint.shutil, "rmtree", lambda path, **_: None)
    save(5)
    root = checkpoint.checkpoint_root(tmp_path)
    assert (root / "step-000002").is_dir() and not (root / "step-000002" / checkpoint.STATE_FILE).exists()
    assert [p.name for p in checkpoint.complete_checkpoints(root)] == ["step-000003", "step-000005"]


def test_a_new_run_refuses_an_earlier_runs_checkpoints_or_metrics(tmp_path):
    checkpoint.staging_dir(tmp_path / "a", 1)  # even an incomplete one
    with pytest.raises(checkpoint.ExistingRunError, match=r"step-000001\.tmp.*pass --resume"):
        checkpoint.start_point(tmp_path / "a", False, ORDER)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / checkpoint.METRICS_FILE).write_text('{"step": 1}\n')
    with pytest.raises(checkpoint.ExistingRunError, match=r"metrics\.jsonl.*pass --resume"):
        checkpoint.start_point(tmp_path / "b", False, ORDER)


def test_resume_without_a_complete_checkpoint_never_restarts_over_an_earlier_run(tmp_path):
    # Metrics but no checkpoint (a run that died before its first save): resuming from step 0
    # would write over its metrics.
    (tmp_path / checkpoint.METRICS_FILE).write_text('{"step": 1}\n')
    before = snapshot(tmp_path)
    with pytest.raises(checkpoint.ExistingRunError, match=r"metrics\.jsonl.*nothing complete to resume"):
        checkpoint.start_point(tmp_path, True, ORDER)
    assert snapshot(tmp_path) == before
    # Nothing there yet: --resume starts the run.
    assert checkpoint.start_point(tmp_path / "new", True, ORDER) is None


def test_resume_refuses_another_data_order(tmp_path):
    state = checkpoint.TrainerState(3, 3, ORDER)
    checkpoint.check_resumable(tmp_path, state, dict(ORDER))
    changed = {**ORDER, "trainer.rollout_batch_size": 8, "rollout.n": 4}
    with pytest.raises(ValueError, match=r"trainer\.rollout_batch_size 4 -> 8, rollout\.n 2 -> 4"):
        checkpoint.check_resumable(tmp_path, state, changed)


def test_trend_compares_the_first_and_last_steps():
    rows = [
        {"step": i + 1, "reward/mean": r, "length/mean": 10.0 * (8 - i)}
        for i, r in enumerate([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.9, 0.5])
    ]
    assert trend(rows, window=3) == (
        "reward/mean 0.2 -> 0.8, length/mean 70 -> 20 (means of the first and last 3 steps)"
    )
    # A short run: half of its steps for each end.
    short = trend(rows[:2], keys=["reward/mean"], window=5)
    assert short == "reward/mean 0 -> 0.2 (means of the first and last 1 steps)"


def test_packed_weights_round_trip_every_dtype_and_shape():
    g = torch.Generator().manual_seed(0)
    state = {
        "a.weight": torch.randn(3, 5, generator=g),
        "b.bias": torch.randn(7, generator=g).bfloat16(),
        "c.steps": torch.tensor(4, dtype=torch.int64),
        "d.weight": torch.randn(4, 6, generator=g).T,  # not contiguous
        "e.empty": torch.empty(0, 2),
    }
    packed = PackedWeights.pack(state)
    out = packed.tensors()
    assert list(out) == list(state)
    for name, tensor in state.items():
        assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape
        assert torch.equal(out[name], tensor), name
    # Byte views of the learner's tensors: no copy but of the non-contiguous one.
    shared = {
        name: array.ctypes.data == state[name].data_ptr()
        for (name, *_), array in zip(packed.entries, packed.arrays, strict=True)
        if state[name].numel()
    }
    assert shared == {"a.weight": True, "b.bias": True, "c.steps": True, "d.weight": False}


def test_resume_passes_over_a_damaged_newer_checkpoint_and_says_so(tmp_path, caplog):
    for step in (2, 3):
        path = checkpoint.checkpoint_root(tmp_path) / f"step-{step:06d}"
        stand_in_model(fill_checkpoint(path) / "model")
        (path / checkpoint.STATE_FILE).write_text(json.dumps({"step": step, "weight_version": step, "order": ORDER}))
    (checkpoint.checkpoint_root(tmp_path) / "step-000003" / "model" / "model.safetensors").unlink()
    with caplog.at_level("WARNING", logger="tiny_r1v.trainer.checkpoint"):
        path, state = checkpoint.start_point(tmp_path, True, ORDER)
    assert path.name == "step-000002" and state.step == 2
    assert "step-000003" in caplog.text and "no weights" in caplog.text
