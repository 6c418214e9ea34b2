"""The advantage registry: its names, its batch type, GRPO and LIPO against their old paths, and the
config sections of the length-control field."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from typing import get_args

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import get_adv_estimator_fn

from tiny_r1v.algorithms import (
    ADVANTAGES,
    AdvantageResult,
    ScoredGroups,
    compute_advantages,
    group_ids,
    lipo_advantage,
    register_advantage,
)
from tiny_r1v.config import AlgorithmConfig, ConfigError, LipoConfig, TrainConfig, load_config
from tiny_r1v.config.train import AdvEstimator


def batch_of(rewards, lengths, group, correct=None, truncated=None, l_max=100):
    n = len(rewards)
    return ScoredGroups(
        rewards=torch.tensor(rewards, dtype=torch.float32),
        lengths=torch.tensor(lengths, dtype=torch.long),
        group=torch.tensor(group, dtype=torch.long),
        correct=torch.tensor([r >= 0.5 for r in rewards]) if correct is None else torch.tensor(correct),
        truncated=torch.zeros(n, dtype=torch.bool) if truncated is None else torch.tensor(truncated),
        l_max=l_max,
    )


def test_config_names_are_the_registry_names():
    assert set(get_args(AdvEstimator)) == set(ADVANTAGES)
    assert len(get_args(AdvEstimator)) == len(ADVANTAGES)


def test_config_package_stays_light():
    heavy = ("torch", "verl", "tiny_r1v.algorithms")
    code = f"import sys, tiny_r1v.config; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_group_ids_are_dense_whatever_the_labels():
    assert group_ids(["b", "a", "b", "c"]).tolist() == [1, 0, 1, 2]
    assert group_ids(["10", "3", "10"]).tolist() == [1, 0, 1]  # numeric strings: dense, not 10 and 3
    assert group_ids(["u"]).dtype == torch.long


def test_scored_groups_checks_shapes_and_dtypes():
    good = batch_of([1.0, 0.0], [3, 4], [0, 0])
    with pytest.raises(ValueError, match="lengths must be 1-D"):
        replace(good, lengths=torch.tensor([3]))
    with pytest.raises(ValueError, match="rewards must be torch.float32"):
        replace(good, rewards=good.rewards.double())
    with pytest.raises(ValueError, match="correct must be torch.bool"):
        replace(good, correct=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="group ids must be >= 0"):
        replace(good, group=torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="l_max must be >= 1"):
        replace(good, l_max=0)
    assert good.num_groups == 1


def test_compute_advantages_adds_the_generic_statistics():
    # Group 0: rewards [1, 0]: GRPO mean 0.5, sample std 0.707107 -> [0.707106, -0.707106].
    # Group 1: rewards [1, 1]: all equal -> [0, 0].
    result = compute_advantages(batch_of([1.0, 0.0, 1.0, 1.0], [5, 6, 7, 8], [0, 0, 1, 1]), AlgorithmConfig("grpo"))
    assert result.advantages.tolist() == pytest.approx([0.707106, -0.707106, 0.0, 0.0], abs=1e-6)
    # std of [a, -a, 0, 0] with a = 0.707106: sqrt(2 a^2 / 3) = 0.577349.
    assert result.metrics == pytest.approx(
        {"adv/mean": 0.0, "adv/std": 0.577349, "adv/max": 0.707106, "adv/min": -0.707106, "adv/zero_frac": 0.5},
        abs=1e-6,
    )
    one = compute_advantages(batch_of([1.0], [5], [0]), AlgorithmConfig("grpo"))
    assert one.metrics["adv/std"] == 0.0 and one.advantages.tolist() == [0.0]  # a group of one: no comparison


def test_unknown_and_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'"):
        compute_advantages(batch_of([1.0], [1], [0]), replace(AlgorithmConfig(), adv_estimator="nope"))
    with pytest.raises(ValueError, match="'grpo' is already registered"):
        register_advantage("grpo")(lambda batch, cfg: AdvantageResult(batch.rewards, {}))


def random_groups(rng, min_size=2):
    sizes = rng.integers(min_size, 9, size=rng.integers(1, 12))
    uids = [f"uid-{g}" for g in rng.permutation(np.repeat(np.arange(len(sizes)), sizes))]
    rewards = np.round(rng.uniform(0, 1, len(uids)), 3).astype(np.float32)
    lengths = rng.integers(1, 60, len(uids))
    return uids, rewards, lengths


def test_grpo_equals_the_old_path():
    """The old scorer: verl's registry on token-level rewards at each response's last token."""
    rng = np.random.default_rng(3)
    for _ in range(30):
        uids, rewards, lengths = random_groups(rng)
        lengths_t = torch.from_numpy(lengths)
        mask = (torch.arange(int(lengths.max())) < lengths_t.unsqueeze(-1)).float()
        token_rewards = torch.zeros_like(mask)
        token_rewards[torch.arange(len(uids)), lengths_t - 1] = torch.from_numpy(rewards)
        old, _ = get_adv_estimator_fn("grpo")(
            token_level_rewards=token_rewards, response_mask=mask, index=np.array(uids)
        )
        batch = batch_of(rewards.tolist(), lengths.tolist(), group_ids(uids).tolist())
        torch.testing.assert_close(compute_advantages(batch, AlgorithmConfig("grpo")).advantages, old[:, 0])


@pytest.mark.parametrize("switches", [{}, {"penalize_worse_shorter": True, "l_opt_over": "correct"}, {"l_max": 30}])
def test_lipo_equals_lipo_advantage(switches):
    rng = np.random.default_rng(5)
    lipo = LipoConfig(xi=0.05, **switches)
    for _ in range(20):
        uids, rewards, lengths = random_groups(rng, min_size=1)
        batch = batch_of(rewards.tolist(), lengths.tolist(), group_ids(uids).tolist(), l_max=60)
        result = compute_advantages(batch, AlgorithmConfig("lipo", lipo=lipo))
        settings = {"l_max": 60, **switches}  # an unset l_max is the batch's response limit
        direct = lipo_advantage(batch.rewards, batch.lengths, uids, xi=0.05, correct=batch.correct, **settings)
        torch.testing.assert_close(result.advantages, direct.advantages)
        bonus = direct.adjusted_rewards - batch.rewards
        assert result.metrics["lipo/bonus_mean"] == pytest.approx(bonus.mean().item())
        assert result.metrics["lipo/boosted_frac"] == pytest.approx((bonus > 0).float().mean().item())
        assert result.metrics["lipo/penalized_frac"] == pytest.approx((bonus < 0).float().mean().item())
        assert result.metrics["lipo/l_opt_mean"] == pytest.approx(direct.l_opt.mean().item())
        assert result.metrics["lipo/weight_mean"] == pytest.approx(direct.weights.mean().item())


def test_lipo_needs_a_resolved_xi():
    with pytest.raises(ValueError, match="algorithm.lipo.xi is unset"):
        compute_advantages(batch_of([1.0, 0.0], [3, 4], [0, 0]), AlgorithmConfig("lipo"))


# --- Config ---------------------------------------------------------------------------------------

REQUIRED = ["data.train_files=[t.jsonl]", "model.path=m"]


def load(*overrides):
    return load_config(TrainConfig, None, [*REQUIRED, *overrides])


def test_dr_grpo_needs_its_loss_aggregation():
    with pytest.raises(ConfigError) as err:
        load("algorithm.adv_estimator=dr_grpo")
    assert str(err.value).startswith("algorithm.loss_agg_mode: adv_estimator dr_grpo needs seq-mean-token-sum-norm")
    cfg = load("algorithm.adv_estimator=dr_grpo", "algorithm.loss_agg_mode=seq-mean-token-sum-norm")
    assert cfg.algorithm.loss_agg_mode == "seq-mean-token-sum-norm"


def test_length_field_defaults():
    algo = load().algorithm
    assert algo.dapo_overlong.cache_fraction == 0.2
    assert algo.kimi.weight == 1.0
    assert (algo.shorter_better.alpha, algo.shorter_better.beta) == (2.0, 0.001)
    assert (algo.efficient.alpha, algo.efficient.baseline) == (0.2, "rloo")
    assert algo.linear.gamma == 0.2


RULES = [
    ("algorithm.dapo_overlong.cache_fraction=0", "algorithm.dapo_overlong.cache_fraction: must be in (0, 1], got 0.0"),
    ("algorithm.dapo_overlong.cache_fraction=1.5", "algorithm.dapo_overlong.cache_fraction: must be in (0, 1]"),
    ("algorithm.kimi.weight=-1", "algorithm.kimi.weight: must be >= 0, got -1.0"),
    ("algorithm.shorter_better.alpha=0", "algorithm.shorter_better.alpha: must be > 0, got 0.0"),
    ("algorithm.shorter_better.beta=-0.1", "algorithm.shorter_better.beta: must be >= 0, got -0.1"),
    ("algorithm.efficient.alpha=1", "algorithm.efficient.alpha: must be in [0, 1), got 1.0"),
    ("algorithm.efficient.baseline=ppo", "algorithm.efficient.baseline: must be one of ['rloo', 'grpo']"),
    ("algorithm.linear.gamma=-0.2", "algorithm.linear.gamma: must be >= 0, got -0.2"),
]


@pytest.mark.parametrize("override, message", RULES, ids=[r[0] for r in RULES])
def test_length_field_rules(override, message):
    with pytest.raises(ConfigError) as err:
        load(override)
    assert str(err.value).startswith(message)
