"""Driver parts without actors: data order, metrics sinks, checkpoint directories."""

from __future__ import annotations

import json

import pytest
import torch

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
    # A new run (step 0) starts the file afresh, an earlier run's step-0 validation included.
    log = MetricsLogger(tmp_path, ["jsonl"], "x", total_steps=4, start_step=0)
    log.log(0, {"val/samples": 2.0}, advance=False)
    log.close()
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        {"step": 0, "val/samples": 2.0}]


def test_checkpoints_publish_atomically_and_keep_the_last(tmp_path):
    def save(step):
        staging = checkpoint.staging_dir(tmp_path, step)
        assert staging.name.endswith(".tmp")
        assert checkpoint.latest(tmp_path) is None or checkpoint.latest(tmp_path)[1].step < step
        (staging / "model").mkdir()
        return checkpoint.publish(staging, checkpoint.TrainerState(step, step, 1, 10), keep=2)

    assert checkpoint.latest(tmp_path) is None
    for step in (1, 2, 3):
        save(step)
    names = sorted(p.name for p in checkpoint.checkpoint_root(tmp_path).iterdir())
    assert names == ["step-000002", "step-000003"]
    # An interrupted write leaves a .tmp directory that is never resumed from.
    checkpoint.staging_dir(tmp_path, 4)
    path, state = checkpoint.latest(tmp_path)
    assert path.name == "step-000003" and state == checkpoint.TrainerState(3, 3, 1, 10)


def test_trend_compares_the_first_and_last_steps():
    rows = [{"step": i + 1, "reward/mean": r, "length/mean": 10.0 * (8 - i)} for i, r in
            enumerate([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.9, 0.5])]
    assert trend(rows, window=3) == ("reward/mean 0.2 -> 0.8, length/mean 70 -> 20 "
                                     "(means of the first and last 3 steps)")
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
    shared = {name: array.ctypes.data == state[name].data_ptr() for (name, *_), array in
              zip(packed.entries, packed.arrays, strict=True) if state[name].numel()}
    assert shared == {"a.weight": True, "b.bias": True, "c.steps": True, "d.weight": False}


def test_packed_weights_read_through_the_object_store_without_copies(ray_local):
    import ray

    state = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "h": torch.ones(2, dtype=torch.bfloat16)}
    received = ray.get(ray.put(PackedWeights.pack(state)))
    # Views of the store's shared memory, not copies.
    assert not any(array.flags.writeable for array in received.arrays)
    assert all(torch.equal(received.tensors()[k], v) for k, v in state.items())
