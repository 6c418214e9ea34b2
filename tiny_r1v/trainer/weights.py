"""Weights in transit from the learners to the rollout workers: one uint8 array per tensor.

Ray's object store serialises numpy arrays out of band: `ray.put` (or an actor method's return)
copies each array's bytes once into shared memory, and every reader gets a view of them, while a
torch tensor is pickled and copied out again by every reader. So rank 0 hands its full state dict
over as byte views of its own tensors (no copy on its side) and each rollout worker reads the
tensors as views of the shared memory; vLLM's reload then copies them into its own parameters.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch


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
