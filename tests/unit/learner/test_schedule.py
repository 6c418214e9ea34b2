"""Learning-rate schedules: hand-computed multipliers at the boundaries."""

from __future__ import annotations

import math

import pytest

from tiny_r1v.learner.schedule import lr_factor


def test_no_warm_up_and_constant_is_always_the_peak() -> None:
    assert [lr_factor(step, 5) for step in range(5)] == [1.0] * 5


def test_warm_up_rises_linearly_from_its_first_step_then_holds() -> None:
    assert [lr_factor(step, 10, warmup_steps=4) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_after_warm_up_falls_from_the_peak_towards_min_ratio() -> None:
    # total 6, warm-up 2: the cosine covers steps 2..5, progress 0, 1/4, 1/2, 3/4.
    factors = [lr_factor(step, 6, warmup_steps=2, schedule="cosine", min_ratio=0.2) for step in range(6)]
    half_cos = [(1 + math.cos(math.pi * p)) / 2 for p in (0, 0.25, 0.5, 0.75)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2:] == pytest.approx([0.2 + 0.8 * c for c in half_cos], abs=0)
    assert factors[4] == pytest.approx(0.6)  # halfway: midway between the peak and the floor


def test_cosine_without_warm_up_starts_at_the_peak_and_stays_above_the_floor() -> None:
    assert lr_factor(0, 10, schedule="cosine") == 1.0
    last = lr_factor(9, 10, schedule="cosine", min_ratio=0.1)  # progress 9/10: the floor is not reached
    assert last == pytest.approx(0.1 + 0.9 * (1 + math.cos(0.9 * math.pi)) / 2) and last > 0.1
