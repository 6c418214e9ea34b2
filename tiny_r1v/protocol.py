"""What crosses actor boundaries: prompts to the rollout workers, completions back, and the
samples the learners train on. Plain dataclasses of Python lists and PIL images, so Ray ships
them without custom serialisers; tensors are built on the receiving side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only an annotation: a bare GPU node may lack Pillow (bench/gpu_check.py)
    from PIL import Image


@dataclass(frozen=True)
class Prompt:
    """One prompt, already rendered with the model's chat template."""

    uid: str
    """Group label: every completion sampled from this prompt carries it."""
    text: str
    """Chat-templated prompt text, with one vision placeholder per image."""
    images: tuple[Image.Image, ...] = ()
    """RGB images, already resized within the configured pixel bounds."""


@dataclass(frozen=True)
class Completion:
    """One sampled response."""

    uid: str
    """The prompt's group label."""
    token_ids: tuple[int, ...]
    """Generated token ids, ``(L,)``; includes the stop token when the model emitted one."""
    logprobs: tuple[float, ...]
    """Rollout policy's log-probability of each generated token, ``(L,)``."""
    finish_reason: str
    """``"stop"`` (end-of-sequence or stop token) or ``"length"`` (hit the response limit)."""
    weight_version: int
    """Version of the weights that sampled it (0 = initial checkpoint, +1 per sync)."""
    prompt_tokens: int
    """Prompt length as the engine saw it (image placeholders expanded)."""


@dataclass(frozen=True)
class Generation:
    """A rollout worker's answer to one generate call."""

    completions: list[Completion]
    """``rollout.n`` completions per prompt (one when greedy), in prompt order."""
    seconds: float
    """How long the worker was busy with the call (time queued behind earlier calls left out)."""


@dataclass(frozen=True)
class TrainSample:
    """One response to train on, with its sequence-level advantage."""

    prompt: Prompt
    response_ids: tuple[int, ...]
    """Generated token ids, ``(L,)`` with ``L >= 1``."""
    advantage: float
    """Advantage broadcast to every response token."""
    rollout_logprobs: tuple[float, ...] = ()
    """The rollout policy's log-probability of each response token, ``(L,)``; empty when the
    response was not sampled by a rollout engine (a supervised target)."""
    weight_version: int = 0
    """Version of the weights that sampled the response (`Completion.weight_version`); the
    learners train on it at most ``trainer.max_staleness`` versions later."""
