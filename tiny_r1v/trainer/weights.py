"""Weights in transit from the learners to the rollout workers: how they are packed, gathered
once per version and loaded into every rollout worker (the one place weight transport lives).

Packing: one uint8 array per tensor.

Ray's object store serialises numpy arrays out of band: `ray.put` (or an actor method's return)
copies each array's bytes once into shared memory, and every reader gets a view of them, while a
torch tensor is pickled and copied out again by every reader. So rank 0 hands its full state dict
over as byte views of its own tensors (no copy on its side) and each rollout worker reads the
tensors as views of the shared memory; vLLM's reload then copies them into its own parameters.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import ActorUnavailableError, RayActorError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackedWeights:
    """A state dict as byte arrays, with each tensor's dtype and shape."""

    arrays: tuple[np.ndarray, ...]
    """uint8 [nbytes of the tensor] per tensor, in `entries` order."""
    entries: tuple[tuple[str, torch.dtype, tuple[int, ...]], ...]
    """(name, dtype, shape) per tensor, in the state dict's order."""

    @classmethod
    def pack(cls, state: Mapping[str, torch.Tensor]) -> PackedWeights:
        """Byte views of `state`'s tensors (copies only of non-contiguous ones)."""
        entries = tuple((name, tensor.dtype, tuple(tensor.shape)) for name, tensor in state.items())
        arrays = tuple(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy() for tensor in state.values())
        return cls(arrays, entries)

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.arrays)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors, as views of the arrays (read-only when they came through the object store)."""
        out = {}
        with warnings.catch_warnings():
            # torch warns that writes to a read-only array's tensor are undefined: nothing writes.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for (name, dtype, shape), array in zip(self.entries, self.arrays, strict=True):
                if array.size == 0:  # its stride is 0, which a dtype view refuses
                    out[name] = torch.empty(shape, dtype=dtype)
                else:
                    out[name] = torch.from_numpy(array).view(dtype).view(shape)
        return out


def sync_metrics(loads: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The largest bytes and seconds of the rollout workers' loads of one version."""
    return {
        "sync/bytes": max((load["bytes"] for load in loads), default=0),
        "sync/load_seconds": max((load["seconds"] for load in loads), default=0.0),
    }


class WeightSync:
    """The driver's side of weight transport: the learners' weights of the current version,
    gathered at most once, and loaded into rollout workers.

    Args:
        learners: the learner actors (``packed_weights`` is collective; rank 0 returns them).
        rollouts: the rollout worker actors (``load_weights(weights, version)``).
        version: the version the learners hold (0: the start weights, +1 per sync).
    """

    def __init__(self, learners: Sequence[Any], rollouts: Sequence[Any], version: int = 0) -> None:
        self.learners, self.rollouts, self.version = learners, rollouts, version
        self._ref: ray.ObjectRef | None = None

    def current(self) -> ray.ObjectRef:
        """The learners' weights of `version` in the object store, gathered once per version."""
        if self._ref is None:
            refs = [learner.packed_weights.remote() for learner in self.learners]
            ray.get(refs[1:])  # every rank takes part in the gather; rank 0's result holds the weights
            self._ref = refs[0]
        return self._ref

    def advance(self) -> list[ray.ObjectRef]:
        """The learners stepped: gather their new version and start loading it into every rollout
        worker, each after the calls already queued on it; `collect` waits for the loads."""
        self.version += 1
        self._ref = None
        return self.push()

    def push(self) -> list[ray.ObjectRef]:
        """Start loading the current weights into every rollout worker (one call each, in order)."""
        weights = self.current()
        return [worker.load_weights.remote(weights, self.version) for worker in self.rollouts]

    def collect(self, calls: Sequence[ray.ObjectRef]) -> list[dict[str, float]]:
        """Wait for the loads `push` started; returns those that answered (see `sync_metrics`).
        One whose worker failed meanwhile is left to Ray to restart: `catch_up` brings it up to
        date when it next answers on an old version."""
        loads = []
        for index, call in enumerate(calls):
            try:
                loads.append(ray.get(call))
            except (RayActorError, ActorUnavailableError) as err:
                logger.warning("rollout worker %d failed while loading weights (%s)", index, err)
        return loads

    def load_all(self) -> None:
        """Load the current weights into every rollout worker and wait for them."""
        self.collect(self.push())

    def catch_up(self, worker: Any) -> None:
        """Load the current weights into one worker (restarted by Ray on the start weights)."""
        ray.get(worker.load_weights.remote(self.current(), self.version))
