"""LIPO: length-informed relative policy optimisation (SPEC.md §2; Tiny-R1V, arXiv 2510.08987).

Pure tensor maths. One call handles a whole batch of many prompt groups, ragged sizes allowed:
responses are tied to their prompt by a group index, as verl's ``index``/``uid``. The maths is in
float64 (rewards are few, and float64 makes the "all-equal group gives exactly 0" rule exact);
outputs come back in the rewards' dtype. verl's registration of ``lipo`` lives in
:mod:`tiny_r1v.algorithms.verl_lipo`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from verl.utils import as_torch_index

from tiny_r1v.algorithms.groups import count_groups, group_mean_std, group_size, group_sum, zero_for_equal_groups

LOptOver = Literal["all", "correct"]


@dataclass(frozen=True)
class LipoOutput:
    """Per-response results, each of shape ``(B,)`` in the batch's original order."""

    advantages: torch.Tensor
    """Sequence-level advantage ``A_i`` (to be broadcast over the response tokens)."""
    adjusted_rewards: torch.Tensor
    """``r'_i`` after the pairwise length adjustment."""
    weights: torch.Tensor
    """Length weights ``w_i = exp(-|L_i - L_opt| / (kappa * L_opt))``."""
    l_opt: torch.Tensor
    """The optimal length of each response's group."""


def length_decay(lengths: torch.Tensor, l_max: float) -> torch.Tensor:
    """``phi(L) = 0.5 * (1 + cos(pi * min(L, l_max) / l_max))``: 1 at L = 0, 0 from ``l_max`` on."""
    return 0.5 * (1.0 + torch.cos(math.pi * lengths.clamp(max=l_max) / l_max))


def _sort_within_groups(group: torch.Tensor, *keys: torch.Tensor) -> torch.Tensor:
    """Permutation ordering by group, then by each key in turn.

    Successive stable sorts, least significant key first, so the result is a lexicographic sort.
    """
    order = torch.arange(group.numel(), device=group.device)
    for key in (*reversed(keys), group):
        order = order[torch.argsort(key[order], stable=True)]
    return order


def adjust_rewards(
    rewards: torch.Tensor,
    lengths: torch.Tensor,
    group: torch.Tensor,
    *,
    xi: float,
    q_min: float,
    delta_len: float,
    eta: float,
    l_max: float,
    penalize_worse_shorter: bool,
) -> torch.Tensor:
    """Adaptive reward adjustment (SPEC §2 step 2) over adjacent pairs in length order.

    Args:
        rewards: ``(B,)`` float64 raw rewards.
        lengths: ``(B,)`` float64 response lengths in tokens.
        group: ``(B,)`` long group ids.

    Returns:
        ``(B,)`` adjusted rewards ``r'``. Every comparison uses the raw rewards, so one boost
        never feeds the next pair's test. Equal lengths are ordered by reward, ascending, so the
        best of a tie neighbours the next longer response and batch order never matters.
    """
    order = _sort_within_groups(group, lengths, rewards)
    r, length, g = rewards[order], lengths[order], group[order]
    shorter, longer = slice(None, -1), slice(1, None)
    same_group = g[shorter] == g[longer]
    gap = r[longer] - r[shorter]
    similar = same_group & (gap.abs() <= xi) & (r[shorter] >= q_min) & (length[longer] - length[shorter] >= delta_len)
    factor = torch.ones_like(r)
    phi = length_decay(length[shorter], l_max)
    factor[shorter] = torch.where(similar, 1.0 + eta * phi, factor[shorter])
    if penalize_worse_shorter:
        worse = same_group & (gap > xi)
        factor[shorter] = torch.where(worse, 1.0 - eta * phi, factor[shorter])
    adjusted = torch.empty_like(r)
    adjusted[order] = r * factor
    return adjusted


