"""The length-control field (SPEC.md §5): hand-computed groups and vectorised == per-group loop.

Four groups recur, with the response limit L_MAX = 100:
  ALL_CORRECT  rewards [1, 1, 1, 1], lengths [10, 20, 30, 40], all correct
  MIXED        rewards [1, 0, 1, 0], lengths [20, 10, 40, 30], correct [T, F, T, F]
  TRUNCATED    rewards [1, 0, 0],    lengths [50, 90, 100],   correct [T, F, F], last one truncated
  EQUAL        rewards [1, 0, 1],    lengths [30, 30, 30],    correct [T, F, T]
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import numpy as np
import pytest
import torch

from tiny_r1v.algorithms import ScoredGroups, compute_advantages
from tiny_r1v.algorithms.length_field import (
    efficient_reward,
    kimi_length_reward,
    linear_reward,
    overlong_penalty,
    sample_optimal_length,
    shorter_better_reward,
)
from tiny_r1v.config import AlgorithmConfig, LipoConfig

L_MAX = 100
GROUPS = {
    "all_correct": ([1.0, 1.0, 1.0, 1.0], [10, 20, 30, 40], [True] * 4, [False] * 4),
    "mixed": ([1.0, 0.0, 1.0, 0.0], [20, 10, 40, 30], [True, False, True, False], [False] * 4),
    "truncated": ([1.0, 0.0, 0.0], [50, 90, 100], [True, False, False], [False, False, True]),
    "equal": ([1.0, 0.0, 1.0], [30, 30, 30], [True, False, True], [False] * 3),
}


def one_group(name):
    rewards, lengths, correct, truncated = GROUPS[name]
    n = len(rewards)
    return (
        torch.tensor(rewards, dtype=torch.float64),
        torch.tensor(lengths, dtype=torch.float64),
        torch.tensor(correct),
        torch.tensor(truncated),
        torch.zeros(n, dtype=torch.long),
    )


def close(tensor, expected, abs=1e-6):
    assert tensor.tolist() == pytest.approx(expected, abs=abs)


# --- The shaped rewards, by hand ------------------------------------------------------------------


def test_overlong_penalty_by_hand():
    # L_cache = 20, L_exp = 80: 0 up to 80, (80 - L) / 20 above, -1 when truncated.
    _, lengths, _, truncated, _ = one_group("truncated")
    close(overlong_penalty(lengths, truncated, L_MAX, 20.0), [0.0, -0.5, -1.0])
    for name in ("all_correct", "mixed", "equal"):  # every length <= 80
        _, lengths, _, truncated, _ = one_group(name)
        close(overlong_penalty(lengths, truncated, L_MAX, 20.0), [0.0] * len(lengths))
    # Beyond the limit without the flag the ramp is capped at -1, as in the paper.
    close(overlong_penalty(torch.tensor([81.0, 120.0]), torch.tensor([False, False]), L_MAX, 20.0), [-0.05, -1.0])


@pytest.mark.parametrize(
    "name, expected",
    [
        # min 10, max 40: lambda = 0.5 - (L - 10) / 30 = [0.5, 1/6, -1/6, -0.5]; all correct.
        ("all_correct", [0.5, 1 / 6, -1 / 6, -0.5]),
        # lambda = [1/6, 0.5, -0.5, -1/6]; the wrong ones keep min(0, lambda): [_, 0, _, -1/6].
        ("mixed", [1 / 6, 0.0, -0.5, -1 / 6]),
        # min 50, max 100: lambda = [0.5, -0.3, -0.5]; the wrong ones are negative already.
        ("truncated", [0.5, -0.3, -0.5]),
        ("equal", [0.0, 0.0, 0.0]),  # all lengths equal: 0
    ],
)
def test_kimi_length_reward_by_hand(name, expected):
    _, lengths, correct, _, group = one_group(name)
    close(kimi_length_reward(lengths, correct, group, 1), expected)


@pytest.mark.parametrize(
    "name, sol, expected",
    [
        # SOL = 10: 2 - 0.001 * |L - 10|.
        ("all_correct", 10, [2.0, 1.99, 1.98, 1.97]),
        # SOL = min(20, 40) = 20: [2 - 0, 0 - 0.01, 2 - 0.02, 0 - 0.01].
        ("mixed", 20, [2.0, -0.01, 1.98, -0.01]),
        # SOL = 50: [2, -0.04, -0.05].
        ("truncated", 50, [2.0, -0.04, -0.05]),
        ("equal", 30, [2.0, 0.0, 2.0]),
    ],
)
def test_shorter_better_by_hand(name, sol, expected):
    _, lengths, correct, _, group = one_group(name)
    close(sample_optimal_length(lengths, correct, group, 1), [float(sol)] * len(expected))
    close(shorter_better_reward(lengths, correct, group, 1, alpha=2.0, beta=0.001), expected)


def test_shorter_better_without_a_correct_answer_uses_the_mean_length():
    lengths, correct, group = (
        torch.tensor([10.0, 20.0, 60.0]),
        torch.tensor([False] * 3),
        torch.zeros(3, dtype=torch.long),
    )
    # SOL = mean(10, 20, 60) = 30: -0.001 * [20, 10, 30].
    close(sample_optimal_length(lengths, correct, group, 1), [30.0] * 3)
    close(shorter_better_reward(lengths, correct, group, 1, alpha=2.0, beta=0.001), [-0.02, -0.01, -0.03])


@pytest.mark.parametrize(
    "name, expected",
    [
        # Correct lengths 10..40: mean 25, population std sqrt(125) = 11.180340, so
        # z = [-1.341641, -0.447214, 0.447214, 1.341641], sigmoid = [0.207240, 0.390024, 0.609976,
        # 0.792760] and r' = 1 - 0.2 * sigmoid.
        ("all_correct", [0.958552, 0.921995, 0.878005, 0.841448]),
        # Correct lengths 20, 40: mean 30, std 10, z = -1, 1; sigmoid(1) = 0.731059.
        ("mixed", [1 - 0.2 * 0.268941, 0.0, 1 - 0.2 * 0.731059, 0.0]),
        # One correct response: std 0, z = 0, sigmoid 0.5: 1 - 0.1.
        ("truncated", [0.9, 0.0, 0.0]),
        ("equal", [0.9, 0.0, 0.9]),
    ],
)
def test_efficient_reward_by_hand(name, expected):
    _, lengths, correct, _, group = one_group(name)
    close(efficient_reward(lengths, correct, group, 1, alpha=0.2), expected)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("all_correct", [0.98, 0.96, 0.94, 0.92]),  # 1 - 0.2 * L / 100
        ("mixed", [0.96, 0.0, 0.92, 0.0]),  # wrong answers untouched
        ("truncated", [0.9, 0.0, 0.0]),
        ("equal", [0.94, 0.0, 0.94]),
    ],
)
def test_linear_reward_by_hand(name, expected):
    rewards, lengths, correct, _, _ = one_group(name)
    close(linear_reward(rewards, lengths, correct, l_max=L_MAX, gamma=0.2), expected)


# --- Advantages through the registry, by hand -----------------------------------------------------


def stacked_batch():
    """All four groups in one batch, interleaved, so the groups must be told apart by id."""
    rows = [(g, *row) for g, name in enumerate(GROUPS) for row in zip(*GROUPS[name], strict=True)]
    order = np.random.default_rng(0).permutation(len(rows))
    rows = [rows[i] for i in order]
    group, rewards, lengths, correct, truncated = zip(*rows, strict=True)
    batch = ScoredGroups(
        rewards=torch.tensor(rewards, dtype=torch.float32),
        lengths=torch.tensor(lengths, dtype=torch.long),
        group=torch.tensor(group, dtype=torch.long),
        correct=torch.tensor(correct),
        truncated=torch.tensor(truncated),
        l_max=L_MAX,
    )
    return batch, order


def by_group(advantages, order):
    """The batch's advantages back in the GROUPS' order, as one list per group."""
    flat = torch.empty_like(advantages)
    flat[torch.from_numpy(order)] = advantages
    sizes = [len(rows[0]) for rows in GROUPS.values()]
    return dict(zip(GROUPS, [part.tolist() for part in flat.split(sizes)], strict=True))


def grpo_by_hand(values):
    """GRPO of one group: (v - mean) / (sample std + 1e-6)."""
    mean, std = statistics.mean(values), statistics.stdev(values)
    return [(v - mean) / (std + 1e-6) for v in values]


def rloo_by_hand(values):
    """RLOO of one group: each value minus the mean of the others."""
    return [v - (sum(values) - v) / (len(values) - 1) for v in values]


SHAPED = {
    # The shaped rewards of the tests above; dapo_overlong adds the penalty to the reward.
    "grpo": {name: GROUPS[name][0] for name in GROUPS},
    "dapo_overlong": {
        "all_correct": [1.0] * 4,
        "mixed": [1.0, 0.0, 1.0, 0.0],
        "truncated": [1.0, -0.5, -1.0],
        "equal": [1.0, 0.0, 1.0],
    },
    "kimi": {
        "all_correct": [1.5, 1 + 1 / 6, 1 - 1 / 6, 0.5],
        "mixed": [1 + 1 / 6, 0.0, 0.5, -1 / 6],
        "truncated": [1.5, -0.3, -0.5],
        "equal": [1.0, 0.0, 1.0],
    },
    "shorter_better": {
        "all_correct": [2.0, 1.99, 1.98, 1.97],
        "mixed": [2.0, -0.01, 1.98, -0.01],
        "truncated": [2.0, -0.04, -0.05],
        "equal": [2.0, 0.0, 2.0],
    },
    "linear": {
        "all_correct": [0.98, 0.96, 0.94, 0.92],
        "mixed": [0.96, 0.0, 0.92, 0.0],
        "truncated": [0.9, 0.0, 0.0],
        "equal": [0.94, 0.0, 0.94],
    },
}
EFFICIENT = {
    "all_correct": [0.958552, 0.921995, 0.878005, 0.841448],
    "mixed": [0.946212, 0.0, 0.853788, 0.0],
    "truncated": [0.9, 0.0, 0.0],
    "equal": [0.9, 0.0, 0.9],
}


def run(estimator, **sections):
    batch, order = stacked_batch()
    cfg = replace(AlgorithmConfig(), adv_estimator=estimator, lipo=LipoConfig(xi=0.0), **sections)
    result = compute_advantages(batch, cfg)
    assert result.advantages.dtype == torch.float32 and result.advantages.shape == (len(order),)
    return by_group(result.advantages, order), result.metrics


@pytest.mark.parametrize("estimator", sorted(SHAPED))
def test_shaped_then_grpo_by_hand(estimator):
    got, _ = run(estimator)
    for name, values in SHAPED[estimator].items():
        close(torch.tensor(got[name]), grpo_by_hand(values), abs=1e-5)  # equal values: std 0, all 0


def test_literal_advantages_by_hand():
    got, _ = run("dapo_overlong")
    # Shaped [1, -0.5, -1]: mean -1/6, deviations [7/6, -1/3, -5/6], sample std sqrt(13/12) = 1.040833.
    close(torch.tensor(got["truncated"]), [1.120896, -0.320256, -0.800640], abs=1e-5)
    got, _ = run("kimi")
    # Shaped [1.5, 7/6, 5/6, 0.5]: mean 1, deviations [1/2, 1/6, -1/6, -1/2], std sqrt(5/27) = 0.430331.
    close(torch.tensor(got["all_correct"]), [1.161892, 0.387297, -0.387297, -1.161892], abs=1e-5)
    got, _ = run("grpo")
    close(torch.tensor(got["all_correct"]), [0.0] * 4)  # SPEC §2: GRPO gives an all-correct group 0
    close(torch.tensor(got["equal"]), [0.577349, -1.154699, 0.577349], abs=1e-5)  # mean 2/3, std 0.577350


def test_dr_grpo_is_centred_without_std():
    got, _ = run("dr_grpo", loss_agg_mode="seq-mean-token-sum-norm")
    close(torch.tensor(got["all_correct"]), [0.0] * 4)
    close(torch.tensor(got["mixed"]), [0.5, -0.5, 0.5, -0.5])
    close(torch.tensor(got["truncated"]), [2 / 3, -1 / 3, -1 / 3])
    close(torch.tensor(got["equal"]), [1 / 3, -2 / 3, 1 / 3])


def test_efficient_with_rloo_and_grpo_baselines():
    got, metrics = run("efficient")
    # RLOO: r_i - mean of the others. equal: [0.9 - 0.45, 0 - 0.9, 0.9 - 0.45].
    close(torch.tensor(got["equal"]), [0.45, -0.9, 0.45], abs=1e-5)
    close(torch.tensor(got["truncated"]), [0.9, -0.45, -0.45], abs=1e-5)
    for name, values in EFFICIENT.items():
        close(torch.tensor(got[name]), rloo_by_hand(values), abs=1e-5)
    got, _ = run("efficient", efficient=replace(AlgorithmConfig().efficient, baseline="grpo"))
    for name, values in EFFICIENT.items():
        close(torch.tensor(got[name]), grpo_by_hand(values), abs=1e-5)
    assert set(metrics) >= {"efficient/reward_mean", "efficient/shaping_mean"}


def test_all_correct_group_length_methods_prefer_short():
    """SPEC §2's check, for every method that shapes by length: shorter correct answers gain."""
    for estimator in ("kimi", "shorter_better", "efficient", "linear", "lipo"):
        got, _ = run(estimator)
        advantages = got["all_correct"]  # lengths 10, 20, 30, 40
        assert advantages == sorted(advantages, reverse=True) and advantages[0] > 0 > advantages[-1], estimator


