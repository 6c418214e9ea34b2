"""One FSDP2 learner rank: old/reference log-probs, clipped policy loss, optimizer step, weights out.

A plain class: the Ray actor in the trainer wraps it, and tests drive it in spawned processes.
Every public method except the constructor is collective — call it on all ranks together.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn, kl_penalty
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_weights
from verl.utils.torch_functional import masked_mean
from verl.workers.config import FSDPActorConfig

from tiny_r1v.config.train import TrainConfig
from tiny_r1v.device import attention_kernel, compute_dtype, resolve_device
from tiny_r1v.learner.inputs import EncodedPrompt, PolicyInputs, collate, cut_by_tokens, encode_prompt, pack
from tiny_r1v.learner.policy import PolicyModel, shard_policy
from tiny_r1v.learner.schedule import lr_factor
from tiny_r1v.protocol import TrainSample
from tiny_r1v.timing import timed

# Keys of the float32 master weights in a rank's optimizer file (the optimizer's are `<name>/<slot>`).
_MASTER = "param/"

# Checkpoint keys of the wrapped model start with the wrapper's attribute name.
_WRAPPER_PREFIX = "model."


def _batches_of(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive pieces of ``size`` items (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def logprob_gap(micro_batches: Sequence[PolicyInputs], logprobs: Sequence[torch.Tensor]) -> dict[str, float]:
    """How far the rollout engine's log-probs of the sampled tokens are from the learner's of the
    same tokens under the same weights (``logprobs[i]``: ``(b, R)`` of micro-batch ``i``): a wrong
    weight sync or a precision mismatch shows here first. Mean and max absolute difference over
    the response tokens; empty when the samples carry no rollout log-probs."""
    gaps = [
        ((lp.cpu() - mb.rollout_logprobs).abs() * mb.response_mask, mb.response_mask)
        for mb, lp in zip(micro_batches, logprobs, strict=True)
        if mb.rollout_logprobs is not None
    ]
    if not gaps:
        return {}
    tokens = sum(float(mask.sum()) for _, mask in gaps)
    return {
        "rollout/logprob_diff_mean": sum(float(gap.sum()) for gap, _ in gaps) / tokens,
        "rollout/logprob_diff_max": max(float(gap.max()) for gap, _ in gaps),
    }


def micro_batch_shape(micro_batches: Sequence[PolicyInputs], mini_batches: int) -> dict[str, float]:
    """Micro-batches per optimizer step on this rank, real (prompt + response) tokens per
    micro-batch, and the share of the tensors' token slots that is padding (0 when packed)."""
    real = sum(mb.real_tokens() for mb in micro_batches)
    slots = sum(mb.input_ids.numel() for mb in micro_batches)
    return {
        "micro_batches": len(micro_batches) / mini_batches,
        "tokens_per_micro_batch": real / len(micro_batches),
        "padding_share": 1 - real / slots,
    }


def truncated_is_weights(
    micro_batches: Sequence[PolicyInputs], old: Sequence[torch.Tensor], cap: float | None
) -> tuple[list[torch.Tensor | None], dict[str, float]]:
    """Truncated importance weights ``min(exp(old - rollout log-prob), cap)`` per response token
    (verl's token-level rollout correction), ``(b, R)`` per micro-batch, 0 on padding: the
    learner's probability of each sampled token before the update over the probability the
    rollout engine sampled it with. None for a micro-batch without rollout log-probs, and for all
    with ``cap`` None (off). Metrics over the response tokens: mean and max of the truncated
    weights, and the share of tokens whose weight the cap cut."""
    if cap is None:
        return [None] * len(micro_batches), {}
    weights, sums, tokens, largest = [], defaultdict(float), 0.0, 0.0
    for mb, lp in zip(micro_batches, old, strict=True):
        if mb.rollout_logprobs is None:
            weights.append(None)
            continue
        mask = mb.response_mask
        w, stats = compute_rollout_correction_weights(
            lp.cpu() - mb.rollout_logprobs, mask, rollout_is="token", rollout_is_threshold=cap
        )
        weights.append(w)
        # verl's figures are means over this micro-batch's tokens: weighted back into sums.
        count = float(mask.sum())
        tokens += count
        sums["mean"] += stats["rollout_is_mean"] * count
        sums["clipped"] += stats["rollout_is_ratio_fraction_high"] * count
        largest = max(largest, stats["rollout_is_max"])
    if not tokens:
        return weights, {}
    return weights, {
        "rollout/is_weight_mean": sums["mean"] / tokens,
        "rollout/is_weight_max": largest,
        "rollout/is_clip_frac": sums["clipped"] / tokens,
    }


