"""Synthetic language-model checkpoints with real Qwen2.5-VL tensor names, for the merge's memory
test and benchmarks: a base and experts = base + noise, written tensor by tensor (never a whole
model in memory), deterministic in the seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from tiny_r1v.merge.safetensors_io import ShardWriter, plan_shards

Shapes = Mapping[str, tuple[int, ...]]


def lm_shapes(layers: int, hidden: int, intermediate: int, kv_dim: int) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a Qwen2.5 language model without embeddings (older `model.*` key layout).

    Qwen2.5-VL-3B: `lm_shapes(36, 2048, 11008, 256)`.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        prefix = f"model.layers.{i}."
        for name, out_dim in (("q", hidden), ("k", kv_dim), ("v", kv_dim)):
            shapes[f"{prefix}self_attn.{name}_proj.weight"] = (out_dim, hidden)
            shapes[f"{prefix}self_attn.{name}_proj.bias"] = (out_dim,)
        shapes[f"{prefix}self_attn.o_proj.weight"] = (hidden, hidden)
        shapes[f"{prefix}mlp.gate_proj.weight"] = (intermediate, hidden)
        shapes[f"{prefix}mlp.up_proj.weight"] = (intermediate, hidden)
        shapes[f"{prefix}mlp.down_proj.weight"] = (hidden, intermediate)
        shapes[f"{prefix}input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    return shapes


def write_checkpoint(
    out_dir: Path,
    shapes: Shapes,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    expert: int | None = None,
    scale: float = 1e-3,
    shard_mb: int = 1024,
) -> Path:
    """Write a checkpoint (shards, index, config.json) of `shapes` to `out_dir`.

    The base (`expert=None`) holds N(0, 0.02^2) entries; expert k holds the same base plus
    N(0, scale^2) noise seeded by (seed, k). Tensors are generated one at a time.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = [(name, dtype.itemsize * math.prod(shape)) for name, shape in shapes.items()]
    layout = {name: (dtype, tuple(shape)) for name, shape in shapes.items()}
    writer = ShardWriter(out_dir, plan_shards(sizes, shard_mb << 20), layout, buffer_bytes=0)
    for i, (name, shape) in enumerate(shapes.items()):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + i)
        tensor = 0.02 * torch.randn(shape, generator=generator)
        if expert is not None:
            generator.manual_seed((seed + 1 + expert) * 1_000_003 + i)
            tensor += scale * torch.randn(shape, generator=generator)
        writer.add(name, tensor.to(dtype))
    writer.finish()
    (out_dir / "config.json").write_text(json.dumps({"model_type": "synthetic", "tie_word_embeddings": False}))
    return out_dir
