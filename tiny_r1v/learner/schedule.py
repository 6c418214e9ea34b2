"""Learning-rate schedules: the multiplier of the peak learning rate at each step (pure).

Linear warm-up, then constant or a half cosine down to ``min_ratio``. Unlike transformers'
schedules the warm-up's first step already takes ``1 / warmup_steps`` of the peak, not 0: an RL
step is too costly to spend on an update that changes nothing.
"""

from __future__ import annotations

import math
from typing import Literal

LrSchedule = Literal["constant", "cosine"]


def lr_factor(
    step: int, total_steps: int, warmup_steps: int = 0, schedule: LrSchedule = "constant", min_ratio: float = 0.0
) -> float:
    """Multiplier of the peak lr at `step` (0-based) of `total_steps`.

    ``(step + 1) / warmup_steps`` while ``step < warmup_steps``; then 1 (constant), or
    ``min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2`` (cosine) with ``p`` the share of the
    steps after the warm-up already taken.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
