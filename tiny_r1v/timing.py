"""Wall-clock timing of named phases: ``with timed(seconds, "rollout"): ...`` adds the block's
seconds to ``seconds["rollout"]`` (added, so a phase entered several times sums)."""

from __future__ import annotations

import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager


@contextmanager
def timed(seconds: MutableMapping[str, float], key: str) -> Iterator[None]:
    """Add the wall-clock seconds the block takes to ``seconds[key]`` (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
