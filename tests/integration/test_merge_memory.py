"""Streaming keeps a merge's memory to a few tensors, not models: measured in a subprocess on a
synthetic checkpoint (about 100 MB per input) whose largest tensor is 2 MB."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from tiny_r1v.merge.synthetic import lm_shapes, write_checkpoint

SHAPES = lm_shapes(layers=12, hidden=512, intermediate=1024, kv_dim=128)  # float32: 102 MB
EXPERTS = 2
BUFFER_MB = 8

# Run in a fresh interpreter: RSS is read once the imports are done and torch has run an op,
# then the merge's resident high-water mark (VmHWM: ru_maxrss would include pytest's own RSS,
# inherited at fork) is compared with it.
SCRIPT = """
import json, os, sys
from pathlib import Path
import torch
from tiny_r1v.config import load_config
from tiny_r1v.merge import MergeConfig, merge
from tiny_r1v.merge.runner import peak_rss
from tiny_r1v.merge.sources import resolve

def rss():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

base, out, *experts = sys.argv[1:]
cfg = load_config(MergeConfig, None, [f"base={base}", f"output={out}", "method=task_arithmetic", "device=cpu",
                                      "buffer_mb=BUFFER_MB", "shard_size_mb=32", "hash_inputs=false"])
torch.ones(8).add_(1)
before = rss()
merge(cfg, *resolve(cfg, experts), progress=lambda **_: type("Quiet", (), {"update": print, "close": print})())
print(json.dumps({"before": before, "peak": peak_rss()}))
""".replace("BUFFER_MB", str(BUFFER_MB))


def test_peak_memory_is_bounded_by_the_largest_tensor_not_the_model(tmp_path):
    write_checkpoint(tmp_path / "base", SHAPES, shard_mb=32)
    experts = [str(write_checkpoint(tmp_path / f"e{k}", SHAPES, expert=k, shard_mb=32)) for k in range(EXPERTS)]
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "base"), str(tmp_path / "out"), *experts],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])

    nbytes = {name: 4 * torch.Size(shape).numel() for name, shape in SHAPES.items()}
    largest, model = max(nbytes.values()), sum(nbytes.values())
    # Stored inputs (K + 1), their float32 task vectors and the result: a few copies of the
    # largest tensor per input; plus the output buffer, plus allocator slack.
    bound = 4 * (EXPERTS + 1) * largest + (BUFFER_MB << 20) + (32 << 20)
    growth = measured["peak"] - measured["before"]
    assert bound < model  # holding even one whole input would break the bound
    assert growth < bound, f"merge grew RSS by {growth / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB"
