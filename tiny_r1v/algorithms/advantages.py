"""One registry of sequence-level advantage estimators (SPEC.md §2 and §5), selected by name.

Every estimator has one signature, :data:`AdvantageFn`: a :class:`ScoredGroups` batch and the
algorithm config in, an :class:`AdvantageResult` out. ``grpo`` and ``dr_grpo`` are verl's maths;
``lipo`` is :func:`tiny_r1v.algorithms.lipo.lipo_advantage`; the length-control field shapes the
reward (:mod:`tiny_r1v.algorithms.length_field`) and then normalises it within each group with
verl's GRPO (or RLOO where its paper trains with that).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.utils import as_torch_index

from tiny_r1v.algorithms import length_field
from tiny_r1v.algorithms.groups import count_groups, zero_for_equal_groups
from tiny_r1v.algorithms.lipo import lipo_advantage
from tiny_r1v.config.train import AlgorithmConfig


def group_ids(uids: Sequence[Hashable]) -> torch.Tensor:
    """``(B,)`` long group ids in ``0..G-1`` from per-response prompt labels (e.g. uid strings).

    Equal labels share an id; the ids are dense whatever the labels look like.
    """
    labels = as_torch_index(list(uids), device="cpu")
    return torch.unique(labels, return_inverse=True)[1]


@dataclass(frozen=True)
class ScoredGroups:
    """One iteration's scored responses, many prompt groups flattened into one batch of ``B``.

    Responses to one prompt share a ``group`` id; groups may differ in size and be interleaved.
    Every tensor is ``(B,)`` on the CPU, where verl's GRPO loop builds its statistics.
    """

    rewards: torch.Tensor
    """float32 total reward ``r_i`` (SPEC §1)."""
    lengths: torch.Tensor
    """long generated tokens ``L_i``."""
    group: torch.Tensor
    """long group id in ``0..G-1`` (see :func:`group_ids`)."""
    correct: torch.Tensor
    """bool, the answer counts as correct (SPEC §5: binary tasks accuracy = 1; OCR ``r_i >= q_min``)."""
    truncated: torch.Tensor
    """bool, the response hit the response limit."""
    l_max: int
    """The rollout's response limit in tokens."""

    def __post_init__(self) -> None:
        expected = {
            "rewards": torch.float32,
            "lengths": torch.long,
            "group": torch.long,
            "correct": torch.bool,
            "truncated": torch.bool,
        }
        shape = self.rewards.shape
        for name, dtype in expected.items():
            tensor = getattr(self, name)
            if tensor.ndim != 1 or tensor.shape != shape:
                raise ValueError(f"{name} must be 1-D of the rewards' shape {tuple(shape)}, got {tuple(tensor.shape)}")
            if tensor.dtype != dtype:
                raise ValueError(f"{name} must be {dtype}, got {tensor.dtype}")
        if self.group.numel() and int(self.group.min()) < 0:
            raise ValueError("group ids must be >= 0")
        if self.l_max < 1:
            raise ValueError(f"l_max must be >= 1, got {self.l_max}")

    @property
    def num_groups(self) -> int:
        """``G``."""
        return count_groups(self.group)


@dataclass(frozen=True)
class AdvantageResult:
    """An estimator's output."""

    advantages: torch.Tensor
    """``(B,)`` float32 sequence-level advantage, in the batch's order (broadcast over the tokens)."""
    metrics: dict[str, float]
    """Scalar metrics of the batch, by name."""


