"""Sampled completions to scores: the one path from generated token ids to SPEC §1 rewards,
shared by the training scorer and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tiny_r1v.protocol import Completion
from tiny_r1v.rewards.accuracy import Score
from tiny_r1v.rewards.pool import ScoreRequest, ScorerPool
from tiny_r1v.tasks import PromptFormat

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Reference:
    """What a prompt's completions are scored against."""

    task: str
    answer: str


def decode(tokenizer: PreTrainedTokenizerBase, completions: Sequence[Completion]) -> list[str]:
    """The completions' texts as the reward functions read them: special tokens (the stop token)
    removed."""
    return tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True)


def score_texts(
    pool: ScorerPool,
    texts: Sequence[str],
    references: Sequence[Reference],
    prompt_format: PromptFormat,
    format_weight: float,
) -> list[Score]:
    """SPEC §1 scores of `texts[i]` against `references[i]`, in order (timeouts and errors score
    as the pool says)."""
    requests = [
        ScoreRequest(
            task=reference.task,
            response=text,
            ground_truth=reference.answer,
            prompt_format=prompt_format,
            format_weight=format_weight,
        )
        for text, reference in zip(texts, references, strict=True)
    ]
    return pool.score_batch(requests)
