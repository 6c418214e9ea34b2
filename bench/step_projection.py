"""Per-phase projection of one training step at 3B scale, strict order against pipelined rollouts.

``bench/gpu_check.py`` measures the learner's micro-batch on one GPU; this module measures the
rollout side on the same GPU (``measure_rollout``: the vision tower, chunked prefill and decode
steps of the bf16 model with a KV cache, and the device's memory bandwidth) and combines the two
into one step of the config's cluster (``project_step``, pure): ``rollout.num_workers`` engines
and ``learner.num_workers`` ranks on GPUs of their own, as ``configs/math.yaml`` places them.

The schedule is the driver's (``tiny_r1v.trainer.driver``): with ``trainer.max_staleness`` 0 a
step is rollout, then reward, then the learners, then the weight sync; with k >= 1 the next
step's generation runs while the current step is scored and trained, and each step still ends
with a sync that both sides wait for.

No vLLM on a bare node: the decode is transformers' eager forward with a KV cache at the full
batch (no CUDA graphs, no paged attention, finished sequences not leaving the batch), an upper
bound on vLLM's; the memory-bandwidth roofline of the same steps is the lower bound. Both are
reported, never one figure made up between them.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # gpu_check imports this module
    from bench.gpu_check import Workload
    from tiny_r1v.config import TrainConfig

GB = 1e9
REWARD_S = 2.0
"""Assumed seconds to score one 3B step's responses (16 CPU scorer processes; not measured at
that scale: the bare node has none of the scorer's libraries)."""
BROADCAST_GB_S = 100.0
"""Assumed NCCL broadcast bandwidth between the GPUs of one NVLink node (GB/s); one GPU cannot
measure it."""


@dataclass(frozen=True)
class StepPhases:
    """Seconds of one step's phases on the config's cluster (engines and ranks work in parallel)."""

    rollout: float
    """One engine generating its share of the step's samples."""
    reward: float
    """Scoring the step's responses (CPU processes)."""
    learner: float
    """One rank's old/reference log-probs, updates and optimizer step over its share."""
    sync: float
    """Gathering the weights on rank 0, broadcasting them and loading them into every engine."""


def project_step(phases: StepPhases, max_staleness: int) -> dict[str, float]:
    """Step seconds and each group's idle share in steady state.

    k = 0: rollout + reward + learner + sync. k >= 1: the next rollout overlaps this step's
    reward and update, so the step is max(rollout, reward + learner) + sync (the driver waits
    for the sync's loads before the next step; a larger k adds queued batches, not overlap).
    Idle share: 1 - busy / step, the rollout group busy in generation and the weight load,
    the learners in their update and the weight gather (both counted as the whole sync)."""
    if max_staleness < 0:
        raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
    if max_staleness == 0:
        step = phases.rollout + phases.reward + phases.learner + phases.sync
    else:
        step = max(phases.rollout, phases.reward + phases.learner) + phases.sync
    return {
        "step_s": step,
        "rollout_idle_share": 1 - (phases.rollout + phases.sync) / step,
        "learner_idle_share": 1 - (phases.learner + phases.sync) / step,
    }


@dataclass(frozen=True)
class RolloutWorkload:
    """One engine's share of a step: ``batch`` sequences of ``prompt`` tokens (one image of
    ``grid`` x ``grid`` patches each) generating up to ``response`` tokens."""

    batch: int
    prompt: int
    response: int
    grid: int
    engines: int


