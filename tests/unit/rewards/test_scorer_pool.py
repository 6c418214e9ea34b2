"""ScorerPool: scores like the in-process ``score``, in order, and survives hangs and errors.

The pool's workers call its scoring function by reference, so the misbehaving one used here,
``scripted``, is a module-level function: the workers import this file as ``test_reward_pool``
from the ``sys.path`` they inherit (pytest puts ``tests/`` on it).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator

import pytest

from tiny_r1v.rewards import PoolStats, Score, ScoreRequest, ScorerPool, score, score_request

TIMEOUT_S = 1.0
MARGIN_S = 3.0
HANG = "<hang>"
RAISE = "<raise>"

ZERO = Score(0.0, 0.0, 0.0)

REAL_ITEMS = [
    ScoreRequest("math", r"<think>Half.</think> \boxed{\frac{1}{2}}", "0.5"),
    ScoreRequest("math", r"\boxed{B.}", "B"),
    ScoreRequest("math", r"<think>1/3</think> \boxed{0.3}", "1/3", format_weight=0.5),
    ScoreRequest("chart", r"<think>Bar.</think> \boxed{47\%}", "45"),
    ScoreRequest("chart", r"<think>Axis.</think><answer>Canada</answer>", "Canada", "answer_tags"),
    ScoreRequest("ocr", r"<think>Sign.</think> \boxed{hello world}", "Hello World"),
    ScoreRequest("ocr", r"\boxed{STOP}", "STOP"),
    ScoreRequest("vqa", r"<think>Round.</think> \boxed{A circle.}", "circle"),
    ScoreRequest("vqa", "It is red.", "red"),
]


def scripted(request: ScoreRequest) -> Score:
    """Hang or raise when the response says so; otherwise score normally."""
    if HANG in request.response:
        time.sleep(60)
    if RAISE in request.response:
        raise RuntimeError("scorer bug")
    return score_request(request)


def _item(response: str) -> ScoreRequest:
    return ScoreRequest("vqa", response, "circle")


@pytest.fixture(scope="module")
def scripted_pool() -> Iterator[ScorerPool]:
    with ScorerPool(num_workers=2, timeout_s=TIMEOUT_S, fn=scripted) as pool:
        pool.score_batch(REAL_ITEMS)  # start-up (workers, imports) is not what the tests time
        pool.reset_stats()
        yield pool


@pytest.fixture
def pool(scripted_pool: ScorerPool) -> ScorerPool:
    scripted_pool.reset_stats()
    return scripted_pool


def test_batch_equals_in_process_score() -> None:
    items = REAL_ITEMS * 3
    with ScorerPool(num_workers=2, timeout_s=10.0) as default_pool:
        results = default_pool.score_batch(items)
        assert default_pool.stats == PoolStats()
    expected = [
        score(
            item.task,
            item.response,
            item.ground_truth,
            prompt_format=item.prompt_format,
            format_weight=item.format_weight,
        )
        for item in items
    ]
    assert results == expected
    assert {r.accuracy for r in results} >= {0.0, 1.0}  # the batch has right and wrong answers


def test_hanging_item_is_killed_at_the_timeout(pool: ScorerPool) -> None:
    start = time.perf_counter()
    results = pool.score_batch([_item(HANG)])
    elapsed = time.perf_counter() - start
    assert results == [ZERO]
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + MARGIN_S
    assert pool.stats == PoolStats(timeouts=1)


def test_raising_item_scores_zero_and_counts_an_error(pool: ScorerPool) -> None:
    assert pool.score_batch([_item(RAISE)]) == [ZERO]
    assert pool.stats == PoolStats(errors=1)


def test_mixed_batch_keeps_order_and_counts(pool: ScorerPool) -> None:
    circle = r"<think>Round.</think> \boxed{circle}"
    square = r"<think>Corners.</think> \boxed{square}"
    items = [_item(circle), _item(HANG), _item(square), _item(RAISE), _item(circle)]
    results = pool.score_batch(items)
    assert results == [Score(1.0, 1.0, 1.0), ZERO, Score(0.0, 1.0, 0.1), ZERO, Score(1.0, 1.0, 1.0)]
    assert pool.stats == PoolStats(timeouts=1, errors=1)


def test_failed_scoring_keeps_the_format_reward(pool: ScorerPool) -> None:
    items = [
        ScoreRequest("vqa", rf"<think>Stuck.</think> \boxed{{{HANG}}}", "circle"),
        ScoreRequest("vqa", rf"<think>Bug.</think><answer>{RAISE}</answer>", "circle", "answer_tags", 0.5),
        ScoreRequest("vqa", rf"{RAISE} \boxed{{circle}}", "circle"),  # no reasoning: format 0
    ]
    assert pool.score_batch(items) == [Score(0.0, 1.0, 0.1), Score(0.0, 1.0, 0.5), ZERO]
    assert pool.stats == PoolStats(timeouts=1, errors=2)


def test_pool_keeps_working_after_a_kill(pool: ScorerPool) -> None:
    pool.score_batch([_item(HANG), _item(HANG)])  # both workers killed and replaced
    results = pool.score_batch(REAL_ITEMS)
    assert results == [score_request(item) for item in REAL_ITEMS]
    assert pool.stats == PoolStats(timeouts=2)


def test_reset_stats_returns_the_counts_and_zeroes_them(pool: ScorerPool) -> None:
    pool.score_batch([_item("x"), _item(RAISE)])
    assert pool.reset_stats() == PoolStats(errors=1)
    assert pool.stats == PoolStats()


def test_pool_recovers_when_an_idle_worker_dies() -> None:
    """pebble gives up on a pool whose idle worker dies (e.g. the OOM killer); ours restarts it."""
    others = set(multiprocessing.active_children())
    with ScorerPool(num_workers=1, timeout_s=TIMEOUT_S, fn=scripted) as pool:
        pool.score_batch([_item("x")])
        (worker,) = set(multiprocessing.active_children()) - others
        os.kill(worker.pid, signal.SIGKILL)
        time.sleep(1.0)  # let pebble notice
        assert pool.score_batch(REAL_ITEMS) == [score_request(item) for item in REAL_ITEMS]
        assert pool.stats == PoolStats()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"task": "geometry"}, ValueError, "unknown task 'geometry'"),
        ({"task": None}, TypeError, "task must be a str, got NoneType"),
        ({"response": None}, TypeError, "response must be a str, got NoneType"),
        ({"ground_truth": 1}, TypeError, "ground_truth must be a str, got int"),
        ({"prompt_format": "json"}, ValueError, "unknown prompt_format 'json'"),
        ({"format_weight": 1.5}, ValueError, r"format_weight must be in \[0, 1\], got 1.5"),
        ({"format_weight": float("nan")}, ValueError, r"format_weight must be in \[0, 1\], got nan"),
        ({"format_weight": "0.1"}, TypeError, "format_weight must be a number, got str"),
        ({"format_weight": True}, TypeError, "format_weight must be a number, got bool"),
    ],
)
def test_requests_are_checked_in_the_caller(kwargs: dict, error: type[Exception], message: str) -> None:
    fields = {"task": "math", "response": r"\boxed{1}", "ground_truth": "1", **kwargs}
    with pytest.raises(error, match=f"^{message}"):
        ScoreRequest(**fields)