AdvantageFn = Callable[[ScoredGroups, AlgorithmConfig], AdvantageResult]
ADVANTAGES: dict[str, AdvantageFn] = {}
"""Every estimator by name; the names are exactly ``AlgorithmConfig.adv_estimator``'s choices."""


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator adding an estimator to :data:`ADVANTAGES` under ``name`` (each name once)."""

    def decorator(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGES:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGES[name] = fn
        return fn

    return decorator


def advantage_stats(advantages: torch.Tensor) -> dict[str, float]:
    """``adv/mean``, ``adv/std`` (sample std; 0 for one response), ``adv/max``, ``adv/min``, ``adv/zero_frac``."""
    return {
        "adv/mean": advantages.mean().item(),
        "adv/std": advantages.std().item() if len(advantages) > 1 else 0.0,
        "adv/max": advantages.max().item(),
        "adv/min": advantages.min().item(),
        "adv/zero_frac": (advantages == 0).float().mean().item(),
    }


def compute_advantages(batch: ScoredGroups, cfg: AlgorithmConfig) -> AdvantageResult:
    """The advantages of ``cfg.adv_estimator``, its metrics and :func:`advantage_stats`."""
    if cfg.adv_estimator not in ADVANTAGES:
        raise ValueError(f"unknown advantage estimator {cfg.adv_estimator!r}; known: {sorted(ADVANTAGES)}")
    result = ADVANTAGES[cfg.adv_estimator](batch, cfg)
    return replace(result, metrics={**result.metrics, **advantage_stats(result.advantages)})


def verl_outcome_advantage(name: str, scores: torch.Tensor, group: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """One score per response through verl's registered outcome estimator ``name`` (``grpo``, ``rloo``).

    The scores go in as ``(B, 1)`` float64 token-level rewards under a ``(B, 1)`` mask of ones: an
    outcome estimator only reads each row's sum. float64, and exactly 0 for a group whose scores are
    all equal (a group of one included), because verl's float32 statistics give such groups
    advantages up to ~0.06 (e.g. 3 or 6 to 8 responses that all score 0.9).

    Args:
        scores: ``(B,)`` float.
        group: ``(B,)`` long group ids.
        kwargs: the estimator's own options, e.g. ``norm_adv_by_std_in_grpo``.

    Returns:
        ``(B,)`` float32.
    """
    column = scores.to(torch.float64).unsqueeze(-1)
    advantages, _ = get_adv_estimator_fn(name)(
        token_level_rewards=column, response_mask=torch.ones_like(column), index=group.cpu().numpy(), **kwargs
    )
    return zero_for_equal_groups(advantages[:, 0], column[:, 0], group, count_groups(group)).to(torch.float32)


@register_advantage("grpo")
def grpo(batch: ScoredGroups, cfg: AlgorithmConfig) -> AdvantageResult:
    """GRPO (Shao et al., arXiv 2402.03300): ``A_i = (r_i - mean r) / (std r + 1e-6)``, verl's maths."""
    return AdvantageResult(verl_outcome_advantage("grpo", batch.rewards, batch.group), {})


@register_advantage("dr_grpo")
def dr_grpo(batch: ScoredGroups, cfg: AlgorithmConfig) -> AdvantageResult:
    """Dr. GRPO (Liu et al., arXiv 2503.20783): ``A_i = r_i - mean r``, verl's GRPO without the std.

    The other half of the method is the loss aggregation ``seq-mean-token-sum-norm``, which the
    config requires with this estimator.
    """
    advantages = verl_outcome_advantage("grpo", batch.rewards, batch.group, norm_adv_by_std_in_grpo=False)
    return AdvantageResult(advantages, {})


@register_advantage("lipo")
def lipo(batch: ScoredGroups, cfg: AlgorithmConfig) -> AdvantageResult:
    """LIPO (SPEC §2; Tiny-R1V, arXiv 2510.08987) with the config's ``lipo`` section.

    An unresolved ``l_max`` is the batch's response limit; ``xi`` must be resolved (its default
    depends on the task, which only ``TrainConfig.validate()`` knows).
    """
    settings = asdict(cfg.lipo)
    if settings["xi"] is None:
        raise ValueError("algorithm.lipo.xi is unset: resolve the config with TrainConfig.validate()")
    if settings["l_max"] is None:
        settings["l_max"] = batch.l_max
    out = lipo_advantage(batch.rewards, batch.lengths, batch.group, correct=batch.correct, **settings)
    bonus = out.adjusted_rewards - batch.rewards
    metrics = {
        "lipo/bonus_mean": bonus.mean().item(),
        "lipo/boosted_frac": (bonus > 0).float().mean().item(),
        "lipo/penalized_frac": (bonus < 0).float().mean().item(),
        "lipo/l_opt_mean": out.l_opt.mean().item(),
        "lipo/weight_mean": out.weights.mean().item(),
    }
    return AdvantageResult(out.advantages, metrics)


