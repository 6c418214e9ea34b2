"""The merge-geometry figures on hand-computed cases: experts that changed disjoint inputs (the
sum keeps each exactly), identical experts (the closed-form WUDI takes one copy), loops for
`keep` and the loss on both sides, and the command on real checkpoints of the tiny model."""

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


@pytest.mark.parametrize("shape", [(5, 4), (4, 5)], ids=["gram side", "direct side"])
def test_keep_and_loss_equal_loops_over_experts_of_different_norms(shape):
    g = torch.Generator().manual_seed(3)
    scales = torch.tensor([0.1, 1.0, 7.0], dtype=torch.float64).view(3, 1, 1)
    taus = scales * torch.randn(3, *shape, generator=g, dtype=torch.float64)
    merged = torch.randn(*shape, generator=g, dtype=torch.float64)

    def loss(x):
        return sum(((x - tau) @ tau.T).square().sum() / tau.square().sum() for tau in taus)

    keep = [float(((merged @ tau.T) * (tau @ tau.T)).sum() / (tau @ tau.T).square().sum()) for tau in taus]
    figures = tensor_geometry(taus, merged)
    assert figures["keep"] == pytest.approx(sum(keep) / len(keep))
    assert figures["loss"] == pytest.approx(float(loss(merged) / loss(torch.zeros_like(merged))))


def test_a_zero_task_vector_is_named():
    taus = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="task vector 1 is zero"):
        tensor_geometry(taus, torch.ones(2, 2))


def test_command_measures_every_changed_linear_weight_of_real_checkpoints(tiny_model_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from tiny_r1v.merge.safetensors_io import SINGLE

    weights = load_file(tiny_model_dir / SINGLE)
    changed = sorted(name for name in weights if name.endswith("mlp.down_proj.weight"))
    language = [name for name in changed if "visual" not in name]
    experts = []
    for k in range(2):
        expert = tmp_path / f"expert-{k}"
        expert.mkdir()
        for file in tiny_model_dir.iterdir():
            if file.name != SINGLE:
                (expert / file.name).write_bytes(file.read_bytes())
        # Expert 1 leaves the vision tower unchanged: those tensors are measured against expert 0 alone.
        mine = changed if k == 0 else language
        moved = {n: w + 0.01 * (k + 1) * torch.ones_like(w) if n in mine else w for n, w in weights.items()}
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
    assert sorted({r["tensor"] for r in records}) == changed and set(language) < set(changed)
    for r in records:
        # Rank-one experts t and 2t: expert 0 is 1/3 of the sum, keep (1 + 1/2) / 2, loss 1/5; the
        # sum's loss equals the base's. In the vision tower expert 0 is the whole sum.
        alone = r["tensor"] not in language
        assert r["experts"] == (1 if alone else 2)
        expected = {
            ("first", False): {"norm": 1 / 3, "cosine": 1.0, "keep": 0.75, "loss": 0.2},
            ("sum", False): {"norm": 1.0, "cosine": 1.0, "keep": 2.25, "loss": 1.0},
            ("first", True): {"norm": 1.0, "cosine": 1.0, "keep": 1.0, "loss": 0.0},
        }.get((r["merge"], alone))
        if expected is not None:
            assert {f: r[f] for f in expected} == pytest.approx(expected, rel=1e-2, abs=1e-3), r
    assert "| first | lm.linear |" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # an existing --out is kept unless --overwrite
        merge_geometry.main(argv)
    assert f"--out {out} exists" in capsys.readouterr().err and json.loads(out.read_text()) == records
    assert merge_geometry.main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("item", "message"), [("sum=x", "reference row"), ("x=", "expected NAME=DIR"), ("x", "expected NAME=DIR")]
)
def test_command_refuses_a_bad_merge_argument(tmp_path, item, message, capsys):
    with pytest.raises(SystemExit):
        merge_geometry.main(["--base", str(tmp_path), "--experts", str(tmp_path), "--merges", item])
    assert message in capsys.readouterr().err


def test_command_refuses_a_merge_name_given_twice(tmp_path, capsys):
    with pytest.raises(SystemExit):
        merge_geometry.main(
            ["--base", str(tmp_path), "--experts", str(tmp_path), "--merges", f"a={tmp_path}", f"a={tmp_path}"]
        )
    assert "a name given twice (a)" in capsys.readouterr().err
