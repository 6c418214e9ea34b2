"""Schema of a LIPO/GRPO training run (SPEC §1, §2 and §5 switches), validated before any actor starts.

Each section's `validate()` checks its own fields and names them relative to the section;
`TrainConfig.validate()` puts them under the section's key, checks the cross-section rules and
resolves the defaults that depend on other sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from tiny_r1v.config.loader import require, section
from tiny_r1v.learner.schedule import LrSchedule
from tiny_r1v.tasks import ImagePosition, PromptFormat, Task

# Qwen2.5-VL: 14-pixel patches merged 2x2, so one image token per 28x28 pixels.
PIXELS_PER_IMAGE_TOKEN = 28 * 28


def _at_least(key: str, value: float, low: float) -> None:
    require(value >= low, key, f"must be >= {low}, got {value}")


def _positive(key: str, value: float) -> None:
    require(value > 0, key, f"must be > 0, got {value}")


def _within(key: str, value: float, low: float, high: float, brackets: str = "[]") -> None:
    above = value > low if brackets[0] == "(" else value >= low
    below = value < high if brackets[1] == ")" else value <= high
    require(above and below, key, f"must be in {brackets[0]}{low}, {high}{brackets[1]}, got {value}")


def _not_empty(key: str, value: str) -> None:
    require(value != "", key, "must not be empty")


@dataclass(frozen=True)
class PromptConfig:
    """How an example becomes a prompt: shared by training data and evaluation benchmarks."""

    prompt_format: PromptFormat = "boxed"
    """Where the final answer goes: `\\boxed{...}` or `<answer>...</answer>` (SPEC §1 switch)."""
    image_position: ImagePosition = "first"
    """Where the images go in the prompt: ``first``, before the text, or ``last``, right before the
    answer (`tiny_r1v.tasks.ImagePosition`); a model is trained and evaluated with one of them."""
    max_prompt_length: int = 2048
    """Prompt length limit in tokens, image tokens included."""
    min_pixels: int = 262144
    """Images smaller than this many pixels are upscaled to it (aspect ratio kept)."""
    max_pixels: int = 1048576
    """Images larger than this many pixels are downscaled to it; one token per 28x28 pixels."""

    def validate(self) -> None:
        _positive("max_prompt_length", self.max_prompt_length)
        _positive("min_pixels", self.min_pixels)
        require(
            self.min_pixels <= self.max_pixels,
            "min_pixels",
            f"must be <= max_pixels ({self.max_pixels}), got {self.min_pixels}",
        )
        image_tokens = self.max_pixels // PIXELS_PER_IMAGE_TOKEN
        require(
            image_tokens < self.max_prompt_length,
            "max_pixels",
            f"an image of {self.max_pixels} pixels takes {image_tokens} tokens, which leaves no "
            f"room for text in max_prompt_length ({self.max_prompt_length})",
        )


@dataclass(frozen=True)
class DataConfig(PromptConfig):
    # Keyword-only: a required field may not follow the defaulted ones inherited from PromptConfig.
    train_files: tuple[str, ...] = field(kw_only=True)
    """Training data files (JSONL or Parquet)."""
    val_files: tuple[str, ...] = ()
    """Validation data files, decoded greedily (see trainer.val_freq); empty: no validation."""
    task: Literal[Task, "mixed"] = "math"
    """Task family of every row (the loader refuses rows of another) and the LIPO `xi` default;
    `mixed`: rows of any task (a model trained on a mixture). Each row's own task selects its
    accuracy reward (SPEC §1)."""
    shuffle: bool = True
    """Shuffle the training prompts every epoch."""
    seed: int = 1
    """Seed of the data shuffle."""

    @property
    def row_task(self) -> Task | None:
        """The task every row must have (`load_examples`' `task`); None for a mixture."""
        return None if self.task == "mixed" else self.task

    def validate(self) -> None:
        require(len(self.train_files) > 0, "train_files", "must list at least one file")
        super().validate()


@dataclass(frozen=True)
class ModelConfig:
    path: str
    """Hugging Face model directory (or hub id available offline) of the policy's start point."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Parameter dtype of learner and rollout; auto = bfloat16 on GPU, float32 on CPU."""
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = "auto"
    """Learner attention kernel; auto = flash_attention_2 on CUDA when `flash_attn` imports, else
    sdpa (the learners log their choice). flash_attention_2 without CUDA or `flash_attn` is an
    error."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about a third more compute."""
    freeze_vision_tower: bool = False
    """Train the language model only; the vision tower and its merger keep their weights."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model directory."""

    def validate(self) -> None:
        _not_empty("path", self.path)


@dataclass(frozen=True)
class EngineConfig:
    """vLLM engine settings: shared by the rollout workers and evaluation."""

    max_response_length: int = 2048
    """Generation limit in tokens; in training also the default LIPO `l_max`."""
    tensor_parallel_size: int = 1
    """GPUs per vLLM engine."""
    gpu_memory_utilization: float = 0.6
    """Share of GPU memory vLLM may take, in (0, 1]; ignored when `kv_cache_memory_mb` is set."""
    kv_cache_memory_mb: int | None = None
    """Fixed KV-cache size in MiB instead of `gpu_memory_utilization`. Set it on CPU, where the
    utilisation is a share of host RAM net of the process's own size and fails unpredictably."""
    max_images_per_prompt: int = 1
    """Most images one prompt may carry (vLLM reserves encoder space for this many)."""
    enforce_eager: bool = False
    """Disable CUDA graphs in vLLM: slower decoding, faster start-up and less memory."""

    def validate(self) -> None:
        _positive("max_response_length", self.max_response_length)
        _positive("tensor_parallel_size", self.tensor_parallel_size)
        _within("gpu_memory_utilization", self.gpu_memory_utilization, 0, 1, "(]")
        if self.kv_cache_memory_mb is not None:
            _positive("kv_cache_memory_mb", self.kv_cache_memory_mb)
        _at_least("max_images_per_prompt", self.max_images_per_prompt, 0)


@dataclass(frozen=True)
class RolloutConfig(EngineConfig):
    n: int = 5
    """Group size G: responses sampled per prompt; advantages compare within a group."""
    temperature: float = 1.0
    """Sampling temperature; > 0, since identical greedy responses give zero advantage."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    num_workers: int = 1
    """Rollout workers (one vLLM engine each)."""
    seed: int = 1
    """Seed of the vLLM sampler."""
    seed_mode: Literal["per_request", "per_call"] = "per_request"
    """How `seed` makes sampling reproducible (`tiny_r1v.rollout.sampling.SeedMode`): per_request
    seeds every prompt from its slot in the run (a prompt's samples do not depend on the rest of
    the batch or the number of workers; vLLM then samples with a generator per request, slow on
    GPU); per_call reseeds each worker's engine once per call from (seed, step, worker) and samples
    the batch at once (the same step on the same hardware and workers gives the same samples, a
    restarted worker included)."""
    weight_sync: Literal["object_store", "transfer_engine"] = "object_store"
    """How the learners' new weights (in the model's dtype) reach the engines after each update.
    object_store: rank 0 puts them in Ray's object store and each worker copies them out.
    transfer_engine: vLLM's weight-transfer engine; rank 0 and the engines form one group (NCCL
    on GPU, gloo on CPU) and rank 0 broadcasts the weights in buckets, one ``update_weights`` call
    per engine. A restarted worker catches up through the object store; the group is rebuilt
    before the next sync."""
    weight_bucket_mb: float = 1024.0
    """Size of a transfer-engine broadcast bucket in MiB (vLLM's ``packed_buffer_size_bytes``): a
    bucket closes after the tensor that crosses it, so it holds at most this plus one tensor."""

    def validate(self) -> None:
        require(self.n >= 2, "n", f"group size must be >= 2, got {self.n}")
        _positive("weight_bucket_mb", self.weight_bucket_mb)
        _positive("temperature", self.temperature)
        _within("top_p", self.top_p, 0, 1, "(]")
        _positive("num_workers", self.num_workers)
        super().validate()
        # With TP > 1 vLLM runs its model in worker processes, and the in-place weight reload
        # hands them a tensor iterator they cannot receive; evaluation engines take TP > 1.
        require(
            self.tensor_parallel_size == 1,
            "tensor_parallel_size",
            f"rollout engines with tensor parallelism are not built yet (weight sync loads weights "
            f"in-process); use more rollout.num_workers instead, got {self.tensor_parallel_size}",
        )


@dataclass(frozen=True)
class RewardConfig:
    format_weight: float = 0.1
    """w_fmt in r = (1 - w_fmt) * accuracy + w_fmt * format (SPEC §1), in [0, 1]."""
    timeout_s: float = 5.0
    """Per-response scoring time limit; a response past it scores 0 and is counted."""
    num_workers: int = 2
    """Scorer processes in the reward actor pool."""

    def validate(self) -> None:
        _within("format_weight", self.format_weight, 0, 1)
        _positive("timeout_s", self.timeout_s)
        _positive("num_workers", self.num_workers)


@dataclass(frozen=True)
class LipoConfig:
    """LIPO's switches (SPEC §2); `TrainConfig.validate()` resolves the None defaults."""

    xi: float | None = None
    """Reward tolerance for "similar quality", in [0, 1]; None: 0.05 for OCR, else 0.0."""
    q_min: float = 0.5
    """Minimum reward of a shorter response to be boosted, in [0, 1]."""
    delta_len: int = 1
    """Minimum length gap (tokens) to the longer neighbour for a boost."""
    eta: float = 0.2
    """Boost strength: r' = r * (1 + eta * phi(L))."""
    l_max: int | None = None
    """Length at which phi reaches 0; None: rollout.max_response_length."""
    penalize_worse_shorter: bool = False
    """Also shrink a shorter response that is clearly worse: r' = r * (1 - eta * phi(L))."""
    l_opt_over: Literal["all", "correct"] = "all"
    """Responses whose lengths define L_opt = max(2 * min L, median L)."""
    kappa: float = 0.5
    """Width of the length weights w = exp(-|L - L_opt| / (kappa * L_opt))."""
    scale_by_weight: bool = False
    """Also multiply each advantage by G * w_i / sum_j w_j."""

    def validate(self) -> None:
        if self.xi is not None:
            _within("xi", self.xi, 0, 1)
        _within("q_min", self.q_min, 0, 1)
        _at_least("delta_len", self.delta_len, 0)
        _at_least("eta", self.eta, 0)
        if self.l_max is not None:
            _at_least("l_max", self.l_max, 1)
        _positive("kappa", self.kappa)


@dataclass(frozen=True)
class DapoOverlongConfig:
    """DAPO's soft overlong punishment (arXiv 2503.14476, "Overlong Reward Shaping")."""

    cache_fraction: float = 0.2
    """L_cache as a share of the rollout's response limit L_max, in (0, 1]; the penalty ramps from 0
    at L_max - L_cache to -1 at L_max. 0.2 is the paper's 4,096 of 20,480 (SPEC §5 says L_max / 4)."""

    def validate(self) -> None:
        _within("cache_fraction", self.cache_fraction, 0, 1, "(]")


@dataclass(frozen=True)
class KimiConfig:
    """Kimi k1.5's length reward (arXiv 2501.12599, "Length Penalty")."""

    weight: float = 1.0
    """w: the length reward w * lambda is added to the reward."""

    def validate(self) -> None:
        _at_least("weight", self.weight, 0)


@dataclass(frozen=True)
class ShorterBetterConfig:
    """ShorterBetter's reward (arXiv 2504.21370): r' = alpha * correct - beta * |L - SOL|."""

    alpha: float = 2.0
    """Reward of a correct answer (the paper trains alpha = 1 and 2)."""
    beta: float = 0.001
    """Penalty per token of distance to the sample optimal length SOL."""

    def validate(self) -> None:
        _positive("alpha", self.alpha)
        _at_least("beta", self.beta, 0)


@dataclass(frozen=True)
class EfficientConfig:
    """Arora & Zanette's reward (arXiv 2502.04463): r' = correct * (1 - alpha * sigmoid(z))."""

    alpha: float = 0.2
    """Length penalty strength, in [0, 1) so a correct answer always beats a wrong one."""
    baseline: Literal["rloo", "grpo"] = "rloo"
    """Advantage of the shaped reward: rloo (leave-one-out mean, as the paper trains) or grpo."""

    def validate(self) -> None:
        _within("alpha", self.alpha, 0, 1, "[)")


@dataclass(frozen=True)
class LinearConfig:
    """A linear length penalty on correct answers: r' = r - gamma * (L / L_max) * correct."""

    gamma: float = 0.2
    """Penalty of a correct answer of L_max tokens."""

    def validate(self) -> None:
        _at_least("gamma", self.gamma, 0)


AdvEstimator = Literal["grpo", "dr_grpo", "lipo", "dapo_overlong", "kimi", "shorter_better", "efficient", "linear"]
"""The advantage estimators of tiny_r1v.algorithms.advantages.ADVANTAGES (SPEC §2 and §5)."""

LossAggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
"""verl's `agg_loss` modes."""


@dataclass(frozen=True)
class AlgorithmConfig:
    adv_estimator: AdvEstimator = "lipo"
    """Advantage estimator, by its name in tiny_r1v.algorithms.advantages.ADVANTAGES."""
    kl_coef: float = 0.01
    """Weight of the KL penalty to the frozen reference; 0 disables the reference model."""
    kl_penalty: Literal["low_var_kl", "kl", "mse"] = "low_var_kl"
    """KL estimator (verl's names); low_var_kl is k3."""
    clip_ratio_low: float = 0.2
    """eps_low: the ratio is clipped below at 1 - eps_low, so in (0, 1)."""
    clip_ratio_high: float = 0.3
    """eps_high: the ratio is clipped above at 1 + eps_high."""
    loss_agg_mode: LossAggMode = "token-mean"
    """How token losses are averaged over the mini-batch (verl's `agg_loss` modes); dr_grpo needs
    seq-mean-token-sum-norm (each sequence's token sum divided by the response limit)."""
    tis_cap: float | None = None
    """Truncated importance sampling (verl's token-level rollout correction): each token's policy
    loss is multiplied by min(exp(old log-prob - rollout log-prob), tis_cap), the learner's
    probability of the sampled token before the update over the rollout engine's. It corrects
    for rollouts sampled by older weights (trainer.max_staleness) and for the engine's precision;
    >= 1; null: off."""
    lipo: LipoConfig = field(default_factory=LipoConfig)
    """LIPO's switches; used when adv_estimator is lipo."""
    dapo_overlong: DapoOverlongConfig = field(default_factory=DapoOverlongConfig)
    """Used when adv_estimator is dapo_overlong."""
    kimi: KimiConfig = field(default_factory=KimiConfig)
    """Used when adv_estimator is kimi."""
    shorter_better: ShorterBetterConfig = field(default_factory=ShorterBetterConfig)
    """Used when adv_estimator is shorter_better."""
    efficient: EfficientConfig = field(default_factory=EfficientConfig)
    """Used when adv_estimator is efficient."""
    linear: LinearConfig = field(default_factory=LinearConfig)
    """Used when adv_estimator is linear."""

    def validate(self) -> None:
        _at_least("kl_coef", self.kl_coef, 0)
        _within("clip_ratio_low", self.clip_ratio_low, 0, 1, "()")
        _positive("clip_ratio_high", self.clip_ratio_high)
        if self.tis_cap is not None:
            _at_least("tis_cap", self.tis_cap, 1)
        # Dr. GRPO's unbiased objective is both halves: no std division and a constant divisor.
        require(
            self.adv_estimator != "dr_grpo" or self.loss_agg_mode == "seq-mean-token-sum-norm",
            "loss_agg_mode",
            f"adv_estimator dr_grpo needs seq-mean-token-sum-norm, got {self.loss_agg_mode}",
        )
        for name in ("lipo", "dapo_overlong", "kimi", "shorter_better", "efficient", "linear"):
            with section(name):
                getattr(self, name).validate()


@dataclass(frozen=True)
class LearnerConfig:
    num_workers: int = 1
    """Learner processes (FSDP2 ranks)."""
    lr: float = 1e-6
    """Peak AdamW learning rate (see lr_warmup_steps and lr_schedule)."""
    lr_warmup_steps: int = 0
    """Training steps of linear warm-up: step s (from 0) takes lr * (s + 1) / lr_warmup_steps.
    0: none."""
    lr_schedule: LrSchedule = "constant"
    """After the warm-up: constant, or cosine (a half cosine from lr down to lr * min_lr_ratio
    over the remaining trainer.total_steps). Every optimizer step of a training step takes
    that step's lr; it is a function of the step and these settings, so a resumed run with the
    same settings continues it (a cosine resumed with another total_steps jumps to its lr)."""
    min_lr_ratio: float = 0.0
    """Where the cosine ends, as a share of lr, in [0, 1]."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas, each in [0, 1)."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm)."""
    global_batch_size: int = 128
    """Prompts per optimizer step; each brings rollout.n samples."""
    micro_batch_size: int = 4
    """Samples per rank per forward/backward pass (gradient accumulation unit), unless
    max_tokens_per_micro_batch is set."""
    max_tokens_per_micro_batch: int | None = None
    """Token budget of a micro-batch (verl's dynamic batch size): each rank's share of a
    mini-batch is cut into as few micro-batches as hold at most this many tokens each (prompt +
    response, image tokens included; samples x longest when padded), as many on every rank;
    micro_batch_size is then unused. A sample longer than the budget is an error. None: cut
    by micro_batch_size."""
    padding_free: bool = True
    """Pack each micro-batch's samples into one row without padding (verl's use_remove_padding):
    every sample keeps its own positions and attention stays within it (flash-attention varlen
    on GPU; on sdpa/eager a block-diagonal mask of tokens x tokens). False: right-padded rows."""
    logprob_chunk_tokens: int = 1024
    """Response tokens whose full-vocabulary logits exist at once when computing log-probs and
    entropy (each chunk is recomputed in the backward pass rather than kept)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""

    def validate(self) -> None:
        _positive("num_workers", self.num_workers)
        _positive("lr", self.lr)
        _at_least("lr_warmup_steps", self.lr_warmup_steps, 0)
        _within("min_lr_ratio", self.min_lr_ratio, 0, 1)
        _at_least("weight_decay", self.weight_decay, 0)
        for beta in self.betas:
            _within("betas", beta, 0, 1, "[)")
        _positive("max_grad_norm", self.max_grad_norm)
        _positive("global_batch_size", self.global_batch_size)
        _positive("micro_batch_size", self.micro_batch_size)
        if self.max_tokens_per_micro_batch is not None:
            _positive("max_tokens_per_micro_batch", self.max_tokens_per_micro_batch)
        _positive("logprob_chunk_tokens", self.logprob_chunk_tokens)
        _positive("ppo_epochs", self.ppo_epochs)


@dataclass(frozen=True)
class TrainerConfig:
    rollout_batch_size: int = 512
    """Prompts per iteration; a multiple of learner.global_batch_size."""
    total_steps: int = 120
    """Training iterations."""
    save_freq: int = 20
    """Save a checkpoint every this many iterations; 0 saves only at the end."""
    save_limit: int = 3
    """Checkpoints kept (the newest)."""
    val_freq: int = 0
    """Validate on data.val_files every this many iterations and after the last; 0: after the
    last only."""
    val_before_train: bool = False
    """Also validate the start weights before the first iteration (logged as step 0)."""
    max_staleness: int = 0
    """How many weight versions a rollout may lag the learners that train on it. 0: strict order
    (rollout, scoring, update, weight sync, each waiting for the one before). k >= 1: the rollout
    workers generate the next k batches while the learners train, each from weights at most k
    versions older than the learners' when they train on it (see algorithm.tis_cap)."""
    output_dir: str = "outputs"
    """Root directory of checkpoints and logs."""
    experiment_name: str = "lipo"
    """Run name for loggers and the output path."""
    loggers: tuple[Literal["console", "jsonl", "tensorboard"], ...] = ("console", "jsonl")
    """Metric sinks."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where actors run; auto = cuda when available."""
    seed: int = 1
    """Seed of the learners' torch generator (rank r: seed + r). The data order has `data.seed`,
    sampling `rollout.seed`; the driver draws nothing at random."""
    verbose: bool = False
    """Print every actor's output and Ray's and vLLM's INFO lines on the console; otherwise they
    go to `<run>/logs/` and the console shows the progress bar, warnings, errors and the summary
    (`launch/lipo.py --verbose` or TINY_R1V_VERBOSE=1 set it)."""

    def validate(self) -> None:
        _positive("rollout_batch_size", self.rollout_batch_size)
        _positive("total_steps", self.total_steps)
        _at_least("save_freq", self.save_freq, 0)
        _positive("save_limit", self.save_limit)
        _at_least("val_freq", self.val_freq, 0)
        _at_least("max_staleness", self.max_staleness, 0)
        _not_empty("output_dir", self.output_dir)
        _not_empty("experiment_name", self.experiment_name)


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig
    """Training data and prompt construction."""
    model: ModelConfig
    """The policy model."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling (vLLM rollout workers)."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward scoring."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Advantage estimator and policy loss."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """Optimisation (FSDP2 learners)."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """The training loop: batch, steps, checkpoints, logging."""

    def validate(self) -> TrainConfig:
        """Checks every rule; returns the config with LIPO's `xi` and `l_max` resolved."""
        require(
            not (self.data.task == "mixed" and self.algorithm.lipo.xi is None)
            or 0.05 < self.reward.format_weight < 0.95,
            "algorithm.lipo.xi",
            "a mixture's default (0.05) suits its binary tasks only for reward.format_weight in (0.05, 0.95): set xi",
        )
        cfg = self._resolved()
        for name in ("data", "model", "rollout", "reward", "algorithm", "learner", "trainer"):
            with section(name):
                getattr(cfg, name).validate()
        cfg._validate_cross_section()
        return cfg

    def samples_per_update(self) -> int:
        """Samples in one optimizer step's mini-batch over all learner ranks: each of the
        `learner.global_batch_size` prompts brings its `rollout.n` responses."""
        return self.learner.global_batch_size * self.rollout.n

    def _resolved(self) -> TrainConfig:
        lipo = self.algorithm.lipo
        # OCR rewards are continuous, so "similar quality" needs a tolerance; binary ones do not.
        # A mixture takes OCR's: binary tasks' rewards differ by at least min(w, 1 - w) for the
        # format weight w, so a tolerance below that (w in (0.05, 0.95)) changes nothing for them.
        xi = (0.05 if self.data.task in ("ocr", "mixed") else 0.0) if lipo.xi is None else lipo.xi
        l_max = self.rollout.max_response_length if lipo.l_max is None else lipo.l_max
        lipo = replace(lipo, xi=xi, l_max=l_max)
        return replace(self, algorithm=replace(self.algorithm, lipo=lipo))

    def _validate_cross_section(self) -> None:
        learner = self.learner
        require(
            self.trainer.rollout_batch_size % learner.global_batch_size == 0,
            "trainer.rollout_batch_size",
            f"must be a multiple of learner.global_batch_size ({learner.global_batch_size}), "
            f"got {self.trainer.rollout_batch_size}",
        )
        samples = self.samples_per_update()
        # A token budget cuts each rank's share however it needs; fixed cuts must divide it.
        per_pass = learner.num_workers * (learner.micro_batch_size if learner.max_tokens_per_micro_batch is None else 1)
        cut = "num_workers * micro_batch_size" if learner.max_tokens_per_micro_batch is None else "num_workers"
        require(
            samples % per_pass == 0,
            "learner.global_batch_size",
            f"samples per step (global_batch_size * rollout.n = {samples}) must be a multiple of {cut} ({per_pass})",
        )
        require(
            learner.lr_warmup_steps < self.trainer.total_steps,
            "learner.lr_warmup_steps",
            f"must be below trainer.total_steps ({self.trainer.total_steps}) for the run to reach its peak lr, "
            f"got {learner.lr_warmup_steps}",
        )
        require(
            not (self.model.attn_implementation == "flash_attention_2" and self.trainer.device == "cpu"),
            "model.attn_implementation",
            "flash_attention_2 needs CUDA, but trainer.device is 'cpu'",
        )
