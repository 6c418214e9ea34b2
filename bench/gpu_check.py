"""One-command check of the learner, the rollout's step time and the merge maths at Qwen2.5-VL-3B
scale on a bare GPU node.

    python bench/gpu_check.py --out DIR            # one CUDA GPU (budget: 8 minutes; not yet run on one)
    python bench/gpu_check.py --dry-run --out DIR  # the same code path on CPU, tiny shapes

Needs only torch, transformers, safetensors, numpy and PyYAML (transformers' own dependencies):
no Ray, vLLM, verl or flash-attn, and nothing is downloaded. The model is a Qwen2.5-VL of the
3B's shape with random weights, built on the GPU.

Learner (1 rank): the project's ``PolicyModel`` FSDP2-sharded by ``shard_policy`` over a
one-process group, float32 master weights and bfloat16 compute as ``Learner`` does, gradient
checkpointing as ``configs/math.yaml`` asks, chunked log-probs (``learner.logprob_chunk_tokens``),
on one micro-batch of the math config's size: ``micro_batch_size`` samples of
``max_prompt_length`` prompt tokens (one image at ``max_pixels`` each) and responses of evenly
spread lengths up to ``max_response_length``, so right-padded rows hold padding. The same samples
run in both layouts: packed into one row (``learner.padding_free``, the shipped setting) and
right-padded (the padded rows are the worst case's ``micro_batch_size x (prompt + response)``).
Per layout and phase: peak CUDA memory (log-probs under no_grad, forward+backward, clip + AdamW
step) and seconds, learner tokens/s and MFU over the real (non-padding) tokens; then a
projection to 4 and 8 ranks of 80 GB from the larger of the two layouts' peaks. Merge: WUDI and AMM (default
settings, K = 3) per distinct 2-D shape the 3B merge optimises, the projected whole-merge time,
and CPU-vs-CUDA agreement on small tensors. Step: one rollout engine's vision, prefill and decode
measured in the rollout's dtype, and one training step of the config's cluster projected in
strict order and pipelined (``bench/step_projection.py``).

Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``. Every assumption behind a projected
figure is written next to it. On CPU, memory figures are null (torch keeps no CPU allocator
statistics); nothing is made up.

verl shim: ``tiny_r1v.learner.policy`` imports two functions from ``verl.utils.torch_functional``,
and importing verl imports Ray. When verl is not importable, ``install_verl_shim`` registers a
stand-in module holding pure-torch copies of exactly those two functions (verl 0.9.1's path
without flash-attn, which is the one it takes on such a node anyway). Nothing else is stubbed:
the rest of the learner code used here imports without verl.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GB = 1e9
PEAK_TFLOPS = 989.0
"""Dense bfloat16 peak of an H100/H200 SXM (TFLOP/s) that MFU is measured against."""


def install_verl_shim() -> str:
    """Make ``verl.utils.torch_functional`` importable; returns what was used."""
    try:
        import verl.utils.torch_functional  # noqa: F401
    except ImportError:
        pass
    else:
        return "verl (installed)"

    def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # verl 0.9.1 logprobs_from_logits_v2 (float32 branch), row by row to bound memory.
        picked = torch.gather(logits, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
        return picked - torch.stack([torch.logsumexp(row, dim=-1) for row in logits])

    def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(logits, dim=-1) - torch.sum(F.softmax(logits, dim=-1) * logits, dim=-1)

    functional = types.ModuleType("verl.utils.torch_functional")
    functional.logprobs_from_logits = logprobs_from_logits
    functional.entropy_from_logits = entropy_from_logits
    for name in ("verl", "verl.utils"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["verl.utils.torch_functional"] = functional
    return "shim (pure-torch copies of verl's logprobs_from_logits / entropy_from_logits, no flash-attn)"


VERL = install_verl_shim()

from torch.distributed.fsdp import MixedPrecisionPolicy  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402

from bench.step_projection import check as step_check  # noqa: E402
from bench.step_projection import markdown_lines as step_markdown  # noqa: E402
from bench.step_projection import sync  # noqa: E402
from tiny_r1v.config import load_config  # noqa: E402
from tiny_r1v.config.train import TrainConfig  # noqa: E402
from tiny_r1v.device import compute_dtype  # noqa: E402
from tiny_r1v.learner.inputs import EncodedPrompt, PolicyInputs, collate, pack  # noqa: E402
from tiny_r1v.learner.policy import PolicyModel, shard_policy  # noqa: E402
from tiny_r1v.merge.config import AmmConfig, WudiConfig  # noqa: E402
from tiny_r1v.merge.methods import METHODS  # noqa: E402
from tiny_r1v.merge.policy import assign  # noqa: E402
from tiny_r1v.protocol import Prompt, TrainSample  # noqa: E402

# Qwen2.5-VL-3B-Instruct's config.json (shapes only; weights are random).
SHAPE_3B: dict[str, Any] = {
    "text": {
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    },
    "vision": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
    "tie_word_embeddings": True,
    "tokens": {"image": 151655, "video": 151656, "vision_start": 151652, "vision_end": 151653},
}
# The dry run's tiny shape (tiny_r1v.models.tiny's towers, a 1,024-token vocabulary).
SHAPE_TINY: dict[str, Any] = {
    "text": {
        "vocab_size": 1024,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
        "bos_token_id": 1016,
        "eos_token_id": 1017,
    },
    "vision": {
        "depth": 2,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_heads": 2,
        "out_hidden_size": 128,
        "fullatt_block_indexes": [1],
    },
    "tie_word_embeddings": False,
    "tokens": {"image": 1020, "video": 1021, "vision_start": 1018, "vision_end": 1019},
}
VISION_FIXED = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112}


def hf_config(shape: dict[str, Any]) -> Qwen2_5_VLConfig:
    tokens = shape["tokens"]
    return Qwen2_5_VLConfig(
        text_config={**shape["text"], "dtype": "float32"},
        vision_config={**shape["vision"], **VISION_FIXED, "tokens_per_second": 2},
        image_token_id=tokens["image"],
        video_token_id=tokens["video"],
        vision_start_token_id=tokens["vision_start"],
        vision_end_token_id=tokens["vision_end"],
        tie_word_embeddings=shape["tie_word_embeddings"],
        dtype="float32",
    )


@dataclass(frozen=True)
class Workload:
    """One learner micro-batch: ``micro_batch`` samples of ``prompt`` tokens, each prompt holding
    one image of ``grid`` x ``grid`` patches, and responses of ``response * (i + 1) / micro_batch``
    tokens for sample ``i`` (the last one the longest allowed)."""

    micro_batch: int
    prompt: int
    response: int
    grid: int
    micro_per_mini: int
    """Micro-batches per optimizer step on one rank (the step's cost is spread over them)."""


def workload(cfg: TrainConfig, dry_run: bool) -> Workload:
    # The processor resizes to multiples of 28 px within max_pixels: 1024x1024 -> 1008x1008,
    # 72x72 patches of 14 px, 1296 image tokens after the 2x2 merge.
    side = math.isqrt(cfg.data.max_pixels) // 28 * 2
    per_rank = cfg.samples_per_update() // cfg.learner.num_workers
    full = Workload(
        cfg.learner.micro_batch_size,
        cfg.data.max_prompt_length,
        cfg.rollout.max_response_length,
        side,
        per_rank // cfg.learner.micro_batch_size,
    )
    # Dry run: 16 patches a side (64 image tokens), 96-token prompts, responses up to 32 tokens.
    return replace(full, micro_batch=2, prompt=96, response=32, grid=16) if dry_run else full


def response_lengths(work: Workload) -> list[int]:
    return [work.response * (i + 1) // work.micro_batch for i in range(work.micro_batch)]


def samples(work: Workload, config: Qwen2_5_VLConfig, generator: torch.Generator) -> list:
    """Encoded prompts of random tokens and pixels with their responses, as the learner collates them."""
    image_tokens = (work.grid // 2) ** 2
    text = work.prompt - image_tokens - 2
    if text < 1:
        raise ValueError(f"a {work.prompt}-token prompt cannot hold {image_tokens} image tokens")
    vision = config.vision_config
    patch = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    # Random ids below the special tokens (which start at vision_start - 10 in both shapes).
    ordinary = config.vision_start_token_id - 10
    pairs = []
    for i, length in enumerate(response_lengths(work)):
        ids = torch.cat(
            [
                torch.tensor([config.vision_start_token_id]),
                torch.full((image_tokens,), config.image_token_id),
                torch.tensor([config.vision_end_token_id]),
                torch.randint(ordinary, (text,), generator=generator),
            ]
        )
        types_ = torch.zeros(work.prompt, dtype=torch.int32)
        types_[1 : 1 + image_tokens] = 1
        prompt = EncodedPrompt(
            input_ids=ids,
            mm_token_type_ids=types_,
            pixel_values=torch.randn(work.grid**2, patch, generator=generator),
            image_grid_thw=torch.tensor([[1, work.grid, work.grid]]),
        )
        response = tuple(torch.randint(ordinary, (length,), generator=generator).tolist())
        pairs.append((prompt, TrainSample(Prompt(f"p{i}", ""), response, advantage=1.0 if i % 2 else -1.0)))
    return pairs


class Memory:
    """Peak allocator figures per phase, in GB; None on CPU (torch keeps no CPU statistics)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.phases: dict[str, dict[str, float | None]] = {}

    def allocated(self) -> float | None:
        return torch.cuda.memory_allocated() / GB if self.cuda else None

    def start(self) -> float | None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self.allocated()

    def record(self, phase: str, before: float | None) -> None:
        if not self.cuda:
            self.phases.setdefault(phase, {"before_gb": None, "peak_allocated_gb": None, "peak_reserved_gb": None})
            return
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / GB
        reserved = torch.cuda.max_memory_reserved() / GB
        old = self.phases.get(phase, {"peak_allocated_gb": 0.0, "peak_reserved_gb": 0.0})
        self.phases[phase] = {
            "before_gb": before,
            "peak_allocated_gb": max(peak, old["peak_allocated_gb"]),
            "peak_reserved_gb": max(reserved, old["peak_reserved_gb"]),
        }


def surrogate_loss(logprobs: torch.Tensor, old: torch.Tensor, inputs: PolicyInputs, clip: float) -> torch.Tensor:
    """PPO's clipped surrogate, token-mean: the same elementwise work on ``(b, R)`` as verl's
    vanilla policy loss (which needs verl); its cost is negligible next to the model's."""
    ratio = (logprobs - old).exp()
    adv = inputs.advantages.unsqueeze(-1)
    per_token = -torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    return (per_token * inputs.response_mask).sum() / inputs.response_mask.sum()


def check_learner(cfg: TrainConfig, shape: dict[str, Any], work: Workload, device: torch.device, repeats: int) -> dict:
    config = hf_config(shape)
    attn = cfg.model.attn_implementation
    config._attn_implementation = attn
    start = time.perf_counter()
    with torch.device(device):
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation=attn, dtype=torch.float32)
    if cfg.model.freeze_vision_tower:
        model.model.visual.requires_grad_(False)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy = PolicyModel(model, cfg.learner.logprob_chunk_tokens)
    mixed = MixedPrecisionPolicy(param_dtype=compute_dtype(cfg.model.dtype, device), reduce_dtype=torch.float32)
    shard_policy(policy, mixed)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learner.lr, betas=cfg.learner.betas, weight_decay=cfg.learner.weight_decay
    )
    sync(device)
    build_s = time.perf_counter() - start
    n_params = sum(p.numel() for p in policy.parameters())
    n_vision = sum(p.numel() for p in model.model.visual.parameters())
    n_trainable = sum(p.numel() for p in params)
    kl = cfg.algorithm.kl_coef > 0

    pairs = samples(work, config, torch.Generator().manual_seed(0))
    layouts = {
        "packed": pack(pairs, model.model.get_rope_index),
        "padded": collate(pairs, pad_token_id=0),
    }
    runs = {
        name: run_layout(policy, params, optimizer, inputs.to(device), cfg, work, n_params, repeats)
        for name, inputs in layouts.items()
    }
    return {
        "model": {
            "parameters": n_params,
            "vision_parameters": n_vision,
            "trainable_parameters": n_trainable,
            "master_dtype": "float32",
            "compute_dtype": str(mixed.param_dtype).removeprefix("torch."),
            "reference_dtype": str(mixed.param_dtype).removeprefix("torch."),
            "attn_implementation": attn,
            "gradient_checkpointing": cfg.model.gradient_checkpointing,
            "logprob_chunk_tokens": cfg.learner.logprob_chunk_tokens,
            "tie_word_embeddings": shape["tie_word_embeddings"],
            "build_seconds": build_s,
        },
        "configured_layout": "packed" if cfg.learner.padding_free else "padded",
        "layouts": runs,
        "throughput_assumptions": (
            f"FLOPs = 6 * N * tokens for forward+backward and 2 * N * tokens for a log-prob pass, "
            f"N = all {n_params:,} parameters, tokens = the micro-batch's real prompt + response tokens "
            f"(image tokens included, padding not: a padded layout's work on padding counts as lost; the "
            f"vision tower's patches, attention's T^2 term and gradient checkpointing's recomputed forward "
            f"are not counted, so the real work is higher); peak {PEAK_TFLOPS:.0f} TFLOP/s (H100/H200 dense "
            f"bf16). Learner tokens/s per rank = tokens / ({1 + kl} log-prob pass(es)"
            f"{' (old + reference)' if kl else ''} + forward+backward + 1/{work.micro_per_mini} optimizer step)."
        ),
        "_counts": (n_params, n_trainable, kl, mixed.param_dtype.itemsize),
    }


def run_layout(
    policy: PolicyModel,
    params: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    inputs: PolicyInputs,
    cfg: TrainConfig,
    work: Workload,
    n_params: int,
    repeats: int,
) -> dict:
    """Peak memory and seconds per phase, and throughput, of one micro-batch layout."""
    device = inputs.input_ids.device
    memory = Memory(device)
    memory.phases["weights"] = {"before_gb": None, "peak_allocated_gb": memory.allocated(), "peak_reserved_gb": None}
    seconds: dict[str, list[float]] = {"logprob": [], "forward_backward": [], "optimizer_step": []}
    temperature = cfg.rollout.temperature
    grad_norm = math.nan

    def phase(name: str, fn: Callable[[], Any]) -> Any:
        before = memory.start()
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        seconds[name].append(time.perf_counter() - t0)
        memory.record(name, before)
        return result

    def forward_backward() -> None:
        logprobs, _ = policy(inputs, temperature)
        surrogate_loss(logprobs, old, inputs, cfg.algorithm.clip_ratio_low).backward()

    def step() -> float:
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.learner.max_grad_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    for _ in range(repeats):
        policy.eval()
        with torch.no_grad():
            old = phase("logprob", lambda: policy(inputs, temperature)[0])
        policy.train()
        phase("forward_backward", forward_backward)
        grad_norm = phase("optimizer_step", step)
    # The first repeat pays one-off costs (kernel selection, AdamW state allocation).
    timed = {name: statistics.median(values[1:] or values) for name, values in seconds.items()}
    memory.phases["after_step"] = {"before_gb": None, "peak_allocated_gb": memory.allocated(), "peak_reserved_gb": None}

    tokens = inputs.real_tokens()
    flops_fb = 6 * n_params * tokens
    # One micro-batch's share of an iteration on one rank: old + reference log-probs, the
    # update's forward+backward, and 1/micro_per_mini of an optimizer step.
    kl = cfg.algorithm.kl_coef > 0
    per_micro = (1 + kl) * timed["logprob"] + timed["forward_backward"] + timed["optimizer_step"] / work.micro_per_mini
    return {
        "tokens": tokens,
        "token_slots": inputs.input_ids.numel(),
        "padding_share": 1 - tokens / inputs.input_ids.numel(),
        "memory": memory.phases,
        "seconds": {"per_phase_median": timed, "all": seconds, "repeats": repeats},
        "grad_norm": grad_norm,
        "throughput": {
            "forward_backward_tokens_per_s": tokens / timed["forward_backward"],
            "logprob_tokens_per_s": tokens / timed["logprob"],
            "learner_tokens_per_s_per_rank": tokens / per_micro,
            "mfu_forward_backward": flops_fb / timed["forward_backward"] / (PEAK_TFLOPS * 1e12),
            "mfu_logprob": flops_fb / 3 / timed["logprob"] / (PEAK_TFLOPS * 1e12),
        },
    }


def project_memory(learner: dict, ranks: tuple[int, ...], gpu_gb: float) -> dict:
    """Per-rank peak under FSDP sharding over ``ranks`` GPUs, from the one-rank measurement."""
    n_params, n_trainable, kl, ref_bytes = learner.pop("_counts")
    runs = learner["layouts"].values()
    if any(run["memory"]["forward_backward"]["peak_allocated_gb"] is None for run in runs):
        return {"per_rank_gb": None, "assumptions": "no CUDA memory figures (CPU run)"}
    # The padded rows hold as many token slots as learner.max_tokens_per_micro_batch lets a packed
    # micro-batch hold: the larger of the two peaks bounds either layout.
    phases = {
        name: {"peak_allocated_gb": max(run["memory"][name]["peak_allocated_gb"] for run in runs)}
        for name in ("logprob", "forward_backward", "optimizer_step")
    }
    # Sharded state: float32 master params (4 B), gradients (4 B) and AdamW's two moments (8 B)
    # of the trainable ones; the reference model's params in the compute dtype when kl_coef > 0.
    sharded = (4 * n_params + 12 * n_trainable + (ref_bytes * n_params if kl else 0)) / GB
    measured_state = (4 * n_params + 12 * n_trainable) / GB  # the one rank held all of it (no ref)
    out: dict[str, Any] = {}
    for n in ranks:
        row = {}
        for name in ("logprob", "forward_backward", "optimizer_step"):
            transient = phases[name]["peak_allocated_gb"] - measured_state
            row[name] = sharded / n + max(transient, 0.0)
        row["fits"] = max(row.values()) < gpu_gb
        out[str(n)] = row
    return {
        "per_rank_gb": out,
        "gpu_gb": gpu_gb,
        "sharded_state_gb_total": sharded,
        "assumptions": (
            "per-rank peak = (fp32 params 4 B + grads 4 B + AdamW moments 8 B per trainable parameter, "
            f"+ the reference model's params in the compute dtype, {ref_bytes} B, when kl_coef > 0) / ranks + "
            "the one-rank transient (the larger of the packed and padded layouts') "
            "(measured peak - that rank's full fp32 state: activations, logits, the bf16 copy of the "
            "gathered block, AdamW's temporaries), unsharded. Not counted: FSDP2's prefetch of the next "
            "block (one more bf16 block, ~0.2 GB at 3B), NCCL buffers and the CUDA context (~1-2 GB), "
            "allocator fragmentation (compare peak_reserved_gb with peak_allocated_gb on one rank)."
        ),
    }


def check_step(cfg: TrainConfig, shape: dict[str, Any], work: Workload, learner: dict, device: torch.device) -> dict:
    """The rollout model in the rollout's dtype on this device, measured and projected."""
    with torch.device(device):
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            hf_config(shape), attn_implementation="sdpa", dtype=compute_dtype(cfg.model.dtype, device)
        ).eval()
    return step_check(cfg, model, work, learner, device)


