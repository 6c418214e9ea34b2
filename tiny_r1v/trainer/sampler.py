"""The order in which training prompts are visited: a pure function of (seed, step).

Epoch ``e`` visits the dataset in a permutation seeded by ``(seed, e)``; step ``s`` takes the
next ``batch`` indices of that endless stream. A resumed run therefore needs only the step
number to continue with exactly the prompts the interrupted run would have seen.
"""

from __future__ import annotations

import numpy as np


def epoch_order(size: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """Dataset indices in the order epoch ``epoch`` visits them."""
    if not shuffle:
        return np.arange(size)
    return np.random.default_rng([seed, epoch]).permutation(size)


def step_indices(size: int, batch: int, step: int, seed: int, shuffle: bool = True) -> list[int]:
    """Dataset indices of the prompts of step ``step`` (0-based); batches may span epochs."""
    if size < 1:
        raise ValueError("the dataset is empty")
    start = step * batch
    first, last = start // size, (start + batch - 1) // size
    stream = np.concatenate([epoch_order(size, epoch, seed, shuffle) for epoch in range(first, last + 1)])
    offset = start - first * size
    return stream[offset : offset + batch].tolist()
