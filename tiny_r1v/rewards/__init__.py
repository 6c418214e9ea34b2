"""Rule-based rewards (SPEC.md §1): answer extraction, format, per-task accuracy, and a
timeout-safe process pool that scores batches of responses."""

from tiny_r1v.rewards.accuracy import (
    ACCURACY_REGISTRY,
    Score,
    get_accuracy,
    register_accuracy,
    score,
)
from tiny_r1v.rewards.extract import extract_answer, format_score
from tiny_r1v.rewards.pool import PoolStats, ScoreRequest, ScorerPool, score_request

__all__ = [
    "ACCURACY_REGISTRY",
    "PoolStats",
    "Score",
    "ScoreRequest",
    "ScorerPool",
    "extract_answer",
    "format_score",
    "get_accuracy",
    "register_accuracy",
    "score",
    "score_request",
]
