"""A merge killed (SIGKILL) after its first shards continues when run again, to the same bytes as
a merge that was never interrupted; a changed input stops the continuation, naming it; a second
merge into an output that a live merge is writing stops at once.

Inputs: the tiny Qwen2.5-VL model as the base and two perturbed experts, merged with AMM (a few
Adam steps) into 1 MiB shards, each merge in a subprocess of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny_r1v.merge.journal import JOURNAL
from tiny_r1v.merge.lock import lock_path
from tiny_r1v.merge.runner import PROVENANCE, REPORT, staging_path

# argv: base out pause expert... ; `pause` seconds after each tensor let the test kill it midway.
SCRIPT = """
import sys, time
from tiny_r1v.config import load_config
from tiny_r1v.merge import MergeConfig, merge
from tiny_r1v.merge.sources import resolve

base, out, pause, *experts = sys.argv[1:]

class Slow:
    def __init__(self, **_): pass
    def update(self, n): time.sleep(float(pause))
    def close(self): pass

cfg = load_config(MergeConfig, None, [f"base={base}", f"output={out}", "method=amm", "amm.steps=3",
                                      "device=cpu", "shard_size_mb=1", "hash_inputs=false"])
merge(cfg, *resolve(cfg, experts), progress=Slow)
"""
# Provenance fields of the run rather than the result (see docs/merge.md, "Surviving a kill").
PER_RUN = ("seconds", "bytes", "memory_mb", "resumed", "created")


def start(inputs: dict[str, Path], out: Path, pause: float) -> subprocess.Popen:
    argv = [str(inputs["base"]), str(out), str(pause), str(inputs["a"]), str(inputs["b"])]
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout.decode(), stderr.decode())


@pytest.fixture(scope="module")
def inputs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume_inputs")
    state = load_file(tiny_model_dir / "model.safetensors")
    dirs = {}
    for k, name in enumerate(("base", "a", "b")):
        dirs[name] = shutil.copytree(tiny_model_dir, root / name)
        g = torch.Generator().manual_seed(k)
        changed = (
            state if name == "base" else {n: t + 2e-3 * torch.randn(t.shape, generator=g) for n, t in state.items()}
        )
        save_file(changed, dirs[name] / "model.safetensors", metadata={"format": "pt"})
    return dirs


def after_two_shards(inputs: dict[str, Path], out: Path, pause: float = 0.2) -> subprocess.Popen:
    """A merge slowed by `pause` seconds per tensor into `out`, returned once it has journaled two shards."""
    process = start(inputs, out, pause)
    journal = staging_path(out) / JOURNAL
    deadline = time.monotonic() + 300
    while not (journal.is_file() and len(journal.read_text().splitlines()) >= 3):  # key + 2 shards
        assert process.poll() is None, finish(process).stderr[-3000:]
        assert time.monotonic() < deadline, "no two shards journaled in 300 s"
        time.sleep(0.05)
    return process


def killed_after_two_shards(inputs: dict[str, Path], out: Path) -> Path:
    process = after_two_shards(inputs, out)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    # The killed merge's lock file stays; its lock went with the process.
    assert not out.exists() and staging_path(out).is_dir() and lock_path(out).is_file()
    return staging_path(out)


def without(path: Path, keys: tuple[str, ...]) -> object:
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return [{k: v for k, v in entry.items() if k not in keys} for entry in data]
    return {k: v for k, v in data.items() if k not in keys}


def test_a_killed_merge_continues_to_the_bytes_of_an_uninterrupted_one(inputs, tmp_path):
    out = tmp_path / "merged"
    result = finish(start(inputs, out, pause=0))
    assert result.returncode == 0, result.stderr[-3000:]
    reference = out.rename(tmp_path / "reference")

    killed_after_two_shards(inputs, out)
    result = finish(start(inputs, out, pause=0))
    assert result.returncode == 0, result.stderr[-3000:]

    files = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in out.iterdir()) == files and len([f for f in files if f.startswith("model-")]) > 3
    for name in files:
        if name == REPORT:  # each entry's seconds are those of the run that merged it
            assert without(out / name, ("seconds",)) == without(reference / name, ("seconds",))
        elif name == PROVENANCE:
            assert without(out / name, PER_RUN) == without(reference / name, PER_RUN)
        else:
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    resumed = json.loads((out / PROVENANCE).read_text())["resumed"]
    assert resumed["shards"] >= 2 and json.loads((reference / PROVENANCE).read_text())["resumed"]["shards"] == 0
    assert not staging_path(out).exists()


def test_a_changed_input_stops_the_continuation_naming_it(inputs, tmp_path):
    out = tmp_path / "merged"
    changed = {**inputs, "b": shutil.copytree(inputs["b"], tmp_path / "b")}
    tmp = killed_after_two_shards(changed, out)
    weights = changed["b"] / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    result = finish(start(changed, out, pause=0))
    assert result.returncode != 0
    assert "inputs.b.files.model.safetensors.mtime_ns: " in result.stderr
    assert f"to start over, remove {tmp} or pass restart=true" in result.stderr
    assert tmp.is_dir() and not out.exists()


def test_a_second_merge_into_a_live_merges_output_stops(inputs, tmp_path):
    out = tmp_path / "merged"
    first = after_two_shards(inputs, out, pause=1.0)  # outlives the second merge's start-up
    try:
        second = finish(start(inputs, out, pause=0))
        assert second.returncode != 0
        assert f"another merge is writing {out} (pid {first.pid} on " in second.stderr
        assert first.poll() is None  # the refused merge touched nothing of the live one
    finally:
        first.kill()
        first.wait()
    result = finish(start(inputs, out, pause=0))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / PROVENANCE).read_text())["resumed"]["shards"] >= 2
    assert not lock_path(out).exists()
