"""Rule-based rewards (SPEC.md §1): answer extraction, format, per-task accuracy, and a
timeout-safe process pool that scores batches of responses."""

from tiny_r1v.rewards.accuracy import (
    ACCURACY_REGISTRY,
    Score,
    get_accuracy,
    register_accuracy,
    score,
)
from tiny_r1v.rewards.extract import (
    PROMPT_FORMATS,
    PromptFormat,
    check_prompt_format,
    extract_answer,
    format_score,
)
from tiny_r1v.rewards.pool import PoolStats, ScoreRequest, ScorerPool, score_request

__all__ = [
    "ACCURACY_REGISTRY",
    "PROMPT_FORMATS",
    "PoolStats",
    "PromptFormat",
    "Score",
    "ScoreRequest",
    "ScorerPool",
    "check_prompt_format",
    "extract_answer",
    "format_score",
    "get_accuracy",
    "register_accuracy",
    "score",
    "score_request",
]
