"""A process pool that scores responses with a per-sample timeout (SPEC.md §1).

A reward function that raises, or runs past its time limit (sympy can take minutes on an
adversarial expression), yields accuracy 0 and is counted; it never hangs the training
iteration. The format reward does not depend on the scorer: it is a linear-time check of the
response, computed in the caller's process for such a sample, so a well-formed answer whose
grading failed keeps its format reward. Each sample runs in a worker process of a
``pebble.ProcessPool``, which kills and replaces a worker whose task runs past the timeout.
Workers are started once and reused across batches.

Start method: ``forkserver``, with the scoring modules preloaded in the fork server. The parent
may be a Ray actor with threads running, where ``fork`` is unsafe; ``spawn`` is safe but every
new worker then pays the import of math-verify/sympy, including each replacement for a worker
killed on timeout, which forking from a server that has already imported them avoids (timings
in docs/benchmarks.md, "Scorer pool"). If the process's fork server was already started by
someone else, the preload does not apply: workers then import on their own, correct but slower.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import pebble

from tiny_r1v.rewards import accuracy
from tiny_r1v.rewards.accuracy import Score, get_accuracy, score
from tiny_r1v.rewards.extract import format_score
from tiny_r1v.tasks import PromptFormat, check_prompt_format

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreRequest:
    """One response to score: the arguments of ``score``. Checked on construction, in the
    caller's process, so a misconfigured run fails at once instead of scoring 0 everywhere."""

    task: str
    response: str
    ground_truth: str
    prompt_format: PromptFormat = "boxed"
    format_weight: float = 0.1

    def __post_init__(self) -> None:
        for name in ("task", "response", "ground_truth", "prompt_format"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, got {type(getattr(self, name)).__name__}")
        if isinstance(self.format_weight, bool) or not isinstance(self.format_weight, (int, float)):
            raise TypeError(f"format_weight must be a number, got {type(self.format_weight).__name__}")
        get_accuracy(self.task)
        check_prompt_format(self.prompt_format)
        if not 0.0 <= self.format_weight <= 1.0:
            raise ValueError(f"format_weight must be in [0, 1], got {self.format_weight}")


def score_request(request: ScoreRequest) -> Score:
    """``score`` applied to a request: the pool's default scoring function."""
    return score(
        request.task,
        request.response,
        request.ground_truth,
        prompt_format=request.prompt_format,
        format_weight=request.format_weight,
    )


def unscored(request: ScoreRequest) -> Score:
    """The score of a request whose scoring function raised or timed out: accuracy 0, the
    response's own format reward, and their total."""
    return Score.combine(0.0, format_score(request.response, request.prompt_format), request.format_weight)


@dataclass
class PoolStats:
    """Counts of samples whose scoring failed since the last reset."""

    timeouts: int = 0
    """Samples killed at the per-sample timeout (scored 0)."""
    errors: int = 0
    """Samples whose scoring function raised, or whose worker died (scored 0)."""

    def add(self, other: PoolStats) -> None:
        """Add another set of counts to these."""
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def _init_worker() -> None:
    """Leave time limits to the pool, which counts them (see ``accuracy.MATH_VERIFY_TIMEOUT_S``).

    math-verify then warns, once per process, that the caller must enforce a timeout itself; the
    pool does, and its timeout warnings are math-verify's only ones, so they are silenced here.
    """
    accuracy.MATH_VERIFY_TIMEOUT_S = None
    logging.getLogger("math_verify").setLevel(logging.ERROR)


def _mp_context() -> multiprocessing.context.BaseContext:
    """The ``forkserver`` context, with the scorers preloaded in the server (see module doc)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([accuracy.__name__])
    return context


class ScorerPool:
    """Scores batches of ``ScoreRequest`` in ``num_workers`` processes, ``timeout_s`` per sample.

    ``fn`` replaces the scoring function (tests use it to inject hangs and errors). Workers call
    it by reference, so it must be a module-level function that a fresh interpreter can import;
    the workers inherit the parent's ``sys.path`` at the time the fork server started.

    One batch at a time: ``score_batch`` is not meant to be called from several threads at
    once. ``stats`` counts over all batches until ``reset_stats``. Use as a context manager, or
    call ``close``.
    """

    def __init__(
        self,
        num_workers: int,
        timeout_s: float,
        fn: Callable[[ScoreRequest], Score] = score_request,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self.stats = PoolStats()
        self._fn = fn
        self._pool = self._new_pool()

    def _new_pool(self) -> pebble.ProcessPool:
        return pebble.ProcessPool(max_workers=self.num_workers, initializer=_init_worker, context=_mp_context())

    def _live_pool(self) -> pebble.ProcessPool:
        """The worker pool, replaced if pebble gave up on it.

        pebble marks a pool broken when a worker dies while no task is running (say, the OOM
        killer takes an idle worker); the tasks it held were already counted as errors.
        """
        if not self._pool.active:
            logger.warning("scorer pool broke; starting a new one")
            self._pool.join()
            self._pool = self._new_pool()
        return self._pool

    def score_batch(self, items: Sequence[ScoreRequest]) -> list[Score]:
        """Scores in the order of ``items``; a sample that raised or timed out scores `unscored`."""
        pool = self._live_pool()
        futures = [pool.schedule(self._fn, args=(item,), timeout=self.timeout_s) for item in items]
        batch = PoolStats()
        scores: list[Score] = []
        for item, future in zip(items, futures, strict=True):
            try:
                scores.append(future.result())
            except TimeoutError:
                logger.warning("scoring timed out (task %s)", item.task)
                scores.append(unscored(item))
                batch.timeouts += 1
            except Exception as error:  # the scorer's own error, or pebble.ProcessExpired
                logger.warning("scoring failed (task %s): %r", item.task, error)
                scores.append(unscored(item))
                batch.errors += 1
        self.stats.add(batch)
        return scores

    def reset_stats(self) -> PoolStats:
        """Return the counts so far and start again from zero (call once per training step)."""
        stats, self.stats = self.stats, PoolStats()
        return stats

    def close(self) -> None:
        """Stop the workers (no batch may be in flight)."""
        self._pool.close()
        self._pool.join()

    def __enter__(self) -> ScorerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
