"""Weights in transit from the learners to the rollout workers: one flat byte buffer.

Ray's object store hands a numpy array to its readers as a view of its shared memory, while a
dict of torch tensors is pickled tensor by tensor and copied out again by every reader. So rank
0 packs its full state dict into one uint8 array (one copy, one object) and each rollout worker
reads the tensors as views of it; vLLM's reload then copies them into its own parameters.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

# Byte alignment of every tensor in the buffer: a view of a dtype must start at a multiple of
# its size, and 64 also keeps each tensor on its own cache lines.
_ALIGN = 64


@dataclass(frozen=True)
class PackedWeights:
    """A state dict as one buffer and where each tensor lies in it."""

    buffer: np.ndarray
    """uint8 [nbytes]: the tensors' bytes, each at an aligned offset."""
    entries: tuple[tuple[str, torch.dtype, tuple[int, ...], int], ...]
    """(name, dtype, shape, byte offset) per tensor, in the state dict's order."""

    @classmethod
    def pack(cls, state: Mapping[str, torch.Tensor]) -> PackedWeights:
        entries, offset = [], 0
        for name, tensor in state.items():
            entries.append((name, tensor.dtype, tuple(tensor.shape), offset))
            offset += -(-tensor.numel() * tensor.element_size() // _ALIGN) * _ALIGN
        buffer = torch.empty(offset, dtype=torch.uint8)
        for (_, _, _, start), tensor in zip(entries, state.values(), strict=True):
            data = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
            buffer[start:start + data.numel()].copy_(data)
        return cls(buffer.numpy(), tuple(entries))

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors, as views of the buffer (read-only when it came through the object store)."""
        with warnings.catch_warnings():
            # torch warns that writes to a read-only array's tensor are undefined: nothing writes.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            data = torch.from_numpy(self.buffer)
        out = {}
        for name, dtype, shape, start in self.entries:
            count = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            out[name] = data[start:start + count].view(dtype).view(shape)
        return out
