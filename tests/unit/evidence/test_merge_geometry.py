"""The merge-geometry figures on hand-computed cases: experts that changed disjoint inputs (the
sum keeps each exactly), identical experts (the closed-form WUDI takes one copy), a loop for
`keep`, and the command on real checkpoints of the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from tiny_r1v.evidence import merge_geometry
from tiny_r1v.evidence.merge_geometry import tensor_geometry
from tiny_r1v.merge.config import WudiClosedConfig
from tiny_r1v.merge.methods import wudi_closed


def test_experts_on_disjoint_inputs_are_kept_by_the_sum_and_halved_by_the_mean():
    g = torch.Generator().manual_seed(0)
    taus = torch.zeros(2, 3, 4)
    taus[0, :, :2] = torch.randn(3, 2, generator=g)
    taus[1, :, 2:] = torch.randn(3, 2, generator=g)
    s = taus.sum(0)
    assert tensor_geometry(taus, s) == pytest.approx({"norm": 1.0, "cosine": 1.0, "keep": 1.0, "loss": 0.0}, abs=1e-6)
    # D(S/2) = sum_k ||(-tau_k / 2) tau_k^T||^2 / ||tau_k||^2 = D(0) / 4.
    assert tensor_geometry(taus, s / 2) == pytest.approx({"norm": 0.5, "cosine": 1.0, "keep": 0.5, "loss": 0.25})
    assert wudi_closed(taus, WudiClosedConfig()) == pytest.approx(s, abs=1e-5)


def test_identical_experts_the_closed_form_takes_one_copy_and_the_sum_three():
    t = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    taus = torch.stack([t, t, t])
    closed = wudi_closed(taus, WudiClosedConfig())
    assert tensor_geometry(taus, closed) == pytest.approx(
        {"norm": 1 / 3, "cosine": 1.0, "keep": 1.0, "loss": 0.0}, abs=1e-4
    )
    # D(3t) = 3 ||2t t^T||^2 / ||t||^2 = 4 D(0).
    assert tensor_geometry(taus, 3 * t) == pytest.approx(
        {"norm": 1.0, "cosine": 1.0, "keep": 3.0, "loss": 4.0}, rel=1e-5
    )


def test_keep_equals_a_loop_over_experts():
    g = torch.Generator().manual_seed(2)
    taus, merged = (
        torch.randn(3, 5, 4, generator=g, dtype=torch.float64),
        torch.randn(5, 4, generator=g, dtype=torch.float64),
    )
    loop = [float(((merged @ tau.T) * (tau @ tau.T)).sum() / (tau @ tau.T).square().sum()) for tau in taus]
    assert tensor_geometry(taus, merged)["keep"] == pytest.approx(sum(loop) / len(loop))


def test_command_measures_every_changed_linear_weight_of_real_checkpoints(tiny_model_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from tiny_r1v.merge.safetensors_io import SINGLE

    weights = load_file(tiny_model_dir / SINGLE)
    changed = sorted(name for name in weights if name.endswith("mlp.down_proj.weight"))
    experts = []
    for k in range(2):
        expert = tmp_path / f"expert-{k}"
        expert.mkdir()
        for file in tiny_model_dir.iterdir():
            if file.name != SINGLE:
                (expert / file.name).write_bytes(file.read_bytes())
        moved = {n: w + 0.01 * (k + 1) * torch.ones_like(w) if n in changed else w for n, w in weights.items()}
        save_file(moved, expert / SINGLE)
        experts.append(expert)
    out = tmp_path / "geometry.json"
    argv = [
        "--base",
        str(tiny_model_dir),
        "--experts",
        *map(str, experts),
        "--merges",
        f"first={experts[0]}",
        "--out",
        str(out),
    ]
    assert merge_geometry.main(argv) == 0
    records = json.loads(out.read_text())
    assert sorted({r["tensor"] for r in records}) == changed
    first = [r for r in records if r["merge"] == "first"]
    # Expert 0's change is 1/3 of the sum (0.01 of 0.03 per entry), along it.
    assert all(
        r["norm"] == pytest.approx(1 / 3, rel=1e-3) and r["cosine"] == pytest.approx(1.0, rel=1e-3) for r in first
    )
    assert "| first | lm.linear |" in capsys.readouterr().out
