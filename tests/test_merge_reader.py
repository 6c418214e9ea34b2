"""The merge's streaming reader: mapped tensors equal what safetensors loads, writing to one never
reaches the file, a truncated shard is named, and the read-ahead asks for each upcoming tensor
once, within its byte budget."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny_r1v.merge import MergeError
from tiny_r1v.merge.plan import build_plan
from tiny_r1v.merge.runner import _ReadAhead, _readers
from tiny_r1v.merge.safetensors_io import CheckpointReader
from tiny_r1v.merge.synthetic import lm_shapes, write_checkpoint

SHAPES = lm_shapes(layers=3, hidden=256, intermediate=512, kv_dim=64)  # bfloat16: 2.4 MB, 3 shards


@pytest.fixture
def checkpoints(tmp_path):
    base = write_checkpoint(tmp_path / "base", SHAPES, dtype=torch.bfloat16, shard_mb=1)
    experts = [write_checkpoint(tmp_path / f"e{k}", SHAPES, dtype=torch.bfloat16, expert=k, shard_mb=1)
               for k in range(2)]
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


def test_zero_size_tensor_is_not_prefetched(tmp_path, monkeypatch):
    save_file({"empty": torch.empty(0, 4), "w": torch.ones(2)}, tmp_path / "model.safetensors")
    reader = CheckpointReader(tmp_path, "m")
    advised = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, start, length, advice: advised.append(length))
    reader.prefetch("empty")  # a length of 0 would ask for the rest of the file
    reader.prefetch("w")
    assert advised == [8]
    assert reader.read("empty").shape == (0, 4)


@pytest.mark.parametrize("budget_items", [0, 1, 3, 1000])
def test_read_ahead_asks_for_each_tensor_once_within_budget(checkpoints, monkeypatch, budget_items):
    base_dir, expert_dirs = checkpoints
    base = CheckpointReader(base_dir, "base")
    experts = [CheckpointReader(d, d.name) for d in expert_dirs]
    plan = build_plan(base, experts, "mean", 1 << 20)
    nbytes = {item.name: item.info.nbytes * len(_readers(item, base, experts)) for item in plan.items}
    budget = budget_items * max(nbytes.values())
    asked: list[tuple[str, str]] = []
    for reader in (base, *experts):
        monkeypatch.setattr(reader, "prefetch", lambda name, who=reader.name: asked.append((who, name)))
    read_ahead = _ReadAhead(plan.items, base, experts, budget)
    for i in range(len(plan.items)):
        read_ahead.advance(i)
        pending = [it.name for it in plan.items[i + 1:read_ahead.ahead]]
        assert sum(nbytes[name] for name in pending) == read_ahead.window <= budget
    expected = [(reader.name, item.name) for item in plan.items[1:] for reader in _readers(item, base, experts)]
    if budget_items == 1000:  # everything after the first item was asked for, once, in order
        assert asked == expected
    elif budget_items == 0:
        assert asked == []
    else:
        assert len(set(asked)) == len(asked) and set(asked) <= set(expected)
