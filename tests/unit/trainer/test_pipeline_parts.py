"""Pipelined rollouts without actors: truncated importance weights (exact small cases, and the
policy loss they scale against a per-token loop), staleness and busy/idle metrics."""

from __future__ import annotations

import math

import pytest
import torch
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla
from verl.workers.config import FSDPActorConfig

from tiny_r1v.learner.inputs import EncodedPrompt, collate
from tiny_r1v.learner.worker import truncated_is_weights
from tiny_r1v.protocol import Prompt, TrainSample
from tiny_r1v.trainer.metrics import occupancy, staleness_metrics


def micro_batch(*responses: tuple[float, ...]):
    """A micro-batch of one sample per entry of `responses` (its rollout log-probs)."""
    prompt = EncodedPrompt(torch.arange(3), torch.zeros(3, dtype=torch.int32), None, None)
    samples = [
        (prompt, TrainSample(Prompt(f"p{i}", ""), tuple(range(len(lp))), 1.0, rollout_logprobs=lp))
        for i, lp in enumerate(responses)
    ]
    return collate(samples, pad_token_id=0)


def test_truncated_importance_weights_of_a_small_case():
    # Two micro-batches; the second sample of the first is one token shorter (padding).
    first = micro_batch((-0.5, -0.5, -3.0), (-1.0, -2.0))
    second = micro_batch((-1.0,))
    old = [torch.tensor([[0.0, -1.0, -2.0], [-1.0, -1.0, 5.0]]), torch.tensor([[-1.0 + math.log(3.0)]])]
    weights, metrics = truncated_is_weights([first, second], old, cap=2.0)
    # exp(old - rollout): e^0.5, e^-0.5, e^1 -> capped at 2; 1, e^1 -> 2; padding 0; 3 -> 2.
    expected = [torch.tensor([[math.exp(0.5), math.exp(-0.5), 2.0], [1.0, 2.0, 0.0]]), torch.tensor([[2.0]])]
    for got, want in zip(weights, expected, strict=True):
        torch.testing.assert_close(got, want)
    tokens = [math.exp(0.5), math.exp(-0.5), 2.0, 1.0, 2.0, 2.0]
    assert metrics["rollout/is_weight_mean"] == pytest.approx(sum(tokens) / 6)
    assert metrics["rollout/is_weight_max"] == 2.0
    assert metrics["rollout/is_clip_frac"] == pytest.approx(3 / 6)  # e^1, e^1 and 3 were cut


def test_truncated_importance_weights_are_off_without_a_cap_or_rollout_logprobs():
    mb = micro_batch((-0.5,))
    assert truncated_is_weights([mb], [torch.zeros(1, 1)], cap=None) == ([None], {})
    prompt = EncodedPrompt(torch.arange(3), torch.zeros(3, dtype=torch.int32), None, None)
    supervised = collate([(prompt, TrainSample(Prompt("p", ""), (1, 2), 1.0))], pad_token_id=0)
    assert truncated_is_weights([supervised], [torch.zeros(1, 2)], cap=2.0) == ([None], {})


def test_policy_loss_with_importance_weights_equals_a_per_token_loop():
    """verl's clipped loss as the learner calls it, with the weights, against the formula token
    by token: token-mean of w * max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))."""
    torch.manual_seed(0)
    old, new = torch.randn(3, 4) * 0.3, torch.randn(3, 4) * 0.3
    advantages = torch.tensor([1.0, -0.5, 2.0]).unsqueeze(-1).expand(3, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    weights = torch.rand(3, 4) * 2 * mask
    config = FSDPActorConfig(
        strategy="fsdp",
        clip_ratio_low=0.2,
        clip_ratio_high=0.3,
        ppo_mini_batch_size=3,
        ppo_micro_batch_size_per_gpu=3,
        rollout_n=1,
    )
    config.global_batch_info.update(dp_size=1, batch_num_tokens=float(mask.sum()), global_batch_size=3)
    loss, _ = compute_policy_loss_vanilla(
        old, new, advantages * mask, mask, "token-mean", config, rollout_is_weights=weights
    )
    terms = []
    for i in range(3):
        for j in range(4):
            if mask[i, j]:
                ratio, a = math.exp(new[i, j] - old[i, j]), float(advantages[i, j])
                clipped = min(max(ratio, 0.8), 1.3)
                token = max(-a * ratio, -a * clipped)
                if a < 0:  # verl's dual clip bounds a negative advantage's loss at -3A
                    token = min(token, -a * 3.0)
                terms.append(float(weights[i, j]) * token)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_staleness_and_occupancy_metrics():
    assert staleness_metrics([3, 3, 2, 1], learner_version=3) == {"staleness/mean": 0.75, "staleness/max": 2.0}
    assert occupancy(10.0, {"rollout": 8.0, "learner": 12.0}) == {
        "busy/rollout_s": 8.0,
        "idle/rollout_s": 2.0,
        "busy/learner_s": 12.0,
        "idle/learner_s": 0.0,
    }