# --- Vectorised equals a plain per-group loop -----------------------------------------------------


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def shaped_by_loop(estimator, rewards, lengths, correct, truncated, cfg, l_max):
    """One group's shaped reward, written straight from SPEC §5 and the papers."""
    if estimator in ("grpo", "dr_grpo"):
        return list(rewards)
    if estimator == "dapo_overlong":
        l_cache = cfg.dapo_overlong.cache_fraction * l_max
        l_exp = l_max - l_cache
        penalty = [
            -1.0 if t else (0.0 if n <= l_exp else max(-1.0, (l_exp - n) / l_cache))
            for n, t in zip(lengths, truncated, strict=True)
        ]
        return [r + p for r, p in zip(rewards, penalty, strict=True)]
    if estimator == "kimi":
        lo, hi = min(lengths), max(lengths)
        out = []
        for r, n, c in zip(rewards, lengths, correct, strict=True):
            lam = 0.0 if hi == lo else 0.5 - (n - lo) / (hi - lo)
            out.append(r + cfg.kimi.weight * (lam if c else min(0.0, lam)))
        return out
    if estimator == "shorter_better":
        right = [n for n, c in zip(lengths, correct, strict=True) if c]
        sol = min(right) if right else sum(lengths) / len(lengths)
        a, b = cfg.shorter_better.alpha, cfg.shorter_better.beta
        return [a * c - b * abs(n - sol) for n, c in zip(lengths, correct, strict=True)]
    if estimator == "efficient":
        right = [n for n, c in zip(lengths, correct, strict=True) if c]
        if not right:
            return [0.0] * len(lengths)
        mean, std = statistics.mean(right), statistics.pstdev(right)
        alpha = cfg.efficient.alpha
        return [
            (1 - alpha * sigmoid((n - mean) / (std + 1e-7))) if c else 0.0
            for n, c in zip(lengths, correct, strict=True)
        ]
    assert estimator == "linear"
    return [r - cfg.linear.gamma * n / l_max * c for r, n, c in zip(rewards, lengths, correct, strict=True)]


