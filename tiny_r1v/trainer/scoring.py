"""Rewards and advantages for one iteration's completions (the RewardScorer actor's body).

Rule-based scores come from the timeout-safe process pool; advantages from verl's estimator
registry, where ``grpo`` and ``lipo`` are one config switch apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from transformers import AutoTokenizer
from verl.trainer.ppo.core_algos import get_adv_estimator_fn

from tiny_r1v.algorithms import lipo_advantage
from tiny_r1v.config.train import TrainConfig
from tiny_r1v.console import quiet_actor
from tiny_r1v.protocol import Completion
from tiny_r1v.rewards import Score, ScorerPool
from tiny_r1v.rewards.completions import Reference, decode, score_texts
from tiny_r1v.trainer.checkpoint import log_dir


@dataclass(frozen=True)
class ScoredBatch:
    """Per-completion advantages in the completions' order, and the batch's metrics."""

    advantages: list[float]
    metrics: dict[str, float]


def length_metrics(lengths: torch.Tensor, truncated: torch.Tensor) -> dict[str, float]:
    """Mean, median, 90th percentile and the share cut off at the response limit."""
    lengths = lengths.to(torch.float64)
    return {
        "length/mean": lengths.mean().item(),
        "length/p50": lengths.quantile(0.5).item(),
        "length/p90": lengths.quantile(0.9).item(),
        "length/clip_frac": truncated.to(torch.float64).mean().item(),
    }


class GroupScorer:
    """Scores completions and turns each prompt group's rewards into advantages."""

    def __init__(self, cfg: TrainConfig) -> None:
        quiet_actor(log_dir(cfg), "scorer", cfg.trainer.verbose)
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        self.pool = ScorerPool(cfg.reward.num_workers, cfg.reward.timeout_s)

    def _rule_scores(
        self, completions: Sequence[Completion], references: Mapping[str, Reference]
    ) -> tuple[list[Score], torch.Tensor, dict[str, float]]:
        """Rule-based scores (SPEC §1), response lengths and their metrics."""
        scores = score_texts(
            self.pool,
            decode(self.tokenizer, completions),
            [references[c.uid] for c in completions],
            self.cfg.data.prompt_format,
            self.cfg.reward.format_weight,
        )
        stats = self.pool.reset_stats()
        lengths = torch.tensor([len(c.token_ids) for c in completions])
        metrics = {
            "reward/mean": float(np.mean([s.total for s in scores])),
            "reward/accuracy": float(np.mean([s.accuracy for s in scores])),
            "reward/format": float(np.mean([s.format for s in scores])),
            "reward/timeouts": float(stats.timeouts),
            "reward/errors": float(stats.errors),
            **length_metrics(lengths, torch.tensor([c.finish_reason == "length" for c in completions])),
        }
        return scores, lengths, metrics

    def score(self, completions: Sequence[Completion], references: Mapping[str, Reference]) -> ScoredBatch:
        """Rewards (SPEC §1) and advantages (SPEC §2, or GRPO) of a whole iteration."""
        scores, lengths, metrics = self._rule_scores(completions, references)
        rewards = torch.tensor([s.total for s in scores], dtype=torch.float32)
        accuracy = torch.tensor([s.accuracy for s in scores], dtype=torch.float32)
        uids = [c.uid for c in completions]
        advantages = self._advantages(rewards, accuracy, lengths, uids, metrics)
        metrics.update(
            {
                "adv/mean": advantages.mean().item(),
                "adv/std": advantages.std().item() if len(advantages) > 1 else 0.0,
                "adv/max": advantages.max().item(),
                "adv/min": advantages.min().item(),
                "adv/zero_frac": (advantages == 0).float().mean().item(),
            }
        )
        return ScoredBatch(advantages=advantages.tolist(), metrics=metrics)

    def _advantages(
        self,
        rewards: torch.Tensor,
        accuracy: torch.Tensor,
        lengths: torch.Tensor,
        uids: list[str],
        metrics: dict[str, float],
    ) -> torch.Tensor:
        algo = self.cfg.algorithm
        if algo.adv_estimator == "lipo":
            # Called directly rather than through the registry for its by-products (adjusted
            # rewards, L_opt), which the metrics report; the registry entry is a thin adapter.
            out = lipo_advantage(rewards, lengths, uids, correct=accuracy >= algo.lipo.q_min, **asdict(algo.lipo))
            bonus = out.adjusted_rewards - rewards
            metrics.update(
                {
                    "lipo/bonus_mean": bonus.mean().item(),
                    "lipo/boosted_frac": (bonus > 0).float().mean().item(),
                    "lipo/penalized_frac": (bonus < 0).float().mean().item(),
                    "lipo/l_opt_mean": out.l_opt.mean().item(),
                    "lipo/weight_mean": out.weights.mean().item(),
                }
            )
            return out.advantages
        width = int(lengths.max())
        mask = (torch.arange(width) < lengths.unsqueeze(-1)).float()
        token_rewards = torch.zeros_like(mask)
        token_rewards[torch.arange(len(rewards)), lengths - 1] = rewards
        advantages, _ = get_adv_estimator_fn(algo.adv_estimator)(
            token_level_rewards=token_rewards, response_mask=mask, index=np.array(uids), config=algo
        )
        return advantages[:, 0]

    def validation_metrics(
        self, completions: Sequence[Completion], references: Mapping[str, Reference]
    ) -> dict[str, float]:
        """Metrics of validation completions: `score`'s reward and length metrics, under `val/`."""
        metrics = self._rule_scores(completions, references)[2]
        return {"val/samples": float(len(completions)), **{f"val/{k}": v for k, v in metrics.items()}}

    def close(self) -> None:
        """Stop the scoring processes."""
        self.pool.close()