def merge_shapes(config: Qwen2_5_VLConfig, vision: str) -> Counter:
    """How many 2-D weights of each shape an optimised merge of this model processes."""
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    plan = assign(shapes, vision=vision, tied=bool(config.tie_word_embeddings))
    return Counter(shapes[name] for name, a in plan.items() if a.treatment == "merge")


def task_vectors(shape: tuple[int, ...], k: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """[k, *shape] float32 at fine-tuning scale, with low-rank structure (as bench_merge.py)."""
    g = torch.Generator().manual_seed(seed)
    d_out, d_in = shape
    r = min(64, d_out, d_in)
    taus = torch.randn(k, d_out, r, generator=g) @ torch.randn(k, r, d_in, generator=g) / math.sqrt(r)
    return (1e-3 * (taus + torch.randn(k, d_out, d_in, generator=g))).to(device)


def check_merge(config: Qwen2_5_VLConfig, device: torch.device, k: int, steps: int | None) -> dict:
    """``steps``: Adam steps per tensor (None: the methods' defaults, SPEC's 300)."""
    methods = {"wudi": WudiConfig(), "amm": AmmConfig()}
    if steps is not None:
        methods = {name: replace(params, steps=steps) for name, params in methods.items()}
    counts = {vision: merge_shapes(config, vision) for vision in ("mean", "merge")}
    METHODS["amm"](task_vectors((64, 32), k, device), AmmConfig(steps=2))  # warm-up (library start-up)
    per_shape = {}
    for shape in sorted(set(counts["mean"]) | set(counts["merge"])):
        taus = task_vectors(shape, k, device)
        row = {}
        for name, params in methods.items():
            sync(device)
            t0 = time.perf_counter()
            out = METHODS[name](taus, params)
            sync(device)
            row[f"{name}_s"] = time.perf_counter() - t0
            assert torch.isfinite(out).all(), f"{name} on {shape} is not finite"
        per_shape["x".join(map(str, shape))] = row
        del taus
    projected = {}
    for vision, counter in counts.items():
        for name in methods:
            seconds = sum(n * per_shape["x".join(map(str, s))][f"{name}_s"] for s, n in counter.items())
            projected[f"{name}_vision_{vision}_s"] = seconds
    return {
        "device": str(device),
        "k": k,
        "settings": {name: vars(params) for name, params in methods.items()},
        "per_shape": per_shape,
        "tensors_per_shape": {v: {"x".join(map(str, s)): n for s, n in c.items()} for v, c in counts.items()},
        "projected_whole_merge": projected,
        "assumptions": (
            f"whole-merge maths = sum over the model's 2-D weights that the treatment policy merges "
            f"(vision: mean, the default, or merge) of the measured seconds for their shape, K = {k} "
            f"float32 task vectors, one run per shape at the settings above; reading and writing excluded."
        ),
    }


def check_agreement(device: torch.device, k: int) -> dict:
    """Max |CPU - device| of WUDI and AMM on small tensors through both sides of the objective."""
    if device.type != "cuda":
        return {"devices": None, "max_abs_diff": None, "note": "no CUDA device: nothing to compare"}
    out = {}
    for shape in ((96, 64), (64, 96)):  # Gram side (d_in <= d_out), direct side
        taus = task_vectors(shape, k, torch.device("cpu"), seed=1)
        for name, params in {"wudi": WudiConfig(), "amm": AmmConfig()}.items():
            cpu = METHODS[name](taus, params)
            gpu = METHODS[name](taus.to(device), params).cpu()
            out[f"{name} {shape[0]}x{shape[1]}"] = {
                "max_abs_diff": float((cpu - gpu).abs().max()),
                "max_abs_value": float(cpu.abs().max()),
            }
    return {"devices": ["cpu", str(device)], "max_abs_diff": out}


def environment(device: torch.device) -> dict:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "device_memory_gb": torch.cuda.get_device_properties(0).total_memory / GB if device.type == "cuda" else None,
        "verl": VERL,
        "cpu_threads": os.cpu_count(),
    }


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(report: dict) -> str:
    env, work, learner = report["environment"], report["workload"], report["learner"]
    model = learner["model"]
    lines = [
        f"# GPU check ({'dry run, CPU' if report['dry_run'] else env['device']})",
        "",
        f"torch {env['torch']}, transformers {env['transformers']}, CUDA {env['cuda']}, verl: {env['verl']}.",
        f"Model: {report['shape']} shape, {model['parameters']:,} parameters "
        f"({model['vision_parameters']:,} vision), {model['master_dtype']} master, "
        f"{model['compute_dtype']} compute, {model['attn_implementation']}, gradient "
        f"checkpointing {model['gradient_checkpointing']}, log-probs in chunks of {model['logprob_chunk_tokens']} "
        f"tokens.",
        f"Micro-batch: {work['micro_batch']} samples x ({work['prompt']} prompt + {work['response_lengths']} "
        f"response) tokens, one {work['grid']}x{work['grid']}-patch image each ({(work['grid'] // 2) ** 2} image "
        f"tokens); configured layout: {learner['configured_layout']}.",
    ]
    for name, run in learner["layouts"].items():
        secs = run["seconds"]["per_phase_median"]
        lines += [
            "",
            f"## Learner memory and time, {name} (1 rank)",
            "",
            f"{run['tokens']:,} tokens in {run['token_slots']:,} slots (padding {100 * run['padding_share']:.1f} %).",
            "",
            "| phase | before GB | peak allocated GB | peak reserved GB | seconds (median) |",
            "|---|---|---|---|---|",
        ]
        for phase, row in run["memory"].items():
            lines.append(
                f"| {phase} | {fmt(row['before_gb'])} | {fmt(row['peak_allocated_gb'])} | "
                f"{fmt(row['peak_reserved_gb'])} | {fmt(secs.get(phase), 3)} |"
            )
    proj = report["projection"]
    lines += ["", "## Projection to more ranks", ""]
    if proj["per_rank_gb"] is None:
        lines.append(proj["assumptions"])
    else:
        lines += [
            f"| ranks | log-prob GB | forward+backward GB | optimizer step GB | fits {proj['gpu_gb']:.0f} GB |",
            "|---|---|---|---|---|",
        ]
        for n, row in proj["per_rank_gb"].items():
            lines.append(
                f"| {n} | {row['logprob']:.1f} | {row['forward_backward']:.1f} | {row['optimizer_step']:.1f} | "
                f"{'yes' if row['fits'] else 'NO'} |"
            )
        lines += ["", f"Assumptions: {proj['assumptions']}"]
    lines += [
        "",
        "## Throughput (real tokens)",
        "",
        "| layout | forward+backward tokens/s | MFU | log-prob tokens/s | MFU | learner tokens/s per rank |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in learner["layouts"].items():
        tp = run["throughput"]
        lines.append(
            f"| {name} | {fmt(tp['forward_backward_tokens_per_s'], 0)} | {fmt(100 * tp['mfu_forward_backward'], 1)} % "
            f"| {fmt(tp['logprob_tokens_per_s'], 0)} | {fmt(100 * tp['mfu_logprob'], 1)} % "
            f"| {fmt(tp['learner_tokens_per_s_per_rank'], 0)} |"
        )
    lines += [
        "",
        f"Assumptions: {learner['throughput_assumptions']}",
        "",
        f"## Merge maths on {report['merge']['device']} (K = {report['merge']['k']})",
        "",
        "| shape | tensors (vision mean) | tensors (vision merge) | WUDI s | AMM s |",
        "|---|---|---|---|---|",
    ]
    merge = report["merge"]
    for shape, row in merge["per_shape"].items():
        lines.append(
            f"| {shape} | {merge['tensors_per_shape']['mean'].get(shape, 0)} | "
            f"{merge['tensors_per_shape']['merge'].get(shape, 0)} | {row['wudi_s']:.3f} | {row['amm_s']:.3f} |"
        )
    projected = merge["projected_whole_merge"].items()
    lines += [""] + [f"- projected {key.removesuffix('_s')}: {value / 60:.2f} min" for key, value in projected]
    lines += ["", f"Assumptions: {merge['assumptions']}", "", "## CPU vs CUDA agreement", ""]
    agreement = report["merge_agreement"]
    if agreement["max_abs_diff"] is None:
        lines.append(agreement["note"])
    else:
        lines += ["| method, shape | max abs diff | max abs value |", "|---|---|---|"]
        for key, row in agreement["max_abs_diff"].items():
            lines.append(f"| {key} | {row['max_abs_diff']:.3e} | {row['max_abs_value']:.3e} |")
    lines += step_markdown(report["step"])
    lines += ["", f"Total wall time: {report['wall_seconds']:.1f} s", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: checks the code path only")
    parser.add_argument("--config", default=str(REPO / "configs" / "math.yaml"), help="training config (workload)")
    parser.add_argument("--repeats", type=int, help="learner passes per phase (default 3 on CUDA, 1 dry)")
    parser.add_argument("--experts", type=int, default=3, help="K task vectors per merged tensor")
    args = parser.parse_args(argv)
    wall = time.perf_counter()
    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device (use --dry-run on CPU)")
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    shape = SHAPE_TINY if args.dry_run else SHAPE_3B
    # Learner and config code run unchanged: only the model path and device are overridden.
    # No flash-attn on the bare nodes: sdpa. Dry run: the CPU quickstart's float32.
    overrides = [f"trainer.device={device.type}", "model.attn_implementation=sdpa"]
    cfg = load_config(TrainConfig, args.config, overrides + (["model.dtype=float32"] if args.dry_run else []))
    work = workload(cfg, args.dry_run)

    import torch.distributed as dist

    # A one-process group: FSDP2 shards over it exactly as over the learner's ranks.
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        learner = check_learner(cfg, shape, work, device, args.repeats or (1 if args.dry_run else 3))
    finally:
        dist.destroy_process_group()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the learner's model and optimizer died with check_learner
    step = check_step(cfg, shape, work, learner, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    projection = project_memory(learner, (4, 8), 80.0)
    report = {
        "dry_run": args.dry_run,
        "shape": "tiny" if args.dry_run else "Qwen2.5-VL-3B",
        "environment": environment(device),
        "workload": {**vars(work), "response_lengths": response_lengths(work), "config": args.config},
        "learner": learner,
        "projection": projection,
        "step": step,
        # Dry run: 3 Adam steps (the code path, not the figure).
        "merge": check_merge(hf_config(shape), device, args.experts, 3 if args.dry_run else None),
        "merge_agreement": check_agreement(device, args.experts),
    }
    report["wall_seconds"] = time.perf_counter() - wall
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
