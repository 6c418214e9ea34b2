"""Sampling seeds: the per-request and per-call schemes' seed functions."""

from __future__ import annotations

from tiny_r1v.rollout.sampling import call_seed, sample_seed


def test_sample_seeds_of_a_run_never_overlap():
    n = 4
    draws = [sample_seed(7, slot, n) + k for slot in range(50) for k in range(n)]
    assert len(set(draws)) == len(draws)


def test_call_seeds_are_fixed_distinct_and_in_torch_range():
    # Slots of the first steps of a 4-worker run of 64 prompts, for three run seeds.
    calls = [(seed, step * 64 + worker * 16) for seed in (1, 2, 3) for step in range(20) for worker in range(4)]
    seeds = [call_seed(seed, slot) for seed, slot in calls]
    assert seeds == [call_seed(seed, slot) for seed, slot in calls]
    assert len(set(seeds)) == len(calls)
    assert all(0 <= s < 2**64 for s in seeds)
    # Unlike (seed + slot) * n, neighbouring run seeds do not reuse each other's calls shifted by a slot.
    assert call_seed(1, 1) != call_seed(2, 0)
