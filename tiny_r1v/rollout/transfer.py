"""Weights from the learners' rank 0 into the rollout engines through vLLM's weight-transfer API
(``weight_transfer_config``, ``init_weight_transfer_engine``, ``update_weights``).

Both ends of the transport live here. The learners' rank 0 and every rollout engine form one
process group (rank 0 the sender, engine ``i`` rank ``1 + i``); a sync is one broadcast per
bucket of packed tensors in the model's dtype, and one ``update_weights`` call per engine.

On CUDA the group is vLLM's own NCCL engine. On CPU the same calls run through
:class:`GlooWeightTransferEngine`, registered with vLLM's engine factory under
``GLOO_BACKEND``: a torch gloo group outside the global one, with vLLM's packing. Both pack
tensors with vLLM's ``pack_tensors``, whose bucket closes after the tensor that crosses
``packed_buffer_size_bytes`` (a tensor is never split across buckets), so a receiver knows each
bucket's contents from the names, dtypes and shapes alone (`bucket_ranges`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch.distributed import PrefixStore, ProcessGroup, TCPStore
from vllm.config.parallel import ParallelConfig
from vllm.config.weight_transfer import WeightTransferConfig
from vllm.distributed.utils import init_gloo_process_group
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
from vllm.distributed.weight_transfer.packed_tensor import pack_tensors, unpack_tensor

GLOO_BACKEND = "tiny_r1v_gloo"
"""The name the CPU engine is registered under in vLLM's weight-transfer factory."""

WeightEntry = tuple[str, torch.dtype, tuple[int, ...]]
"""(name, dtype, shape) of one tensor sent."""


def backend_for(device: torch.device) -> str:
    """The transfer engine for rollout engines on `device`: vLLM's NCCL on CUDA, gloo elsewhere."""
    return "nccl" if device.type == "cuda" else GLOO_BACKEND


def bucket_bytes(mib: float) -> int:
    """A bucket size given in MiB (``rollout.weight_bucket_mb``) in bytes."""
    return int(mib * (1 << 20))


def nbytes(dtype: torch.dtype, shape: Sequence[int]) -> int:
    """Bytes of a contiguous tensor of `dtype` and `shape`."""
    return torch.Size(shape).numel() * dtype.itemsize


def bucket_ranges(sizes: Sequence[int], bucket_bytes: int) -> list[range]:
    """The tensors (by index) in each bucket that ``pack_tensors`` fills from tensors of `sizes`
    bytes: a bucket takes tensors until its bytes exceed `bucket_bytes`, the last one included."""
    ranges, start, total = [], 0, 0
    for index, size in enumerate(sizes):
        total += size
        if total > bucket_bytes:
            ranges.append(range(start, index + 1))
            start, total = index + 1, 0
    if start < len(sizes):
        ranges.append(range(start, len(sizes)))
    return ranges


def update_info(entries: Sequence[WeightEntry], bucket_bytes: int) -> dict[str, Any]:
    """The ``update_info`` of one sync for either engine (the fields NCCL's and gloo's share)."""
    return {
        "names": [name for name, _, _ in entries],
        "dtype_names": [str(dtype).removeprefix("torch.") for _, dtype, _ in entries],
        "shapes": [list(shape) for _, _, shape in entries],
        "packed": True,
        "packed_buffer_size_bytes": bucket_bytes,
    }


