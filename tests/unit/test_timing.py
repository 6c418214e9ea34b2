from __future__ import annotations

import time

import pytest

from tiny_r1v.timing import timed


def test_timed_adds_each_blocks_seconds_also_when_it_raises():
    seconds: dict[str, float] = {}
    with timed(seconds, "a"):
        time.sleep(0.01)
    first = seconds["a"]
    assert first >= 0.01
    with pytest.raises(RuntimeError), timed(seconds, "a"):
        time.sleep(0.01)
        raise RuntimeError
    assert seconds["a"] >= first + 0.01
    assert set(seconds) == {"a"}
