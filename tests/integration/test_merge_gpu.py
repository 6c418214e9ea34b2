"""The merge maths on CUDA agrees with the CPU (SPEC §3: float32 throughout), and a merge job
with `device=cuda` writes the same checkpoint as one on the CPU. Skipped (with the reason) where
there is no GPU."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tiny_r1v.config import load_config
from tiny_r1v.merge import METHODS, MergeConfig, merge
from tiny_r1v.merge.sources import resolve
from tiny_r1v.merge.synthetic import lm_shapes, write_checkpoint

pytestmark = pytest.mark.gpu

SHAPES = lm_shapes(layers=2, hidden=256, intermediate=512, kv_dim=64)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_methods_agree_with_the_cpu(method):
    g = torch.Generator().manual_seed(0)
    taus = 1e-3 * torch.randn(3, 384, 192, generator=g)
    cfg = load_config(MergeConfig, None, ["base=unused", "wudi.steps=20", "amm.steps=20"])
    params = getattr(cfg, method)
    on_cpu = METHODS[method](taus, params)
    on_gpu = METHODS[method](taus.cuda(), params).cpu()
    scale = on_cpu.abs().max()
    # TF32 is off by default for float32 matmuls; what differs is the order of reductions.
    torch.testing.assert_close(on_gpu, on_cpu, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("method", ["task_arithmetic", "amm"])
def test_merge_job_on_cuda_writes_the_cpu_checkpoint(method, tmp_path):
    base = write_checkpoint(tmp_path / "base", SHAPES, dtype=torch.bfloat16, shard_mb=1)
    experts = [
        str(write_checkpoint(tmp_path / f"e{k}", SHAPES, dtype=torch.bfloat16, expert=k, shard_mb=1)) for k in range(3)
    ]
    outputs = {}
    for device in ("cpu", "cuda"):
        cfg = load_config(
            MergeConfig,
            None,
            [
                f"base={base}",
                f"output={tmp_path / device}",
                f"method={method}",
                f"device={device}",
                "amm.steps=20",
                "shard_size_mb=1",
            ],
        )
        provenance = merge(cfg, *resolve(cfg, experts))
        assert provenance["device"].startswith(device)
        outputs[device] = {
            name: t for f in sorted((tmp_path / device).glob("*.safetensors")) for name, t in load_file(f).items()
        }
    assert outputs["cpu"].keys() == outputs["cuda"].keys() == SHAPES.keys()
    for name, expected in outputs["cpu"].items():
        # bfloat16 results: equal up to one rounding step of the stored dtype.
        torch.testing.assert_close(
            outputs["cuda"][name].float(),
            expected.float(),
            rtol=1e-2,
            atol=1e-4,
            msg=lambda m, name=name: f"{name}: {m}",
        )
