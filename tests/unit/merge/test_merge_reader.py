"""The merge's streaming reader: mapped tensors equal what safetensors loads, writing to one never
reaches the file, a zero-size tensor reads, a truncated shard and a header whose byte count does
not fit are named."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny_r1v.merge import MergeError
from tiny_r1v.merge.safetensors_io import CheckpointReader
from tiny_r1v.merge.synthetic import lm_shapes, write_checkpoint

SHAPES = lm_shapes(layers=3, hidden=256, intermediate=512, kv_dim=64)  # bfloat16: 2.4 MB, 3 shards


@pytest.fixture
def checkpoints(tmp_path):
    base = write_checkpoint(tmp_path / "base", SHAPES, dtype=torch.bfloat16, shard_mb=1)
    experts = [
        write_checkpoint(tmp_path / f"e{k}", SHAPES, dtype=torch.bfloat16, expert=k, shard_mb=1) for k in range(2)
    ]
    return base, experts


def test_mapped_tensors_equal_safetensors_and_writes_stay_private(checkpoints):
    base, _ = checkpoints
    reader = CheckpointReader(base, "base")
    stored = {}
    for path in reader.weight_files:
        stored.update(load_file(path))
    assert len(reader.weight_files) > 1 and set(reader.tensors) == set(stored)
    for name, expected in stored.items():
        assert torch.equal(reader.read(name), expected), name
    name = "model.layers.0.mlp.up_proj.weight"
    reader.read(name).fill_(7)  # copy-on-write: this process's pages only
    assert torch.equal(reader.read(name), stored[name])
    reader.close()


def test_truncated_shard_names_file_and_tensor(checkpoints):
    base, _ = checkpoints
    reader = CheckpointReader(base, "base")
    last = list(reader.tensors)[-1]
    info = reader.tensors[last]
    with open(info.file, "r+b") as f:
        f.truncate(info.start + info.nbytes - 1)
    with pytest.raises(MergeError, match=f"base: .*{info.file.name} ends inside tensor '{last}'"):
        reader.read(last)


def test_header_byte_count_must_fit_dtype_and_shape(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(MergeError, match=r"tensor 'w' \(F32 \[2, 2\]\) has 8 bytes, not 16"):
        CheckpointReader(tmp_path, "bad")


def test_zero_size_tensor_reads_empty(tmp_path):
    save_file({"empty": torch.empty(0, 4), "w": torch.ones(2)}, tmp_path / "model.safetensors")
    reader = CheckpointReader(tmp_path, "m")
    assert reader.read("empty").shape == (0, 4)
    assert torch.equal(reader.read("w"), torch.ones(2))
    reader.close()
