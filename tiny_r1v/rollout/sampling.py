"""What a rollout engine is told: the checkpoint it serves and how to sample (no vLLM import here,
so drivers and configs can build these cheaply)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

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


SeedMode = Literal["per_request", "per_call"]
"""How a seeded generate call makes its samples reproducible.

``per_request``: every request carries its own vLLM seed (`sample_seed`), so a prompt's samples
depend on the call's seed and its slot alone, whatever else the batch holds or however it is
split across engines. vLLM then draws each such request's noise with its own torch generator, one
request after another on every decoding step: slow on a GPU.

``per_call``: no request carries a seed; the engine reseeds its workers' torch generators with
`call_seed` (from the call's seed and first slot) and samples the whole batch with one draw per
step, as unseeded vLLM does (verl, EasyR1 and OpenRLHF seed only at engine start). The samples are
then a function of the call as a whole: the same weights, prompts in the same order, seed and first
slot on the same hardware and engine settings give the same samples, in a long-running engine or
a freshly restarted one (the call also empties the prefix and image caches, whose contents would
change how vLLM splits the batch into steps). Another batch composition or split across engines
gives other samples.
"""


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
    seed_mode: SeedMode = "per_request"
    """How a seeded call draws its samples (see `SeedMode`)."""


def sample_seed(seed: int, slot: int, n: int) -> int:
    """The vLLM seed of prompt slot ``slot``'s request; vLLM seeds its samples ``k`` with
    ``sample_seed + k``, so sample ``k`` draws with ``(seed + slot) * n + k`` and no two samples
    of consecutive slots share their random draws."""
    return (seed + slot) * n


def call_seed(seed: int, first_slot: int) -> int:
    """The torch seed of a ``per_call`` generate call whose first prompt is slot ``first_slot``:
    a hash, so calls of different run seeds or slots draw unrelated streams (a 64-bit value, the
    range `torch.manual_seed` takes)."""
    digest = hashlib.blake2b(f"{seed}:{first_slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