def normalise_by_loop(estimator, values, cfg):
    """The group normalisation; a group of one (no comparison) gives 0."""
    if len(values) == 1:
        return [0.0]
    if estimator == "efficient" and cfg.efficient.baseline == "rloo":
        return rloo_by_hand(values)
    if estimator == "dr_grpo":
        mean = statistics.mean(values)
        return [v - mean for v in values]
    return grpo_by_hand(values)


def random_batch(rng, l_max):
    sizes = rng.integers(1, 9, size=rng.integers(1, 12))
    group = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    n = len(group)
    rewards = rng.choice([0.0, 0.1, 0.9, 1.0], size=n)
    lengths = rng.integers(0, l_max + 1, size=n)  # many ties at this range
    truncated = lengths == l_max
    return ScoredGroups(
        rewards=torch.tensor(rewards, dtype=torch.float32),
        lengths=torch.tensor(lengths, dtype=torch.long),
        group=torch.tensor(group, dtype=torch.long),
        correct=torch.tensor(rewards >= 0.5),
        truncated=torch.tensor(truncated),
        l_max=l_max,
    )


CASES = [
    ("grpo", {}),
    ("dr_grpo", {"loss_agg_mode": "seq-mean-token-sum-norm"}),
    ("dapo_overlong", {}),
    ("kimi", {}),
    ("shorter_better", {}),
    ("efficient", {}),
    ("efficient", {"efficient": replace(AlgorithmConfig().efficient, baseline="grpo", alpha=0.5)}),
    ("linear", {}),
]


@pytest.mark.parametrize("estimator, sections", CASES, ids=[f"{e}-{i}" for i, (e, _) in enumerate(CASES)])
def test_vectorised_equals_loop(estimator, sections):
    rng = np.random.default_rng(len(estimator) + len(sections))
    cfg = replace(AlgorithmConfig(), adv_estimator=estimator, **sections)
    for _ in range(25):
        batch = random_batch(rng, l_max=int(rng.integers(8, 40)))
        got = compute_advantages(batch, cfg).advantages
        expected = [0.0] * len(batch.rewards)
        for g in batch.group.unique().tolist():
            members = (batch.group == g).nonzero().flatten().tolist()
            columns = [
                [getattr(batch, f)[i].item() for i in members] for f in ("rewards", "lengths", "correct", "truncated")
            ]
            shaped = shaped_by_loop(estimator, *columns, cfg, batch.l_max)
            for i, a in zip(members, normalise_by_loop(estimator, shaped, cfg), strict=True):
                expected[i] = a
        assert torch.isfinite(got).all()
        np.testing.assert_allclose(got.numpy(), np.array(expected), rtol=1e-5, atol=1e-5)
