"""`launch/amm.py` as users run it: bad input stops before Ray starts, naming the tensor and the
expert; experts named in the config merge in a Ray actor and a summary is printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, launcher

from tiny_r1v.merge import PROVENANCE
from tiny_r1v.merge.synthetic import lm_shapes, write_checkpoint

SHAPES = lm_shapes(layers=2, hidden=64, intermediate=128, kv_dim=32)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """A merge config whose experts `a` and `b` are synthetic checkpoints next to their base."""
    root = tmp_path_factory.mktemp("launch")
    write_checkpoint(root / "base", SHAPES)
    for k, name in enumerate("ab"):
        write_checkpoint(root / name, SHAPES, expert=k)
    path = root / "amm.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": str(root / "base"),
                "experts": [{"name": name, "path": str(root / name)} for name in "ab"],
                "amm": {"steps": 3},
                "wudi": {"steps": 3},
                "device": "cpu",
            }
        )
    )
    return path


def launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "launch" / "amm.py"), *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_mismatched_expert_stops_before_ray_starts(config, tmp_path):
    shapes = {**SHAPES, "model.layers.1.mlp.up_proj.weight": (64, 64)}
    write_checkpoint(tmp_path / "odd", shapes, expert=3)
    result = launch("--config", str(config), "--experts", f"a,{tmp_path / 'odd'}", "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert (
        "tensor 'model.layers.1.mlp.up_proj.weight': expert 'odd' has shape [64, 64], the base [128, 64]"
        in result.stderr
    )
    assert "Started a local Ray instance" not in result.stderr and not (tmp_path / "out").exists()


def run_main(*args: str) -> int:
    """`launch/amm.py`'s main() in this process (under the session's local Ray instance)."""
    return launcher("amm").main(list(args))


def test_unknown_expert_and_bad_key_are_named(config, capsys):
    assert run_main("--config", str(config), "--experts", "a,physics") == 2
    assert "expert 'physics' is neither a name in the config (a, b)" in capsys.readouterr().err
    assert run_main("--config", str(config), "--method", "slerp") == 2
    assert "method: must be one of ['amm', 'task_arithmetic'" in capsys.readouterr().err


def test_merges_experts_named_in_the_config_in_a_ray_actor(config, tmp_path, ray_local, capsys):
    out = tmp_path / "merged"
    assert (
        run_main("--config", str(config), "--experts", "a,b", "--method", "wudi", "--out", str(out), "wudi.lr=1e-4")
        == 0
    )
    printed = capsys.readouterr().out
    assert "merged a, b into" in printed and "with wudi on cpu" in printed and f"output: {out}" in printed
    provenance = json.loads((out / PROVENANCE).read_text())
    assert provenance["method"] == "wudi" and provenance["parameters"] == {"steps": 3, "lr": 1e-4, "side": "auto"}
    assert [entry["name"] for entry in provenance["inputs"]] == ["base", "a", "b"]
    assert provenance["memory_mb"]["peak_rss"] > 0 and provenance["seconds"]["merge"] > 0