def payload_bytes(info: dict[str, Any]) -> int:
    """Bytes of the tensors an `update_info` announces."""
    dtypes, shapes = info["dtype_names"], info["shapes"]
    return sum(nbytes(getattr(torch, dtype), shape) for dtype, shape in zip(dtypes, shapes, strict=True))


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    """Where the group meets and this engine's first rank in it (as NCCL's init info)."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    """The tensors of one sync, in the sender's order (see `update_info`)."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    packed: bool = True
    packed_buffer_size_bytes: int = 1 << 30
    packed_num_buffers: int = 1
    """Accepted for NCCL's field set; gloo broadcasts one bucket at a time."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (len(self.names) == len(self.dtype_names) == len(self.shapes)):
            raise ValueError(
                f"names, dtype_names and shapes differ in length: "
                f"{len(self.names)}, {len(self.dtype_names)}, {len(self.shapes)}"
            )
        if not self.packed or self.update_kind != "dense":
            raise ValueError("the gloo weight-transfer engine takes packed dense updates only")


GLOO_TIMEOUT = timedelta(minutes=5)
"""How long a gloo member waits for the others, to meet or in a broadcast: a member that died
mid-broadcast leaves the others waiting this long (vLLM's default is 30 minutes)."""


def gloo_group(address: str, port: int, rank: int, world_size: int) -> ProcessGroup:
    """A gloo group of its own, outside torch's global one (a learner already belongs to that);
    rank 0 hosts the group's store at `address`:`port`."""
    store = TCPStore(address, port, world_size, is_master=rank == 0, timeout=GLOO_TIMEOUT)
    return init_gloo_process_group(PrefixStore("weights/", store), rank, world_size, GLOO_TIMEOUT)


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """vLLM's weight-transfer engine over gloo, for rollout engines on CPU."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo

    def __init__(self, config: WeightTransferConfig, parallel_config: ParallelConfig, model: torch.nn.Module):
        super().__init__(config, parallel_config, model)
        self.group: ProcessGroup | None = None

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        rank = init_info.rank_offset + self.parallel_config.rank
        self.group = gloo_group(init_info.master_address, init_info.master_port, rank, init_info.world_size)

    def receive_weights(
        self, update_info: GlooUpdateInfo, load_weights: Callable[[list[tuple[str, torch.Tensor]]], None]
    ) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer not initialised: call init_weight_transfer_engine first")
        dtypes = [getattr(torch, name) for name in update_info.dtype_names]
        sizes = [nbytes(dtype, shape) for dtype, shape in zip(dtypes, update_info.shapes, strict=True)]
        for bucket in bucket_ranges(sizes, update_info.packed_buffer_size_bytes):
            buffer = torch.empty(sum(sizes[i] for i in bucket), dtype=torch.uint8)
            self.group.broadcast(buffer, root=0).wait()
            load_weights(
                unpack_tensor(
                    buffer,
                    [update_info.names[i] for i in bucket],
                    [update_info.shapes[i] for i in bucket],
                    [dtypes[i] for i in bucket],
                    [sizes[i] for i in bucket],
                )
            )

    def shutdown(self) -> None:
        self.group = None

    @staticmethod
    def trainer_send_weights(iterator: Iterator[tuple[str, torch.Tensor]], trainer_args: dict[str, Any]) -> None:
        """Broadcast `iterator`'s tensors in buckets (``trainer_args``: ``group``,
        ``packed_buffer_size_bytes``)."""
        group, bucket_bytes = trainer_args["group"], trainer_args["packed_buffer_size_bytes"]
        while (chunk := pack_tensors(iterator, lambda item: item[1], bucket_bytes)) is not None:
            group.broadcast(chunk.packed_tensor, root=0).wait()


def register_gloo_engine() -> None:
    """Make `GLOO_BACKEND` known to vLLM's engine factory (once per process)."""
    if GLOO_BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(GLOO_BACKEND, GlooWeightTransferEngine)


class WeightSender:
    """The learners' rank-0 end of the group: joins it as rank 0 and broadcasts weights.

    Args:
        backend: `backend_for` the rollout engines' device.
        bucket_bytes: bytes per broadcast bucket (``packed_buffer_size_bytes``).
    """

    def __init__(self, backend: str, bucket_bytes: int) -> None:
        self.backend, self.bucket_bytes = backend, bucket_bytes
        self.group: Any = None

    def join(self, address: str, port: int, world_size: int) -> None:
        """Join a new group as rank 0 (it replaces any earlier one); every engine joins alongside."""
        if self.backend == "nccl":
            from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

            self.group = NCCLWeightTransferEngine.trainer_init(
                {"master_address": address, "master_port": port, "world_size": world_size}
            )
        else:
            self.group = gloo_group(address, port, 0, world_size)

    def send(self, tensors: Iterator[tuple[str, torch.Tensor]]) -> None:
        """Broadcast `tensors` (in the order of the sync's `update_info`) to every engine."""
        if self.group is None:
            raise RuntimeError("weight sender has no group: call join first")
        args = {"group": self.group, "packed_buffer_size_bytes": self.bucket_bytes}
        if self.backend == "nccl":
            from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

            NCCLWeightTransferEngine.trainer_send_weights(tensors, {**args, "packed": True})
        else:
            GlooWeightTransferEngine.trainer_send_weights(tensors, args)
