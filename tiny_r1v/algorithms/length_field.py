"""The length-control field (SPEC.md §5): each method's shaped reward, as pure tensor maths.

Every function works on a flat batch of many prompt groups: ``(B,)`` tensors, with ``group`` the
``(B,)`` long group id in ``0..num_groups-1``, and returns the ``(B,)`` shaped reward ``r'`` in
float64 (callers pass float64 values). The advantage is then a group normalisation of ``r'``
(:mod:`tiny_r1v.algorithms.advantages` runs verl's GRPO or RLOO on it).
"""

from __future__ import annotations

import torch

from tiny_r1v.algorithms.groups import group_max, group_mean_std, group_min, group_size, group_sum


def overlong_penalty(lengths: torch.Tensor, truncated: torch.Tensor, l_max: int, l_cache: float) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al., arXiv 2503.14476, "Overlong Reward Shaping"), added to the reward.

    With ``L_exp = l_max - l_cache``: 0 for ``L <= L_exp``, ``(L_exp - L) / l_cache`` for
    ``L_exp < L <= l_max`` and -1 beyond; a truncated response (cut at the limit) gets -1.

    Args:
        lengths: ``(B,)`` float64 generated tokens.
        truncated: ``(B,)`` bool, the response hit the response limit.
        l_max: the rollout's response limit.
        l_cache: the punishment interval, in ``(0, l_max]``.
    """
    ramp = ((l_max - l_cache - lengths) / l_cache).clamp(min=-1.0, max=0.0)
    return torch.where(truncated, torch.full_like(ramp, -1.0), ramp)


def kimi_length_reward(
    lengths: torch.Tensor, correct: torch.Tensor, group: torch.Tensor, num_groups: int
) -> torch.Tensor:
    """Kimi k1.5's length reward (Kimi Team, arXiv 2501.12599, "Length Penalty"), to be added with a weight.

    ``lambda_i = 0.5 - (L_i - L_min) / (L_max_g - L_min)`` over the group's lengths, and 0 when
    they are all equal (the paper leaves that case open; SPEC §5 sets 0). A correct response gets
    ``lambda_i``, a wrong one ``min(0, lambda_i)``: only correct answers are rewarded for brevity.

    Args:
        lengths: ``(B,)`` float64 generated tokens.
        correct: ``(B,)`` bool.
    """
    shortest = group_min(lengths, group, num_groups)[group]
    span = group_max(lengths, group, num_groups)[group] - shortest
    ratio = (lengths - shortest) / torch.where(span > 0, span, torch.ones_like(span))
    lam = torch.where(span > 0, 0.5 - ratio, torch.zeros_like(ratio))
    return torch.where(correct, lam, lam.clamp(max=0.0))


def sample_optimal_length(
    lengths: torch.Tensor, correct: torch.Tensor, group: torch.Tensor, num_groups: int
) -> torch.Tensor:
    """ShorterBetter's SOL (Yi et al., arXiv 2504.21370), per response's group.

    The shortest correct length of the group, or the mean length of all its responses when none
    is correct.

    Returns:
        ``(B,)`` float64.
    """
    shortest_correct = group_min(torch.where(correct, lengths, torch.full_like(lengths, torch.inf)), group, num_groups)
    any_correct = group_sum(correct.to(torch.long), group, num_groups) > 0
    counts = group_size(group, num_groups).to(lengths.dtype)
    mean = group_sum(lengths, group, num_groups) / counts
    return torch.where(any_correct, shortest_correct, mean)[group]


def shorter_better_reward(
    lengths: torch.Tensor, correct: torch.Tensor, group: torch.Tensor, num_groups: int, *, alpha: float, beta: float
) -> torch.Tensor:
    """ShorterBetter (Yi et al., arXiv 2504.21370): ``r'_i = alpha * correct_i - beta * |L_i - SOL|``.

    The reward replaces the task reward (format included), as in the paper.
    """
    sol = sample_optimal_length(lengths, correct, group, num_groups)
    return alpha * correct.to(lengths.dtype) - beta * (lengths - sol).abs()


def efficient_reward(
    lengths: torch.Tensor,
    correct: torch.Tensor,
    group: torch.Tensor,
    num_groups: int,
    *,
    alpha: float,
    epsilon: float = 1e-7,
) -> torch.Tensor:
    """Arora & Zanette, "Training Language Models to Reason Efficiently" (arXiv 2502.04463).

    ``r'_i = correct_i * (1 - alpha * sigmoid((L_i - mean_c) / (std_c + epsilon)))``, with the mean
    and (population) standard deviation of the lengths of the group's correct responses. The paper
    leaves the one-correct-response case open; ``epsilon`` makes its z-score 0, so it gets
    ``1 - alpha / 2``. A wrong response gets 0, as in the paper (the format reward is not used).
    """
    mean, std = group_mean_std(lengths, group, num_groups, correct.to(lengths.dtype))
    # Groups without a correct response have NaN statistics; only their wrong rows read them.
    z = (lengths - mean[group]) / (std[group] + epsilon)
    return torch.where(correct, 1.0 - alpha * torch.sigmoid(z), torch.zeros_like(z))


def linear_reward(
    rewards: torch.Tensor, lengths: torch.Tensor, correct: torch.Tensor, *, l_max: int, gamma: float
) -> torch.Tensor:
    """A linear length penalty on correct answers (SPEC §5 ``linear``, no paper).

    ``r'_i = r_i - gamma * (L_i / l_max) * correct_i``.
    """
    return rewards - gamma * (lengths / l_max) * correct.to(rewards.dtype)
