"""Rewards and advantages for one iteration's completions (the scoring actor's body, `GroupScorer`).

Rule-based scores come from the timeout-safe process pool; advantages from the estimator registry
(`tiny_r1v.algorithms.advantages`), where ``grpo``, ``lipo`` and the length-control field are one
config switch apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoTokenizer

from tiny_r1v.algorithms import ScoredGroups, compute_advantages, group_ids
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
        """Rewards (SPEC §1) and the advantages of `algorithm.adv_estimator` of a whole iteration."""
        scores, lengths, metrics = self._rule_scores(completions, references)
        algo = self.cfg.algorithm
        accuracy = torch.tensor([s.accuracy for s in scores], dtype=torch.float32)
        batch = ScoredGroups(
            rewards=torch.tensor([s.total for s in scores], dtype=torch.float32),
            lengths=lengths,
            group=group_ids([c.uid for c in completions]),
            # Binary rewards: accuracy 1; OCR's continuous 1 - NED: at least LIPO's quality bar.
            correct=accuracy >= algo.lipo.q_min,
            truncated=torch.tensor([c.finish_reason == "length" for c in completions]),
            l_max=self.cfg.rollout.max_response_length,
        )
        result = compute_advantages(batch, algo)
        return ScoredBatch(advantages=result.advantages.tolist(), metrics={**metrics, **result.metrics})

    def validation_metrics(
        self, completions: Sequence[Completion], references: Mapping[str, Reference]
    ) -> dict[str, float]:
        """Metrics of validation completions: `score`'s reward and length metrics, under `val/`."""
        metrics = self._rule_scores(completions, references)[2]
        return {"val/samples": float(len(completions)), **{f"val/{k}": v for k, v in metrics.items()}}

    def close(self) -> None:
        """Stop the scoring processes."""
        self.pool.close()
