"""The weight-transfer engine's buckets and the gloo engine end to end (`tiny_r1v.rollout.transfer`):
a sender and two receivers in spawned processes, buckets closing inside tensors."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from vllm.config.parallel import ParallelConfig
from vllm.config.weight_transfer import WeightTransferConfig
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
from vllm.distributed.weight_transfer.packed_tensor import pack_tensors

from tiny_r1v.rollout.transfer import (
    GLOO_BACKEND,
    WeightSender,
    bucket_bytes,
    bucket_ranges,
    payload_bytes,
    register_gloo_engine,
    update_info,
)

# vLLM warns of every tensor larger than a bucket; these tests make buckets small on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Tensor '.*' has size .* bytes, which exceeds buffer_size_bytes")


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), max_size=12), bucket=st.integers(1, 60))
def test_bucket_ranges_are_the_buckets_vllm_packs(sizes, bucket):
    tensors = iter([(f"t{i}", torch.zeros(size, dtype=torch.uint8)) for i, size in enumerate(sizes)])
    packed = []
    while (chunk := pack_tensors(tensors, lambda item: item[1], bucket)) is not None:
        packed.append([int(name[1:]) for name in chunk.names])
    assert [list(r) for r in bucket_ranges(sizes, bucket)] == packed


def test_bucket_ranges_by_hand():
    # 4 + 4 crosses 6: the bucket closes after the second tensor; 8 alone crosses it again.
    assert bucket_ranges([4, 4, 8, 1, 1], 6) == [range(0, 2), range(2, 3), range(3, 5)]
    assert bucket_ranges([], 6) == []
    assert bucket_bytes(0.0625) == 65536  # MiB, as rollout.weight_bucket_mb gives it


def test_update_info_lists_the_tensors_in_order_and_counts_their_bytes():
    entries = [("a", torch.bfloat16, (2, 3)), ("b", torch.float32, (5,))]  # dtypes as named by torch
    info = update_info(entries, 1024)
    assert info == {
        "names": ["a", "b"],
        "dtype_names": ["bfloat16", "float32"],
        "shapes": [[2, 3], [5]],
        "packed": True,
        "packed_buffer_size_bytes": 1024,
    }
    assert payload_bytes(info) == 2 * 3 * 2 + 5 * 4


def _weights() -> dict[str, torch.Tensor]:
    """One dtype, as the learners send (vLLM's unpacking views each tensor's bytes in place, so
    a bucket mixing element sizes would have to keep every offset aligned)."""
    generator = torch.Generator().manual_seed(0)
    return {
        "embed": torch.randn(7, 5, generator=generator),  # 140 bytes
        "norm": torch.randn(5, generator=generator),  # 20
        "empty": torch.zeros(0),
        "head": torch.randn(3, 11, generator=generator),  # 132
        "bias": torch.randn(3, generator=generator),  # 12
    }


BUCKET = 100  # the first bucket closes inside `embed`, the second inside `head`


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _receive(rank: int, port: int, info: dict[str, Any], out: Any) -> None:
    register_gloo_engine()
    engine = WeightTransferEngineFactory.create_engine(
        WeightTransferConfig(backend=GLOO_BACKEND), ParallelConfig(), torch.nn.Linear(1, 1)
    )
    engine.init_transfer_engine(
        engine.parse_init_info(
            {"master_address": "127.0.0.1", "master_port": port, "rank_offset": rank, "world_size": 3}
        )
    )
    calls: list[list[str]] = []
    received: dict[str, torch.Tensor] = {}

    def load_weights(weights: list[tuple[str, torch.Tensor]]) -> None:
        calls.append([name for name, _ in weights])
        received.update({name: tensor.clone() for name, tensor in weights})

    engine.receive_weights(engine.parse_update_info(info), load_weights)
    # As numpy arrays: torch's queue pickling shares a tensor's storage through a socket of this
    # process, which is gone if it exits before the parent reads the queue.
    out.put((rank, calls, {name: tensor.numpy() for name, tensor in received.items()}))


def test_gloo_engine_broadcasts_to_two_receivers_in_vllms_buckets():
    weights = _weights()
    info = update_info([(n, t.dtype, tuple(t.shape)) for n, t in weights.items()], BUCKET)
    port = _free_port()
    context = mp.get_context("spawn")
    out = context.Queue()
    receivers = [context.Process(target=_receive, args=(rank, port, info, out)) for rank in (1, 2)]
    for process in receivers:
        process.start()
    try:
        sender = WeightSender(GLOO_BACKEND, BUCKET)
        sender.join("127.0.0.1", port, 3)
        sender.send(iter(weights.items()))
        results = sorted(out.get(timeout=120) for _ in receivers)
    finally:
        for process in receivers:
            process.join(timeout=60)
    assert [rank for rank, _, _ in results] == [1, 2]
    for _, calls, received in results:
        # One load call per bucket: embed crosses 100 bytes, then norm + empty + head cross it.
        assert calls == [["embed"], ["norm", "empty", "head"], ["bias"]]
        assert received.keys() == weights.keys()
        for name, tensor in weights.items():
            got = torch.from_numpy(received[name])
            assert got.dtype == tensor.dtype and torch.equal(got, tensor), name


def test_sender_without_a_group_refuses():
    with pytest.raises(RuntimeError, match="call join first"):
        WeightSender(GLOO_BACKEND, BUCKET).send(iter(_weights().items()))
