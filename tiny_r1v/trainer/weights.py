"""Weights in transit from the learners to the rollout workers: the driver's side of both
transports (`WeightSync`) and the object store's packing (the transfer engine's ends are
`tiny_r1v.rollout.transfer`).

Packing for the object store: one uint8 array per tensor.

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
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

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


@dataclass(frozen=True)
class SyncCalls:
    """The calls of one sync in flight: each rollout worker's load, and the learners' broadcast
    (transfer engine only)."""

    loads: list[ray.ObjectRef]
    sends: list[ray.ObjectRef]


class WeightSync:
    """The driver's side of weight transport: new weights from the learners into every rollout
    worker, through Ray's object store or vLLM's weight-transfer engine
    (`tiny_r1v.rollout.transfer`).

    The object store also brings a restarted worker up to date (`catch_up`): it cannot join a
    live transfer group, so the group is rebuilt, with every worker, before the next broadcast.
    A broadcast that failed (a member died) rebuilds it too.

    Args:
        learners: the learner actors (``packed_weights`` and ``send_weights`` are collective;
            rank 0 returns the weights and leads the transfer group).
        rollouts: the rollout worker actors.
        version: the version the learners hold (0: the start weights, +1 per sync).
        transfer: sync through the transfer engine (``rollout.weight_sync``).
    """

    def __init__(self, learners: Sequence[Any], rollouts: Sequence[Any], version: int = 0, transfer: bool = False):
        self.learners, self.rollouts, self.version = learners, rollouts, version
        self.transfer = transfer
        self._ref: ray.ObjectRef | None = None
        self._update_info: dict[str, Any] | None = None
        self._group_ready = False

    def current(self) -> ray.ObjectRef:
        """The learners' weights of `version` in the object store, gathered once per version."""
        if self._ref is None:
            refs = [learner.packed_weights.remote() for learner in self.learners]
            ray.get(refs[1:])  # every rank takes part in the gather; rank 0's result holds the weights
            self._ref = refs[0]
        return self._ref

    def advance(self) -> SyncCalls:
        """The learners stepped: start loading their new version into every rollout worker, each
        after the calls already queued on it; `collect` waits for the loads."""
        self.version += 1
        self._ref = None
        if not self.transfer:
            return self.push()
        if not self._group_ready:
            self._connect()
        sends = [learner.send_weights.remote() for learner in self.learners]
        loads = [worker.receive_weights.remote(self._update_info, self.version) for worker in self.rollouts]
        return SyncCalls(loads, sends)

    def _connect(self) -> None:
        """Form a new transfer group: learner rank 0 is rank 0, rollout worker i rank 1 + i."""
        leader = self.learners[0]
        address, port = ray.get(leader.transfer_address.remote())
        world_size = 1 + len(self.rollouts)
        joins = [leader.join_transfer.remote(address, port, world_size)]
        joins += [w.join_transfer.remote(address, port, 1 + i, world_size) for i, w in enumerate(self.rollouts)]
        ray.get(joins)
        if self._update_info is None:
            self._update_info = ray.get(leader.update_info.remote())
        self._group_ready = True

    def push(self) -> SyncCalls:
        """Start loading the current weights into every rollout worker through the object store."""
        weights = self.current()
        return SyncCalls([worker.load_weights.remote(weights, self.version) for worker in self.rollouts], [])

    def collect(self, calls: SyncCalls) -> list[dict[str, float]]:
        """Wait for the loads `advance` or `push` started; returns those that succeeded (see
        `sync_metrics`). A worker that failed meanwhile (or exited after a failed receive) is left
        to Ray to restart: the driver catches it up (`catch_up`) when it answers on an old
        version."""
        if not all(ray.get(calls.sends)):
            self._group_ready = False
        # A worker outside the transfer group refuses a broadcast with an error of its own.
        lost = (RayActorError, ActorUnavailableError, *((RayTaskError,) if calls.sends else ()))
        loads = []
        for index, call in enumerate(calls.loads):
            try:
                loads.append(ray.get(call))
            except lost as err:
                logger.warning("rollout worker %d failed to load weights (%s)", index, err)
                self._group_ready = False
        return loads

    def load_all(self) -> None:
        """Load the current weights into every rollout worker and wait for them."""
        self.collect(self.push())

    def catch_up(self, worker: Any) -> None:
        """Load the current weights into one worker (restarted by Ray on the start weights)
        through the object store."""
        self._group_ready = False
        ray.get(worker.load_weights.remote(self.current(), self.version))