def shaped_advantage(name: str, batch: ScoredGroups, shaped: torch.Tensor, baseline: str = "grpo") -> AdvantageResult:
    """Group-normalise a shaped reward with verl's ``baseline`` estimator; report the shaping.

    Args:
        name: the estimator, the prefix of its metrics.
        shaped: ``(B,)`` float64 shaped reward ``r'``.
        baseline: ``grpo`` or ``rloo``.
    """
    advantages = verl_outcome_advantage(baseline, shaped, batch.group)
    metrics = {
        f"{name}/reward_mean": shaped.mean().item(),
        f"{name}/shaping_mean": (shaped - batch.rewards.to(shaped.dtype)).mean().item(),
    }
    return AdvantageResult(advantages, metrics)


def _float64(batch: ScoredGroups) -> tuple[torch.Tensor, torch.Tensor]:
    """The rewards and lengths in float64, the dtype of the shaping maths."""
    return batch.rewards.to(torch.float64), batch.lengths.to(torch.float64)


@register_advantage("dapo_overlong")
def dapo_overlong(batch: ScoredGroups, cfg: AlgorithmConfig) -> AdvantageResult:
    """DAPO's soft overlong punishment (arXiv 2503.14476) added to the reward, then GRPO."""
    rewards, lengths = _float64(batch)
    l_cache = cfg.dapo_overlong.cache_fraction * batch.l_max
    penalty = length_field.overlong_penalty(lengths, batch.truncated, batch.l_max, l_cache)
    return shaped_advantage("dapo_overlong", batch, rewards + penalty)


@register_advantage("kimi")
def kimi(batch: ScoredGroups, cfg: AlgorithmConfig) -> AdvantageResult:
    """Kimi k1.5's length reward (arXiv 2501.12599), ``r + w * lambda``, then GRPO."""
    rewards, lengths = _float64(batch)
    bonus = length_field.kimi_length_reward(lengths, batch.correct, batch.group, batch.num_groups)
    return shaped_advantage("kimi", batch, rewards + cfg.kimi.weight * bonus)


@register_advantage("shorter_better")
def shorter_better(batch: ScoredGroups, cfg: AlgorithmConfig) -> AdvantageResult:
    """ShorterBetter (arXiv 2504.21370): ``alpha * correct - beta * |L - SOL|``, then GRPO."""
    _, lengths = _float64(batch)
    section = cfg.shorter_better
    shaped = length_field.shorter_better_reward(
        lengths, batch.correct, batch.group, batch.num_groups, alpha=section.alpha, beta=section.beta
    )
    return shaped_advantage("shorter_better", batch, shaped)


@register_advantage("efficient")
def efficient(batch: ScoredGroups, cfg: AlgorithmConfig) -> AdvantageResult:
    """Arora & Zanette (arXiv 2502.04463): ``correct * (1 - alpha * sigmoid(z))``, then RLOO or GRPO."""
    _, lengths = _float64(batch)
    section = cfg.efficient
    shaped = length_field.efficient_reward(lengths, batch.correct, batch.group, batch.num_groups, alpha=section.alpha)
    return shaped_advantage("efficient", batch, shaped, baseline=section.baseline)


@register_advantage("linear")
def linear(batch: ScoredGroups, cfg: AlgorithmConfig) -> AdvantageResult:
    """A linear length penalty on correct answers (SPEC §5): ``r - gamma * L / L_max * correct``, then GRPO."""
    rewards, lengths = _float64(batch)
    shaped = length_field.linear_reward(rewards, lengths, batch.correct, l_max=batch.l_max, gamma=cfg.linear.gamma)
    return shaped_advantage("linear", batch, shaped)