def rollout_workload(samples_per_step: int, engines: int, prompt: int, response: int, grid: int) -> RolloutWorkload:
    return RolloutWorkload(math.ceil(samples_per_step / engines), prompt, response, grid, engines)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CPU work is done when the call returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], object]) -> tuple[object, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def memory_bandwidth(device: torch.device, nbytes: int, repeats: int = 5) -> float:
    """Device memory bandwidth in bytes/s: a copy of ``nbytes`` reads and writes them once each."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    seconds = [_timed(device, lambda: dst.copy_(src))[1] for _ in range(repeats)]
    return 2 * nbytes / statistics.median(seconds)


def measure_rollout(
    model: torch.nn.Module, work: RolloutWorkload, device: torch.device, *, steps: int, chunk: int, image_chunk: int
) -> dict:
    """Seconds of one engine's rollout phases, measured with the eager model (``model`` in the
    rollout's dtype, on ``device``, eval mode).

    - vision: the tower over ``work.batch`` images of ``work.grid``² patches, ``image_chunk``
      images per call;
    - prefill: ``work.prompt`` random text tokens per sequence, ``chunk`` positions per call
      (chunked prefill, as vLLM schedules long prompts), filling a KV cache;
    - decode: the median of ``steps`` one-token steps at the full batch, right after the prefill
      (context = prompt) and again once the cache holds prompt + response - steps tokens."""
    config = model.config
    text = config.text_config
    vision = config.vision_config
    generator = torch.Generator().manual_seed(0)
    ordinary = config.vision_start_token_id - 10
    patch = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2

    def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.randn(n * work.grid**2, patch, generator=generator).to(device, model.dtype)
        return pixels, torch.tensor([[1, work.grid, work.grid]] * n, device=device)

    vision_s = 0.0
    with torch.no_grad():
        model.model.get_image_features(*images(1))  # warm-up
        for start in range(0, work.batch, image_chunk):
            pixels, grids = images(min(image_chunk, work.batch - start))
            vision_s += _timed(device, lambda p=pixels, g=grids: model.model.get_image_features(p, g))[1]

        model(input_ids=torch.randint(ordinary, (1, 8), generator=generator).to(device), logits_to_keep=1)  # warm-up
        cache = None

        def forward(ids: torch.Tensor) -> torch.Tensor:
            nonlocal cache
            out = model(input_ids=ids.to(device), past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            return out.logits[:, -1].argmax(-1, keepdim=True)

        def fill(tokens: int) -> float:
            seconds = 0.0
            for start in range(0, tokens, chunk):
                ids = torch.randint(ordinary, (work.batch, min(chunk, tokens - start)), generator=generator)
                seconds += _timed(device, lambda ids=ids: forward(ids))[1]
            return seconds

        def decode() -> float:
            token = torch.randint(ordinary, (work.batch, 1), generator=generator)
            forward(token)  # the first step after a prefill sets up the step's buffers
            times = []
            for _ in range(steps):
                token, seconds = _timed(device, lambda token=token: forward(token))
                times.append(seconds)
            return statistics.median(times)

        prefill_s = fill(work.prompt)
        decode_start_s = decode()
        fill(max(work.response - 2 * (steps + 1), 0))
        decode_end_s = decode()
        context_end = cache.get_seq_length()
        del cache

    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "visual" not in n)
    # Each decode step reads the text weights once and every cached key and value.
    kv_bytes_per_token = (
        2
        * text.num_hidden_layers
        * text.num_key_value_heads
        * (text.hidden_size // text.num_attention_heads)
        * model.dtype.itemsize
    )
    bandwidth = memory_bandwidth(device, min(4 * 2**30, 4 * weight_bytes))
    mean_context = work.prompt + work.response / 2
    roofline_step = (weight_bytes + work.batch * mean_context * kv_bytes_per_token) / bandwidth
    return {
        "workload": asdict(work),
        "dtype": str(model.dtype).removeprefix("torch."),
        "vision_s": vision_s,
        "prefill_s": prefill_s,
        "decode_step_s": {f"context_{work.prompt}": decode_start_s, f"context_{context_end}": decode_end_s},
        "decode_steps": steps,
        "memory_bandwidth_gb_s": bandwidth / GB,
        "text_weight_gb": weight_bytes / GB,
        "kv_bytes_per_token": kv_bytes_per_token,
        "rollout_s": {
            # Upper bound: every step at the full batch, step time linear in the context.
            "eager_upper": vision_s + prefill_s + work.response * (decode_start_s + decode_end_s) / 2,
            # Lower bound: the decode steps at the memory roofline; vision and prefill as measured.
            "roofline_lower": vision_s + prefill_s + work.response * roofline_step,
        },
    }


def sync_seconds(weight_bytes: float, bandwidth: float, broadcast_gb_s: float) -> float:
    """A sync: one broadcast of the compute-dtype weights at ``broadcast_gb_s`` and each engine's
    copy of them into its parameters at its memory bandwidth (bytes/s)."""
    return weight_bytes / (broadcast_gb_s * GB) + 2 * weight_bytes / bandwidth


def project(rollout: dict, learner_s: float, reward_s: float, broadcast_gb_s: float, weight_bytes: float) -> dict:
    """Strict and pipelined step for both rollout bounds (``rollout`` from ``measure_rollout``)."""
    sync = sync_seconds(weight_bytes, rollout["memory_bandwidth_gb_s"] * GB, broadcast_gb_s)
    rows = {}
    for bound, rollout_s in rollout["rollout_s"].items():
        phases = StepPhases(rollout=rollout_s, reward=reward_s, learner=learner_s, sync=sync)
        strict, pipelined = project_step(phases, 0), project_step(phases, 1)
        rows[bound] = {
            "phases_s": asdict(phases),
            "strict": strict,
            "pipelined": pipelined,
            "speedup": strict["step_s"] / pipelined["step_s"],
        }
    return rows


def check(cfg: TrainConfig, model: torch.nn.Module, work: Workload, learner: dict, device: torch.device) -> dict:
    """One engine's rollout of ``cfg``'s step measured with ``model`` (the
    rollout's dtype, on ``device``), and the step projected with the learner's seconds:
    ``learner`` is gpu_check's learner section, ``work`` its micro-batch workload. CPU (a dry
    run): 4 sequences, 2 decode steps."""
    dry = device.type != "cuda"
    engines = cfg.rollout.num_workers
    rollout_work = rollout_workload(cfg.samples_per_update(), engines, work.prompt, work.response, work.grid)
    if dry:
        rollout_work = replace(rollout_work, batch=4)
    rollout = measure_rollout(
        model, rollout_work, device, steps=2 if dry else 8, chunk=64 if dry else 512, image_chunk=16
    )
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    run = learner["layouts"][learner["configured_layout"]]
    learner_s = run["tokens"] / run["throughput"]["learner_tokens_per_s_per_rank"] * work.micro_per_mini
    return {
        "rollout": rollout,
        "learner_s": learner_s,
        "learner_ranks": cfg.learner.num_workers,
        "rows": project(rollout, learner_s, REWARD_S, BROADCAST_GB_S, weight_bytes),
        "assumptions": (
            f"GPUs of their own for each engine and rank ({engines} + {cfg.learner.num_workers}); "
            f"rollout: the vision tower, chunked prefill and decode measured on one GPU with "
            f"transformers' eager model and a KV cache (no vLLM on the node); upper bound: every decode "
            f"step at the full batch, step time linear in the context between the two measured points; "
            f"lower bound: the decode steps at the measured memory bandwidth (text weights + the cached "
            f"keys and values at the mean context per step). Learner: the {learner['configured_layout']} "
            f"micro-batch above times {work.micro_per_mini} micro-batches per rank, FSDP's communication "
            f"across ranks not counted. Reward: {REWARD_S:.0f} s assumed. Sync: the "
            f"{weight_bytes / GB:.2f} GB of {rollout['dtype']} weights broadcast at an assumed "
            f"{BROADCAST_GB_S:.0f} GB/s plus one copy into each engine at the measured bandwidth. "
            f"Schedule: the driver's (project_step)."
        ),
    }


def markdown_lines(section: dict) -> list[str]:
    """The report's "Step projection" section."""
    rollout, work = section["rollout"], section["rollout"]["workload"]
    decode = ", ".join(f"{k.removeprefix('context_')}: {v * 1e3:.1f} ms" for k, v in rollout["decode_step_s"].items())
    lines = [
        "",
        f"## Step projection ({work['engines']} engines + {section['learner_ranks']} learner ranks)",
        "",
        f"One engine's share: {work['batch']} sequences x ({work['prompt']} prompt + up to {work['response']} "
        f"response) tokens, {rollout['dtype']}. Measured: vision tower {rollout['vision_s']:.2f} s, prefill "
        f"{rollout['prefill_s']:.2f} s, eager decode step by context ({decode}), memory bandwidth "
        f"{rollout['memory_bandwidth_gb_s']:.0f} GB/s; learner {section['learner_s']:.2f} s per step per rank.",
        "",
        "| rollout bound | rollout s | reward s | learner s | sync s | strict step s | pipelined step s | "
        "speed-up | idle share strict (rollout / learner) | idle share pipelined |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for bound, row in section["rows"].items():
        p, s, q = row["phases_s"], row["strict"], row["pipelined"]
        lines.append(
            f"| {bound} | {p['rollout']:.1f} | {p['reward']:.1f} | {p['learner']:.1f} | {p['sync']:.2f} | "
            f"{s['step_s']:.1f} | {q['step_s']:.1f} | {row['speedup']:.2f} | "
            f"{s['rollout_idle_share']:.2f} / {s['learner_idle_share']:.2f} | "
            f"{q['rollout_idle_share']:.2f} / {q['learner_idle_share']:.2f} |"
        )
    return lines + ["", f"Assumptions: {section['assumptions']}"]
