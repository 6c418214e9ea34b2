"""A merge error raised inside the Ray actor (here: an infinite result) reaches the user of
`launch/amm.py` as one line with exit status 1, not as a remote traceback, and leaves no output."""

from __future__ import annotations

import torch
import yaml
from helpers import launcher
from safetensors.torch import load_file, save_file

from tiny_r1v.merge.synthetic import lm_shapes, write_checkpoint

SHAPES = lm_shapes(layers=1, hidden=64, intermediate=128, kv_dim=32)
BAD = "model.layers.0.mlp.up_proj.weight"


def test_non_finite_result_in_the_actor_is_one_line_and_status_1(tmp_path, ray_local, capsys):
    write_checkpoint(tmp_path / "base", SHAPES)
    write_checkpoint(tmp_path / "good", SHAPES, expert=0)
    bad = write_checkpoint(tmp_path / "bad", SHAPES, expert=1)
    [shard] = bad.glob("*.safetensors")
    state = load_file(shard)
    state[BAD] = torch.full_like(state[BAD], float("inf"))
    save_file(state, shard, metadata={"format": "pt"})
    config = tmp_path / "amm.yaml"
    config.write_text(yaml.safe_dump({"base": str(tmp_path / "base"), "device": "cpu", "method": "task_arithmetic"}))

    module = launcher("amm")
    out = tmp_path / "out"
    argv = ["--config", str(config), "--experts", f"{tmp_path / 'good'},{bad}", "--out", str(out)]
    assert module.main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("merge failed")]
    assert err == [f"merge failed: tensor '{BAD}' (merge, task_arithmetic): the merged tensor has NaN or inf entries"]
    assert not out.exists() and not out.with_name("out.merge-tmp").exists()
