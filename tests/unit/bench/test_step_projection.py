"""The step projection's schedule (bench/step_projection.py) on hand-computed phases, and its
rollout measurement's code path on a tiny model."""

from __future__ import annotations

import pytest
import torch
from helpers import script

projection = script("bench/step_projection.py")


def test_strict_order_adds_every_phase():
    out = projection.project_step(projection.StepPhases(rollout=30, reward=2, learner=60, sync=1), 0)
    assert out["step_s"] == 93
    assert out["rollout_idle_share"] == pytest.approx(1 - 31 / 93)
    assert out["learner_idle_share"] == pytest.approx(1 - 61 / 93)


@pytest.mark.parametrize(
    ("rollout", "expected"),
    [(30, 63), (80, 81)],  # learner-bound: reward + learner + sync; rollout-bound: rollout + sync
)
def test_pipelined_overlaps_rollout_with_reward_and_update(rollout, expected):
    phases = projection.StepPhases(rollout=rollout, reward=2, learner=60, sync=1)
    for k in (1, 2):
        assert projection.project_step(phases, k)["step_s"] == expected


def test_pipelined_never_slower_than_strict():
    for rollout, reward, learner, sync in [(0, 0, 1, 0), (5, 1, 5, 0.5), (100, 3, 1, 2)]:
        phases = projection.StepPhases(rollout, reward, learner, sync)
        assert projection.project_step(phases, 1)["step_s"] <= projection.project_step(phases, 0)["step_s"]


def test_negative_staleness_refused():
    with pytest.raises(ValueError, match="max_staleness"):
        projection.project_step(projection.StepPhases(1, 1, 1, 1), -1)


def test_sync_is_broadcast_plus_one_copy():
    # 10 GB at 100 GB/s over the wire, then read and written once at 1,000 GB/s.
    assert projection.sync_seconds(10e9, 1000e9, 100.0) == pytest.approx(0.1 + 0.02)


def test_rollout_measurement_fills_the_cache_to_prompt_plus_response(tiny_model_dir):
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    work = projection.rollout_workload(samples_per_step=6, engines=2, prompt=40, response=24, grid=4)
    assert work.batch == 3
    out = projection.measure_rollout(model, work, torch.device("cpu"), steps=2, chunk=16, image_chunk=2)
    assert set(out["decode_step_s"]) == {"context_40", "context_64"}
    assert all(v > 0 for v in (out["vision_s"], out["prefill_s"], *out["decode_step_s"].values()))
    upper, lower = out["rollout_s"]["eager_upper"], out["rollout_s"]["roofline_lower"]
    assert upper > lower > out["vision_s"] + out["prefill_s"]