def _local(value: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a (possibly sharded) tensor, on CPU, contiguous for safetensors."""
    if isinstance(value, DTensor):
        value = value.to_local()
    return value.detach().cpu().contiguous()


def _copy_into(target: torch.Tensor, saved: torch.Tensor | None, what: str) -> None:
    """Copy a saved shard into this rank's live tensor, in its own storage (on the GPU a copy
    made by `_local` would be a throwaway); ValueError naming `what` when missing or reshaped."""
    local = target.to_local() if isinstance(target, DTensor) else target
    if saved is None or saved.shape != local.shape:
        raise ValueError(f"{what} missing or of another shape")
    with torch.no_grad():
        local.copy_(saved)


def shard_for_rank(samples: Sequence[Any], rank: int, world_size: int, mini_batch: int) -> list[Any]:
    """This rank's share of an iteration's samples, so that mini-batch ``k`` of every rank
    together holds exactly global mini-batch ``k`` (``mini_batch`` samples).

    Splitting each mini-batch across ranks, rather than the whole list in contiguous blocks,
    keeps an optimizer step's data independent of the number of ranks.
    """
    if len(samples) % mini_batch or mini_batch % world_size:
        raise ValueError(
            f"{len(samples)} samples do not split into mini-batches of {mini_batch} over {world_size} ranks"
        )
    per_rank = mini_batch // world_size
    return [
        samples[first + rank * per_rank + i] for first in range(0, len(samples), mini_batch) for i in range(per_rank)
    ]


def save_weights(model: torch.nn.Module, directory: Path, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """``model.save_pretrained`` of ``weights`` with floating tensors cast to ``dtype``, the
    config saying so (``dtype="auto"`` loads it back in ``dtype``)."""
    weights = {name: t.to(dtype) if t.is_floating_point() else t for name, t in weights.items()}
    # Qwen2.5-VL's text and vision sub-configs carry a dtype of their own; save_pretrained
    # writes the live (float32) parameters' dtype at the top, so config.json is written again.
    configs = [model.config, *(getattr(model.config, key) for key in model.config.sub_configs)]
    saved = [config.dtype for config in configs]
    try:
        model.save_pretrained(directory, state_dict=weights)
        for config in configs:
            config.dtype = dtype
        model.config.save_pretrained(directory)
    finally:
        for config, old in zip(configs, saved, strict=True):
            config.dtype = old


class Learner:
    """One rank of the FSDP2-sharded policy (and frozen reference when ``kl_coef > 0``, held in
    the compute dtype: it is never updated, so it needs no float32 masters)."""

    def __init__(
        self,
        cfg: TrainConfig,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        checkpoint: str | None = None,
    ) -> None:
        """Join the process group and shard the policy.

        Args:
            checkpoint: a directory written by :meth:`save` to resume from (policy weights and
                optimizer state); the reference model always comes from ``cfg.model.path``.
        """
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.device = resolve_device(cfg.trainer.device)
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = master_addr, str(master_port)
        if self.device.type == "cuda":
            torch.cuda.set_device(0)  # Ray exposes exactly the actor's GPU as device 0
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
        torch.manual_seed(cfg.trainer.seed + rank)

        self.processor = AutoProcessor.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        # Master weights and optimizer state stay float32; bf16 is only the compute dtype.
        self.mixed_precision = MixedPrecisionPolicy(
            param_dtype=compute_dtype(cfg.model.dtype, self.device), reduce_dtype=torch.float32
        )
        start = cfg.model.path if checkpoint is None else str(Path(checkpoint) / "model")
        self.policy = self._load_policy(start, trainable=True)
        self.reference = self._load_policy(cfg.model.path, trainable=False) if cfg.algorithm.kl_coef > 0 else None
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        lcfg = cfg.learner
        self.optimizer = torch.optim.AdamW(self.params, lr=lcfg.lr, betas=lcfg.betas, weight_decay=lcfg.weight_decay)
        hf_config = self.policy.model.config
        self.image_token_id = hf_config.image_token_id
        self.merge_size = hf_config.vision_config.spatial_merge_size
        self.pad_token_id = self.processor.tokenizer.pad_token_id
        algo = cfg.algorithm
        # verl's policy loss reads its clip settings and global batch sizes from an actor config.
        self.loss_config = FSDPActorConfig(
            strategy="fsdp",
            clip_ratio_low=algo.clip_ratio_low,
            clip_ratio_high=algo.clip_ratio_high,
            loss_agg_mode=algo.loss_agg_mode,
            ppo_mini_batch_size=lcfg.global_batch_size,
            ppo_micro_batch_size_per_gpu=lcfg.micro_batch_size,
            rollout_n=cfg.rollout.n,
        )
        self.policy_loss = get_policy_loss_fn("vanilla")
        if checkpoint is not None:
            self._load_training_state(Path(checkpoint))

    def _load_policy(self, path: str, trainable: bool) -> PolicyModel:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path,
            dtype=torch.float32 if trainable else self.mixed_precision.param_dtype,
            attn_implementation=attention_kernel(self.cfg.model.attn_implementation, self.device),
            trust_remote_code=self.cfg.model.trust_remote_code,
        )
        if not trainable:
            model.requires_grad_(False).eval()
        elif self.cfg.model.freeze_vision_tower:
            model.model.visual.requires_grad_(False)
        if trainable and self.cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy = PolicyModel(model, self.cfg.learner.logprob_chunk_tokens)
        shard_policy(policy, self.mixed_precision)
        return policy.to(self.device)

    # ---------------------------------------------------------------- training

    def _encode(self, samples: Sequence[TrainSample]) -> list[tuple[EncodedPrompt, TrainSample]]:
        # The G responses of a group share a prompt: run the processor once per prompt.
        cache: dict[str, EncodedPrompt] = {}
        pairs = []
        for sample in samples:
            uid = sample.prompt.uid
            if uid not in cache:
                cache[uid] = encode_prompt(self.processor, sample.prompt, self.image_token_id, self.merge_size)
            pairs.append((cache[uid], sample))
        return pairs

    def _mini_batches(self, pairs: Sequence[tuple[EncodedPrompt, TrainSample]]) -> list[list[PolicyInputs]]:
        """This rank's share of each mini-batch (``samples_per_update / world_size`` samples) cut
        into micro-batches: by ``micro_batch_size``, or by ``max_tokens_per_micro_batch`` into as
        many on every rank (the most any rank needs), since each pass is collective."""
        lcfg = self.cfg.learner
        per_rank = self.cfg.samples_per_update() // self.world_size
        minis = [pairs[first : first + per_rank] for first in range(0, len(pairs), per_rank)]
        budget = lcfg.max_tokens_per_micro_batch
        if budget is None:
            cuts = [list(_batches_of(mini, lcfg.micro_batch_size)) for mini in minis]
        else:
            padded = not lcfg.padding_free
            needed = torch.tensor([len(cut_by_tokens(mini, budget, padded)) for mini in minis], device=self.device)
            dist.all_reduce(needed, op=dist.ReduceOp.MAX)
            cuts = [cut_by_tokens(mini, budget, padded, int(n)) for mini, n in zip(minis, needed, strict=True)]
        if lcfg.padding_free:
            rope_index = self.policy.model.model.get_rope_index
            return [[pack(group, rope_index) for group in cut] for cut in cuts]
        return [[collate(group, self.pad_token_id) for group in cut] for cut in cuts]

    @torch.no_grad()
    def _logprobs(self, module: PolicyModel, micro_batches: Sequence[PolicyInputs]) -> list[torch.Tensor]:
        temperature = self.cfg.rollout.temperature
        return [module(mb.to(self.device), temperature)[0] for mb in micro_batches]

    def train_step(self, samples: Sequence[TrainSample], step: int) -> dict[str, float]:
        """Recompute old (and reference) log-probs, then run the PPO updates on this rank's shard,
        at training step `step`'s learning rate (0-based; `learner.lr_schedule`).

        ``samples`` is this rank's share of the iteration: ``rollout_batch_size * n / world_size``
        responses. Mini-batches are ``samples_per_update / world_size`` of them per rank; the
        loss of each is normalised over the tokens of the whole mini-batch on all ranks.

        Returns:
            Metrics averaged over this rank's micro-batches, the step's `lr`, and per-phase seconds.
        """
        lcfg = self.cfg.learner
        lr = lcfg.lr * lr_factor(
            step, self.cfg.trainer.total_steps, lcfg.lr_warmup_steps, lcfg.lr_schedule, lcfg.min_lr_ratio
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        timings: dict[str, float] = {}
        with timed(timings, "encode"):
            minis = self._mini_batches(self._encode(samples))
            micro_batches = [mb for mini in minis for mb in mini]

        with timed(timings, "old_logprob"):
            self.policy.eval()
            old = self._logprobs(self.policy, micro_batches)
        ref = None
        if self.reference is not None:
            with timed(timings, "ref_logprob"):
                ref = self._logprobs(self.reference, micro_batches)
        is_weights, is_metrics = truncated_is_weights(micro_batches, old, self.cfg.algorithm.tis_cap)

        with timed(timings, "update"):
            self.policy.train()
            sums: dict[str, float] = defaultdict(float)
            steps = 0
            for _ in range(lcfg.ppo_epochs):
                first = 0
                for mini in minis:
                    indices = range(first, first + len(mini))
                    first += len(mini)
                    self._set_global_batch(mini)
                    for i in indices:
                        step_metrics = self._micro_step(
                            micro_batches[i], old[i], None if ref is None else ref[i], is_weights[i]
                        )
                        for key, value in step_metrics.items():
                            # A micro-batch's loss is its share of the mini-batch's (normalised over the
                            # mini-batch on all ranks): summed. The other figures are micro-batch means.
                            sums[key] += value if key == "pg_loss" else value / len(indices)
                    grad_norm = self._optimizer_step()
                    sums["grad_norm"] += grad_norm
                    steps += 1
        metrics = {key: value / steps for key, value in sums.items()}
        metrics["optimizer_steps"] = float(steps)
        metrics["lr"] = lr
        metrics.update(micro_batch_shape(micro_batches, len(minis)))
        metrics.update(logprob_gap(micro_batches, old))
        metrics.update(is_metrics)
        metrics.update({f"time/{key}": value for key, value in timings.items()})
        return metrics

    def _set_global_batch(self, micro_batches: Sequence[PolicyInputs]) -> None:
        """Token and sequence counts of the mini-batch on all ranks, for verl's ``agg_loss``."""
        tokens = sum(float(mb.response_mask.sum()) for mb in micro_batches)
        counts = torch.tensor(
            [tokens, sum(len(mb.advantages) for mb in micro_batches)],
            dtype=torch.float64,
            device=self.device,
        )
        dist.all_reduce(counts)
        # loss_scale_factor: the constant seq-mean-token-sum-norm (Dr. GRPO) divides by; verl would
        # otherwise take the micro-batch's padded width, which varies.
        self.loss_config.global_batch_info.update(
            dp_size=self.world_size,
            batch_num_tokens=counts[0].item(),
            global_batch_size=counts[1].item(),
            loss_scale_factor=self.cfg.rollout.max_response_length,
        )

    def _micro_step(
        self, mb: PolicyInputs, old: torch.Tensor, ref: torch.Tensor | None, is_weights: torch.Tensor | None
    ) -> dict[str, float]:
        mb = mb.to(self.device)
        logprobs, entropy = self.policy(mb, self.cfg.rollout.temperature)
        mask = mb.response_mask
        advantages = mb.advantages.unsqueeze(-1) * mask
        loss, pg_metrics = self.policy_loss(
            old_log_prob=old,
            log_prob=logprobs,
            advantages=advantages,
            response_mask=mask,
            loss_agg_mode=self.cfg.algorithm.loss_agg_mode,
            config=self.loss_config,
            rollout_is_weights=None if is_weights is None else is_weights.to(self.device),
        )
        metrics = {
            "pg_loss": loss.item(),
            "pg_clipfrac": pg_metrics["actor/pg_clipfrac"],
            "ppo_kl": pg_metrics["actor/ppo_kl"],
            "entropy": masked_mean(entropy.detach(), mask).item(),
        }
        if ref is not None:
            kl = kl_penalty(logprobs, ref, self.cfg.algorithm.kl_penalty)
            kl_loss = agg_loss(kl, mask, self.cfg.algorithm.loss_agg_mode, **self.loss_config.global_batch_info)
            loss = loss + self.cfg.algorithm.kl_coef * kl_loss
            metrics["kl"] = masked_mean(kl.detach(), mask).item()
        loss.backward()
        return metrics

    def _optimizer_step(self) -> float:
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.learner.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        # A non-finite norm means a broken batch: skip it rather than poison the weights.
        if torch.isfinite(torch.tensor(grad_norm)):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    # ---------------------------------------------------------------- weights out

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) policy weights on CPU under Hugging Face names, on rank 0; ``{}`` elsewhere."""
        state = get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {name.removeprefix(_WRAPPER_PREFIX): tensor for name, tensor in state.items()}

    def model_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's full weights under Hugging Face names in the model's dtype (the compute
        dtype, never the float32 masters), one tensor at a time on this rank's device. Each is
        gathered from every rank, so iterate it on all ranks together: rank 0 gets the tensors,
        the others nothing."""
        dtype = self.mixed_precision.param_dtype
        for name, param in self.policy.named_parameters():
            full = param.full_tensor() if isinstance(param, DTensor) else param
            if self.rank == 0:
                yield name.removeprefix(_WRAPPER_PREFIX), full.detach().to(dtype)

    def weight_entries(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        """(name, dtype, shape) of each tensor `model_weights` yields, in its order (no gather)."""
        dtype = self.mixed_precision.param_dtype
        params = self.policy.named_parameters()
        return [(name.removeprefix(_WRAPPER_PREFIX), dtype, tuple(param.shape)) for name, param in params]

    def save(self, directory: str) -> None:
        """Write a checkpoint into ``directory`` (shared by all ranks): ``model/`` is a Hugging
        Face safetensors checkpoint in the compute dtype (``model.dtype``; float32 on the CPU
        quickstart, bfloat16 on GPU: what the merge and evaluation read) with the processor files;
        ``optim/rank-<r>.safetensors`` holds this rank's optimizer shard and its float32 master
        weights (``param/<name>``), so a resume continues from the masters, not from the rounded
        model. Resuming needs the same number of ranks."""
        directory = Path(directory)
        weights = self.full_state_dict()
        if self.rank == 0:
            save_weights(self.policy.model, directory / "model", weights, self.mixed_precision.param_dtype)
            self.processor.save_pretrained(directory / "model")
        state = get_optimizer_state_dict(self.policy, self.optimizer)
        tensors = {
            f"{name}/{key}": _local(value) for name, slots in state["state"].items() for key, value in slots.items()
        }
        tensors.update({f"{_MASTER}{name}": _local(param) for name, param in self.policy.named_parameters()})
        (directory / "optim").mkdir(parents=True, exist_ok=True)
        save_file(tensors, directory / "optim" / f"rank-{self.rank}.safetensors")
        dist.barrier()

    def _load_training_state(self, directory: Path) -> None:
        path = directory / "optim" / f"rank-{self.rank}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no optimizer shard for rank {self.rank} (saved with fewer ranks?)")
        saved = load_file(path)
        for name, param in self.policy.named_parameters():
            _copy_into(param, saved.get(f"{_MASTER}{name}"), f"{path}: master weights {name}")
        state = get_optimizer_state_dict(self.policy, self.optimizer)
        for name, slots in state["state"].items():
            for key, value in slots.items():
                _copy_into(value, saved.get(f"{name}/{key}"), f"{path}: optimizer state {name}/{key}")
        set_optimizer_state_dict(self.policy, self.optimizer, state)

    def close(self) -> None:
        """Leave the process group."""
        if dist.is_initialized():
            dist.destroy_process_group()