def optimal_lengths(lengths: torch.Tensor, group: torch.Tensor, include: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``L_opt = max(2 * min L, median L)`` per group over the responses in ``include``.

    A group with no included response falls back to all of its responses. The median of an
    even count is the mean of the two middle values. ``L_opt`` is floored at 1 token so the
    weight kernel never divides by zero when every response is empty.

    Returns:
        ``(num_groups,)`` float64.
    """
    has_any = group_sum(include.to(torch.long), group, num_groups) > 0
    include = include | ~has_any[group]
    order = _sort_within_groups(group, ~include, lengths)
    count = group_sum(include.to(torch.long), group, num_groups)
    size = group_size(group, num_groups)
    start = torch.cumsum(size, 0) - size
    sorted_lengths = lengths[order]
    shortest = sorted_lengths[start]
    median = 0.5 * (sorted_lengths[start + (count - 1) // 2] + sorted_lengths[start + count // 2])
    return torch.maximum(2.0 * shortest, median).clamp(min=1.0)


def length_weights(
    lengths: torch.Tensor, group: torch.Tensor, include: torch.Tensor, num_groups: int, kappa: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each response's ``L_opt`` and weight ``w_i = exp(-|L_i - L_opt| / (kappa * L_opt))`` (SPEC §2 step 3).

    Returns:
        ``(l_opt, weights)``, both ``(B,)`` float64.
    """
    l_opt = optimal_lengths(lengths, group, include, num_groups)[group]
    return l_opt, torch.exp(-(lengths - l_opt).abs() / (kappa * l_opt))


def weighted_group_normalise(
    values: torch.Tensor, weights: torch.Tensor, group: torch.Tensor, num_groups: int, epsilon: float
) -> torch.Tensor:
    """``A_i = (r'_i - mu) / (sigma + epsilon)`` with the weighted group statistics of SPEC §2 step 3.

    Returns:
        ``(B,)`` in the values' dtype.
    """
    mean, std = group_mean_std(values, group, num_groups, weights)
    return (values - mean[group]) / (std[group] + epsilon)


def scale_by_weights(
    advantages: torch.Tensor, weights: torch.Tensor, group: torch.Tensor, num_groups: int
) -> torch.Tensor:
    """``A_i * G * w_i / sum_j w_j`` (SPEC §2 switch ``lipo.scale_by_weight``)."""
    size = group_size(group, num_groups).to(advantages.dtype)
    return advantages * size[group] * weights / group_sum(weights, group, num_groups)[group]


def _check_inputs(rewards: torch.Tensor, lengths: torch.Tensor, l_max: float, kappa: float, l_opt_over: str) -> None:
    if rewards.ndim != 1 or rewards.shape != lengths.shape:
        raise ValueError(f"rewards and lengths must be 1-D of one shape, got {rewards.shape} and {lengths.shape}")
    if l_max <= 0 or kappa <= 0:
        raise ValueError(f"l_max and kappa must be > 0, got l_max={l_max}, kappa={kappa}")
    if l_opt_over not in ("all", "correct"):
        raise ValueError(f"l_opt_over must be 'all' or 'correct', got {l_opt_over!r}")


def lipo_advantage(
    rewards: torch.Tensor,
    lengths: torch.Tensor,
    index: Any,
    *,
    xi: float = 0.0,
    q_min: float = 0.5,
    delta_len: float = 1,
    eta: float = 0.2,
    l_max: float,
    penalize_worse_shorter: bool = False,
    l_opt_over: LOptOver = "all",
    kappa: float = 0.5,
    scale_by_weight: bool = False,
    correct: torch.Tensor | None = None,
    epsilon: float = 1e-6,
) -> LipoOutput:
    """LIPO advantages for a batch of groups (SPEC §2 steps 1–3; Tiny-R1V, arXiv 2510.08987).

    Args:
        rewards: ``(B,)`` scalar reward per response.
        lengths: ``(B,)`` generated tokens per response.
        index: ``(B,)`` group label per response (tensor, array or list of any hashable labels).
        correct: ``(B,)`` bool, which responses count as correct for ``l_opt_over="correct"``;
            defaults to ``rewards >= q_min``.
        Other keywords: the switches of SPEC §2, with its defaults; ``l_max`` has none because it
        is the rollout's maximum response length.

    Returns:
        A :class:`LipoOutput` of ``(B,)`` tensors in the rewards' dtype.
    """
    _check_inputs(rewards, lengths, l_max, kappa, l_opt_over)
    device = rewards.device
    group = as_torch_index(index, device=device)
    if group.numel() != rewards.numel():
        raise ValueError(f"index has {group.numel()} entries for {rewards.numel()} rewards")
    num_groups = count_groups(group)
    r = rewards.to(torch.float64)
    length = lengths.to(device=device, dtype=torch.float64)

    adjusted = adjust_rewards(
        r,
        length,
        group,
        xi=xi,
        q_min=q_min,
        delta_len=delta_len,
        eta=eta,
        l_max=l_max,
        penalize_worse_shorter=penalize_worse_shorter,
    )
    if l_opt_over == "all":
        include = torch.ones_like(group, dtype=torch.bool)
    else:
        include = (r >= q_min) if correct is None else correct.to(device=device, dtype=torch.bool)
    l_opt, weights = length_weights(length, group, include, num_groups, kappa)
    advantages = weighted_group_normalise(adjusted, weights, group, num_groups, epsilon)
    advantages = zero_for_equal_groups(advantages, adjusted, group, num_groups)
    if scale_by_weight:
        advantages = scale_by_weights(advantages, weights, group, num_groups)

    dtype = rewards.dtype
    return LipoOutput(
        advantages=advantages.to(dtype),
        adjusted_rewards=adjusted.to(dtype),
        weights=weights.to(dtype),
        l_opt=l_opt.to(dtype),
    )
