"""What a rollout engine is told: the checkpoint it serves and how to sample (no vLLM import here,
so drivers and configs can build these cheaply)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tiny_r1v.device import compute_dtype, resolve_device


@dataclass(frozen=True)
class EngineModel:
    """The checkpoint an engine serves."""

    path: str
    """Hugging Face model directory."""
    dtype: torch.dtype
    """Compute dtype, already resolved for the device (see `tiny_r1v.device.compute_dtype`)."""
    trust_remote_code: bool = False

    @classmethod
    def resolve(cls, path: str, dtype: str, device: str, trust_remote_code: bool) -> EngineModel:
        """`path` served in the dtype a config's `dtype` and `device` settings (``auto`` allowed)
        resolve to."""
        return cls(path, compute_dtype(dtype, resolve_device(device)), trust_remote_code)


@dataclass(frozen=True)
class SamplingSpec:
    """How responses are drawn."""

    n: int
    """Responses per prompt."""
    temperature: float
    """0 is greedy decoding (then ``n`` must be 1)."""
    top_p: float
    max_tokens: int
    """Generation limit per response."""


def sample_seed(seed: int, slot: int, n: int) -> int:
    """The vLLM seed of prompt slot ``slot``'s request; vLLM seeds its samples ``k`` with
    ``sample_seed + k``, so sample ``k`` draws with ``(seed + slot) * n + k`` and no two samples
    of consecutive slots share their random draws."""
    return (seed + slot) * n
