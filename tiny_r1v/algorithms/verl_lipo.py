"""LIPO in verl's advantage-estimator registry, under the name ``lipo``.

Importing this module registers it, so verl's own trainer selects ``grpo`` or ``lipo`` by name;
the maths is :func:`tiny_r1v.algorithms.lipo.lipo_advantage`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from verl.trainer.ppo.core_algos import register_adv_est

from tiny_r1v.algorithms.lipo import lipo_advantage


def _lipo_settings(config: Any) -> dict[str, Any]:
    """The ``lipo`` section of an algorithm config (our dataclass, verl's AlgoConfig or a dict)."""
    if config is None:
        return {}
    section = config.get("lipo") if isinstance(config, Mapping) or hasattr(config, "get") else None
    if section is None:
        section = getattr(config, "lipo", None)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        section = {name: getattr(section, name) for name in section.__dataclass_fields__}
    return {key: value for key, value in section.items() if value is not None}


@register_adv_est("lipo")
def compute_lipo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float = 1e-6,
    config: Any = None,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's advantage-estimator interface for LIPO (same contract as its ``grpo``).

    Args:
        token_level_rewards: ``(B, T)`` rewards, summed over tokens to one score per response.
        response_mask: ``(B, T)`` 1 on generated tokens; its row sums are the lengths and ``T``
            is the default ``l_max``.
        index: ``(B,)`` prompt group labels.
        config: algorithm config; its ``lipo`` section (attribute or key) overrides the
            defaults. Unset ``xi`` means 0 (binary rewards): verl has no task to infer it from.

    Returns:
        ``(advantages, returns)``, both ``(B, T)``: the sequence advantage on every response token.
    """
    settings = {"l_max": response_mask.shape[-1], **_lipo_settings(config)}
    output = lipo_advantage(
        token_level_rewards.sum(dim=-1),
        response_mask.sum(dim=-1),
        index,
        epsilon=epsilon,
        **settings,
    )
    advantages = output.advantages.unsqueeze(-1) * response_mask
    return advantages, advantages
