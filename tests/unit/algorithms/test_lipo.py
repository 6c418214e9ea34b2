"""LIPO (SPEC.md §2): hand-computed groups, every switch, and vectorised == per-group loop."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn

from tiny_r1v.algorithms import lipo_advantage
from tiny_r1v.algorithms.lipo import length_decay

L_MAX = 100


def run(rewards, lengths, index=None, **switches):
    index = [0] * len(rewards) if index is None else index
    switches.setdefault("l_max", L_MAX)
    return lipo_advantage(
        torch.tensor(rewards, dtype=torch.float64),
        torch.tensor(lengths, dtype=torch.float64),
        torch.tensor(index),
        **switches,
    )


def test_length_decay_endpoints_and_midpoint():
    phi = length_decay(torch.tensor([0.0, 50.0, 100.0, 250.0], dtype=torch.float64), 100)
    assert phi.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0], abs=1e-12)


def test_all_correct_group_grpo_zero_lipo_prefers_short():
    rewards, lengths = [1.0, 1.0, 1.0, 1.0], [10, 20, 30, 40]
    grpo, _ = compute_grpo_outcome_advantage(torch.tensor(rewards).unsqueeze(-1), torch.ones(4, 1), np.zeros(4))
    assert torch.all(grpo == 0)

    out = run(rewards, lengths)
    # phi(10)=0.975528, phi(20)=0.904508, phi(30)=0.793893; r' = 1 + 0.2 * phi; longest untouched.
    assert out.adjusted_rewards.tolist() == pytest.approx([1.195106, 1.180902, 1.158779, 1.0], abs=1e-6)
    # L_opt = max(2 * 10, median(10..40) = 25) = 25; w = exp(-|L - 25| / 12.5).
    assert out.l_opt.tolist() == [25.0] * 4
    assert out.weights.tolist() == pytest.approx([0.301194, 0.670320, 0.670320, 0.301194], abs=1e-6)
    # Weighted mean 1.147429, weighted std 0.064440.
    assert out.advantages.tolist() == pytest.approx([0.739841, 0.519425, 0.176118, -2.287800], abs=1e-5)
    assert out.advantages[:3].gt(0).all() and out.advantages[3] < 0


def test_wrong_shorter_gets_no_bonus_and_penalty_switch_reduces_it():
    rewards, lengths = [0.1, 1.0], [10, 20]  # shorter: right format, wrong answer
    assert run(rewards, lengths).adjusted_rewards.tolist() == pytest.approx([0.1, 1.0])
    penalised = run(rewards, lengths, penalize_worse_shorter=True).adjusted_rewards
    assert penalised.tolist() == pytest.approx([0.1 * (1 - 0.2 * 0.975528), 1.0], abs=1e-7)


def test_bonus_needs_q_min_and_length_gap():
    # Both wrong (below q_min): no bonus even though their rewards are equal.
    assert run([0.1, 0.1], [10, 20]).adjusted_rewards.tolist() == pytest.approx([0.1, 0.1])
    # Gap of 3 tokens under delta_len = 5: no bonus; with delta_len = 3: bonus.
    assert run([1.0, 1.0], [10, 13], delta_len=5).adjusted_rewards.tolist() == [1.0, 1.0]
    assert run([1.0, 1.0], [10, 13], delta_len=3).adjusted_rewards[0] > 1.0


def test_continuous_ocr_rewards_with_tolerance():
    # Sorted: (5, 0.80), (15, 0.83), (25, 0.60). First pair within xi=0.05 -> boost; the second
    # pair's shorter one is the better one (gap -0.23), so nothing happens there. phi(5) = 0.993844.
    out = run([0.83, 0.6, 0.8], [15, 25, 5], xi=0.05)
    assert out.adjusted_rewards.tolist() == pytest.approx([0.83, 0.6, 0.8 * (1 + 0.2 * 0.993844)], abs=1e-6)
    # With xi = 0 the same first pair differs by 0.03 > 0 and gets nothing.
    assert run([0.83, 0.6, 0.8], [15, 25, 5], xi=0.0).adjusted_rewards.tolist() == pytest.approx([0.83, 0.6, 0.8])


def test_equal_lengths_give_no_bonus_and_zero_advantage():
    out = run([1.0, 1.0, 1.0], [7, 7, 7])
    assert out.adjusted_rewards.tolist() == [1.0, 1.0, 1.0]
    assert out.l_opt.tolist() == [14.0] * 3
    assert out.advantages.tolist() == [0.0, 0.0, 0.0]


def test_zero_length_responses_stay_finite():
    out = run([1.0, 1.0, 0.0], [0, 0, 0])
    assert out.l_opt.tolist() == [1.0] * 3  # floored: 2 * 0 and the median are both 0
    assert torch.isfinite(out.advantages).all()
    out = run([1.0, 0.0], [0, 6])
    assert out.l_opt.tolist() == [3.0, 3.0]
    assert out.adjusted_rewards.tolist() == [1.0, 0.0]
    assert out.advantages[0] > 0 > out.advantages[1]


def test_l_opt_over_correct_switch():
    rewards, lengths = [1.0, 0.0, 0.0, 1.0], [4, 10, 12, 30]
    assert run(rewards, lengths).l_opt.tolist() == [11.0] * 4  # max(8, median 11)
    assert run(rewards, lengths, l_opt_over="correct").l_opt.tolist() == [17.0] * 4  # max(8, 17)
    explicit = torch.tensor([False, True, False, False])
    assert run(rewards, lengths, l_opt_over="correct", correct=explicit).l_opt.tolist() == [20.0] * 4
    # No correct response at all: fall back to every response.
    assert run([0.0, 0.0, 0.1], [4, 10, 12], l_opt_over="correct").l_opt.tolist() == [10.0] * 3


def test_scale_by_weight_switch():
    rewards, lengths = [1.0, 0.0, 1.0, 0.0], [10, 20, 30, 60]
    plain = run(rewards, lengths)
    scaled = run(rewards, lengths, scale_by_weight=True)
    factor = 4 * plain.weights / plain.weights.sum()
    torch.testing.assert_close(scaled.advantages, plain.advantages * factor)


def test_eta_and_kappa_and_l_max_switches():
    base = run([1.0, 1.0], [10, 20])
    assert run([1.0, 1.0], [10, 20], eta=0.0).adjusted_rewards.tolist() == [1.0, 1.0]
    assert run([1.0, 1.0], [10, 20], eta=0.4).adjusted_rewards[0] - 1 == pytest.approx(
        2 * (base.adjusted_rewards[0].item() - 1)
    )
    assert run([1.0, 1.0], [10, 20], l_max=10).adjusted_rewards.tolist() == [1.0, 1.0]  # phi(10) = 0
    # L_opt = max(20, 15) = 20; kappa = 1 -> w = exp(-10 / 20).
    assert run([1.0, 1.0], [10, 20], kappa=1.0).weights[0].item() == pytest.approx(math.exp(-0.5))


def test_registered_in_verl_and_broadcast_over_tokens():
    fn = get_adv_estimator_fn("lipo")
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    rewards = torch.zeros(4, 4)
    rewards[torch.arange(4), mask.sum(-1).long() - 1] = torch.tensor([1.0, 1.0, 0.0, 1.0])
    advantages, returns = fn(token_level_rewards=rewards, response_mask=mask, index=np.array(["a", "a", "b", "b"]))
    expected = lipo_advantage(rewards.sum(-1), mask.sum(-1), ["a", "a", "b", "b"], l_max=4).advantages
    torch.testing.assert_close(advantages, expected.unsqueeze(-1) * mask)
    assert advantages is returns or torch.equal(advantages, returns)
    # A `lipo` section in the algorithm config reaches the maths.
    no_bonus, _ = fn(
        token_level_rewards=rewards, response_mask=mask, index=np.array([0, 0, 1, 1]), config={"lipo": {"eta": 0.0}}
    )
    assert no_bonus[0, 0] == 0.0  # group 0: equal rewards, no bonus -> zero advantage


def test_rejects_bad_shapes_and_settings():
    with pytest.raises(ValueError, match="1-D"):
        lipo_advantage(torch.zeros(3), torch.zeros(2), [0, 0, 0], l_max=10)
    with pytest.raises(ValueError, match="l_max"):
        lipo_advantage(torch.zeros(2), torch.zeros(2), [0, 0], l_max=0)
    with pytest.raises(ValueError, match="l_opt_over"):
        lipo_advantage(torch.zeros(2), torch.zeros(2), [0, 0], l_max=5, l_opt_over="best")


# --- Reference: a plain loop over groups, written straight from SPEC §2 ---------------------------


def reference(
    rewards,
    lengths,
    index,
    *,
    xi=0.0,
    q_min=0.5,
    delta_len=1,
    eta=0.2,
    l_max=L_MAX,
    penalize_worse_shorter=False,
    l_opt_over="all",
    kappa=0.5,
    scale_by_weight=False,
):
    out = {}
    for g in dict.fromkeys(index):
        members = [i for i, label in enumerate(index) if label == g]
        ranked = sorted(members, key=lambda i: (lengths[i], rewards[i]))
        adjusted = {i: rewards[i] for i in members}
        for a, b in zip(ranked, ranked[1:], strict=False):
            phi = 0.5 * (1 + math.cos(math.pi * min(lengths[a], l_max) / l_max))
            gap = rewards[b] - rewards[a]
            if abs(gap) <= xi and rewards[a] >= q_min and lengths[b] - lengths[a] >= delta_len:
                adjusted[a] = rewards[a] * (1 + eta * phi)
            elif gap > xi and penalize_worse_shorter:
                adjusted[a] = rewards[a] * (1 - eta * phi)
        pool = [i for i in members if rewards[i] >= q_min] if l_opt_over == "correct" else members
        pool = pool or members
        pool_lengths = [lengths[i] for i in pool]
        l_opt = max(1.0, max(2 * min(pool_lengths), statistics.median(pool_lengths)))
        w = {i: math.exp(-abs(lengths[i] - l_opt) / (kappa * l_opt)) for i in members}
        total = sum(w.values())
        mu = sum(w[i] * adjusted[i] for i in members) / total
        sigma = math.sqrt(sum(w[i] * (adjusted[i] - mu) ** 2 for i in members) / total)
        equal = len({adjusted[i] for i in members}) == 1
        for i in members:
            a = 0.0 if equal else (adjusted[i] - mu) / (sigma + 1e-6)
            if scale_by_weight:
                a *= len(members) * w[i] / total
            out[i] = (a, adjusted[i], w[i], l_opt)
    return [out[i] for i in range(len(rewards))]


SWITCHES = [
    {},
    {"penalize_worse_shorter": True},
    {"l_opt_over": "correct"},
    {"scale_by_weight": True},
    {"xi": 0.05, "delta_len": 3, "eta": 0.5, "kappa": 0.25, "l_max": 40},
]


def random_batch(rng, continuous):
    sizes = rng.integers(1, 9, size=rng.integers(1, 12))
    index = np.repeat(rng.permutation(len(sizes)) * 7, sizes)  # sparse, unsorted labels
    perm = rng.permutation(len(index))
    index = index[perm]
    n = len(index)
    if continuous:
        rewards = np.round(rng.uniform(0, 1, n), 2)
    else:
        rewards = rng.choice([0.0, 0.1, 0.9, 1.0], size=n)
    lengths = rng.integers(0, 60, size=n).astype(float)  # many ties at this range
    return rewards, lengths, index


@pytest.mark.parametrize("switches", SWITCHES)
@pytest.mark.parametrize("continuous", [False, True])
def test_vectorised_equals_loop(switches, continuous):
    rng = np.random.default_rng(hash((continuous, str(switches))) % 2**32)
    for _ in range(40):
        rewards, lengths, index = random_batch(rng, continuous)
        out = run(rewards.tolist(), lengths.tolist(), index.tolist(), **{"l_max": L_MAX, **switches})
        expected = np.array(reference(rewards.tolist(), lengths.tolist(), index.tolist(), **switches))
        for column, got in enumerate([out.advantages, out.adjusted_rewards, out.weights, out.l_opt]):
            assert torch.isfinite(got).all()
            np.testing.assert_allclose(got.numpy(), expected[:, column], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("switches", SWITCHES)
def test_invariant_to_batch_split_and_order(switches):
    rng = np.random.default_rng(7)
    for _ in range(20):
        rewards, lengths, index = random_batch(rng, continuous=True)
        whole = run(rewards.tolist(), lengths.tolist(), index.tolist(), **switches)
        # Split along group boundaries: each part on its own gives the same numbers.
        labels = np.unique(index)
        first = np.isin(index, labels[: len(labels) // 2])
        for part in (first, ~first):
            if part.any():
                alone = run(rewards[part].tolist(), lengths[part].tolist(), index[part].tolist(), **switches)
                torch.testing.assert_close(alone.advantages, whole.advantages[torch.from_numpy(part)])
        # Shuffling the batch permutes the outputs and nothing else.
        perm = rng.permutation(len(index))
        shuffled = run(rewards[perm].tolist(), lengths[perm].tolist(), index[perm].tolist(), **switches)
        torch.testing.assert_close(shuffled.advantages, whole.advantages[torch.from_numpy(perm)])


def test_float32_inputs_keep_dtype_and_stay_finite():
    rewards = torch.rand(64, dtype=torch.float32)
    out = lipo_advantage(rewards, torch.randint(0, 5, (64,)), torch.arange(64) // 8, l_max=4)
    assert out.advantages.dtype == torch.float32
    assert all(torch.isfinite(t).all() for t in (out.advantages, out.adjusted_rewards, out.weights, out.l_opt))


def test_registry_reads_our_validated_config():
    from tiny_r1v.config import load_config
    from tiny_r1v.config.train import TrainConfig

    overrides = ["algorithm.lipo.eta=0.5", "rollout.max_response_length=4"]
    cfg = load_config(TrainConfig, "configs/quickstart.yaml", overrides)
    mask = torch.ones(2, 4)
    mask[0, 2:] = 0
    rewards = torch.zeros(2, 4)
    rewards[:, 0] = 1.0
    advantages, _ = get_adv_estimator_fn("lipo")(
        token_level_rewards=rewards, response_mask=mask, index=np.zeros(2), config=cfg.algorithm
    )
    expected = run([1.0, 1.0], [2, 4], eta=0.5, l_max=4).advantages
    torch.testing.assert_close(advantages[:, 0], expected.float())
