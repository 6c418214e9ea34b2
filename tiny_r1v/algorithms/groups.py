"""Per-group reductions over a flat batch: responses tied to their prompt by a group id.

Every function takes ``values`` of shape ``(B,)`` and ``group`` of shape ``(B,)`` (long ids in
``0..num_groups-1``) and returns ``(num_groups,)``; index the result with ``group`` to broadcast it
back to ``(B,)``. A group without members gets 0, so callers read only groups that have members.
"""

from __future__ import annotations

import torch


def count_groups(group: torch.Tensor) -> int:
    """``G``: one more than the largest id (0 for an empty batch)."""
    return int(group.max()) + 1 if group.numel() else 0


def group_size(group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``|g|``: members per group, long."""
    return torch.bincount(group, minlength=num_groups)


def group_sum(values: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``sum_{i in g} values_i`` per group."""
    return torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, group, values)


def _group_reduce(values: torch.Tensor, group: torch.Tensor, num_groups: int, reduce: str) -> torch.Tensor:
    empty = torch.zeros(num_groups, dtype=values.dtype, device=values.device)
    return empty.scatter_reduce(0, group, values, reduce, include_self=False)


def group_max(values: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``max_{i in g} values_i`` per group."""
    return _group_reduce(values, group, num_groups, "amax")


def group_min(values: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``min_{i in g} values_i`` per group."""
    return _group_reduce(values, group, num_groups, "amin")


def group_mean_std(
    values: torch.Tensor, group: torch.Tensor, num_groups: int, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and population standard deviation per group.

    ``mu = sum w v / sum w``, ``sigma = sqrt(sum w (v - mu)^2 / sum w)``. A 0/1 ``weights`` mask
    gives the plain statistics of the masked members; a group whose weights sum to 0 gives NaN,
    which the caller must mask out.
    """
    weight_sum = group_sum(weights, group, num_groups)
    mean = group_sum(weights * values, group, num_groups) / weight_sum
    variance = group_sum(weights * (values - mean[group]).square(), group, num_groups) / weight_sum
    return mean, variance.sqrt()


def zero_for_equal_groups(
    advantages: torch.Tensor, values: torch.Tensor, group: torch.Tensor, num_groups: int
) -> torch.Tensor:
    """0 for every response of a group whose ``values`` are all equal (a group of one included).

    A group normalisation of equal values is 0 in exact arithmetic; rounding leaves noise there
    (~1e-10 in float64, up to ~0.06 for verl's GRPO in float32). SPEC §2: all-equal groups give 0.
    """
    spread = group_max(values, group, num_groups) - group_min(values, group, num_groups)
    return torch.where(spread[group] > 0, advantages, torch.zeros_like(advantages))
