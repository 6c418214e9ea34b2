"""Supervised warm start: teach a model the answer format with verbose, variable-length reasoning.

A random tiny model earns no reward, so RL from it shows nothing. The quickstart therefore first
fine-tunes it on targets of the shape

    <think>{0..max_fillers filler sentences} so the answer is {answer}.</think> \\boxed{answer}<|im_end|>

The filler count is drawn per target, so the warmed-up policy samples correct answers of many
lengths: exactly the groups in which LIPO (SPEC §2) prefers the shorter ones. Plain
single-process PyTorch (no Ray, no FSDP); the inputs and log-probs come from the learner's own
pipeline (`encode_prompt`, `collate`, `PolicyModel`), so the warm start trains what RL trains.

Command line::

    python -m tiny_r1v.warmstart --model DIR --data FILE --out DIR [--steps N] [--lr LR] ...
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path

import torch
from transformers import AutoProcessor, ProcessorMixin, Qwen2_5_VLForConditionalGeneration
from verl.utils.torch_functional import masked_mean

from tiny_r1v.config.train import LearnerConfig
from tiny_r1v.data import Example, load_examples, render_prompt
from tiny_r1v.learner.inputs import EncodedPrompt, collate, encode_prompt
from tiny_r1v.learner.policy import PolicyModel
from tiny_r1v.learner.schedule import lr_factor
from tiny_r1v.protocol import Prompt, TrainSample
from tiny_r1v.tasks import IMAGE_POSITIONS, PROMPT_FORMATS, ImagePosition, PromptFormat, check_prompt_format

__all__ = [
    "FILLER_SENTENCES",
    "LOG_FILE",
    "MAX_FILLERS",
    "WarmStartConfig",
    "build_target",
    "save_model",
    "warm_start",
]

FILLER_SENTENCES: tuple[str, ...] = (
    " Let me think step by step.",
    " first, this is a picture.",
    " Let me count the shape.",
    " so Let me think.",
    " the question is in the image.",
    " this is the picture.",
    " what is the answer?",
    " the image is a picture.",
)
"""Reasoning-flavoured padding, one of which is drawn per filler slot (without repetition).

Every word is in the tiny tokenizer's training corpus (`tiny_r1v.models.tiny`), so a sentence
costs 5-7 tokens there, and the longest target (six fillers, a three-digit rationale) stays
under 80 tokens. None names a colour, a shape or a digit: the fillers carry no answer, so
dropping them never changes correctness.
"""

MAX_FILLERS = 6
"""Default upper bound of the filler count (drawn uniformly from 0..MAX_FILLERS)."""

LOG_FILE = "warm_start.json"
"""Written into the output directory: settings, per-step losses and seconds, and wall time."""

# The cosine tail ends at a tenth of the peak lr (WarmStartConfig.lr).
_MIN_LR_RATIO = 0.1

# Files of the source model directory that `save_pretrained` replaces or that hold weights;
# every other top-level file (tokenizer, processor, chat template) is copied unchanged.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_MODEL_FILES = ("config.json", "generation_config.json")


def build_target(
    answer: str,
    rng: random.Random,
    *,
    prompt_format: PromptFormat = "boxed",
    max_fillers: int = MAX_FILLERS,
    rationale: str = "",
) -> str:
    """A verbose target response for `answer` (without the end-of-turn token).

    The reasoning is a random number (0..`max_fillers`) of distinct `FILLER_SENTENCES` followed by
    a conclusion that states the answer, so the shortest variant is still a non-empty reasoning
    block, as the format reward demands; the final answer follows in the `prompt_format`'s form.
    A `rationale` (the row's worked step, e.g. ``7*3+2``) opens the reasoning (``I read 7*3+2.``),
    right after the prompt, where its tokens sit at the same distance from the image whatever the
    filler count: it is reasoning that helps, unlike the fillers, so a method that shortens
    answers by dropping it pays in accuracy.
    """
    check_prompt_format(prompt_format)
    if not 0 <= max_fillers <= len(FILLER_SENTENCES):
        raise ValueError(f"max_fillers must be in [0, {len(FILLER_SENTENCES)}], got {max_fillers}")
    fillers = rng.sample(FILLER_SENTENCES, rng.randint(0, max_fillers))
    step = f" I read {rationale}." if rationale else ""
    reasoning = step + "".join(fillers) + f" so the answer is {answer}."
    final = f"\\boxed{{{answer}}}" if prompt_format == "boxed" else f"<answer>{answer}</answer>"
    # No space is stripped after <think>: the first sentence then tokenises as it does elsewhere.
    return f"<think>{reasoning}</think> {final}"


@dataclass(frozen=True)
class WarmStartConfig:
    """Settings of a warm start; the result is a pure function of them and the data."""

    prompt_format: PromptFormat = "boxed"
    """Where the targets put the final answer (as the RL prompt will ask)."""
    image_position: ImagePosition = "first"
    """Where the prompts put the images (as RL will: ``data.image_position``)."""
    steps: int = 500
    """Optimizer steps."""
    lr: float = 1e-3
    """Peak AdamW learning rate: linear warm-up to it, then cosine decay to a tenth of it."""
    batch_size: int = 16
    """Examples per step, drawn in shuffled epochs, each with a fresh target."""
    seed: int = 0
    """Seed of the example order, the targets and the torch generator."""
    max_fillers: int = MAX_FILLERS
    """Upper bound of the filler sentences per target (drawn uniformly from 0..max_fillers)."""
    warmup_steps: int = 20
    """Steps of linear warm-up."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm)."""
    log_every: int = 0
    """Print the loss every this many steps; 0: never."""
    num_threads: int = 1
    """CPU threads (restored afterwards). A tiny model's operations are too small to gain from
    intra-op threads, and next to any other busy process OpenMP threads oversubscribe the cores
    (docs/benchmarks.md)."""

    def validate(self) -> WarmStartConfig:
        """Raise on counts below 1; `build_target` checks the format and the filler bound."""
        for key in ("steps", "batch_size", "num_threads"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        return self


def warm_start(
    model_dir: str | PathLike[str],
    examples: Sequence[Example],
    out_dir: str | PathLike[str],
    cfg: WarmStartConfig = WarmStartConfig(),
) -> Path:
    """Fine-tune the Qwen2.5-VL model in `model_dir` on verbose targets for `examples`.

    Each step draws `cfg.batch_size` examples and a fresh target for each (`build_target`), and
    minimises the token-mean negative log-likelihood of the target tokens alone.

    Writes a complete model directory to `out_dir` (float32 safetensors, config, and the source
    directory's tokenizer/processor files) that transformers and vLLM load, plus `LOG_FILE` with
    the settings and the per-step losses and seconds. Returns `out_dir`.
    """
    if not examples:
        raise ValueError("warm_start needs at least one example")
    cfg.validate()
    source, out = Path(model_dir), Path(out_dir)
    if out.resolve() == source.resolve() or (out / "config.json").exists():
        raise ValueError(f"{out} holds a model: a warm start never writes over one (its source included)")
    started = time.perf_counter()
    processor = AutoProcessor.from_pretrained(source)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
            torch.manual_seed(cfg.seed)
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                source, dtype=torch.float32, attn_implementation="sdpa"
            )
            losses, step_seconds = _train(model, processor, examples, cfg)
    finally:
        torch.set_num_threads(threads)
    save_model(model, source, out)
    log = {
        "source": str(source),
        "examples": len(examples),
        **asdict(cfg),
        "seconds": round(time.perf_counter() - started, 2),
        "losses": losses,
        "step_seconds": step_seconds,
    }
    (out / LOG_FILE).write_text(json.dumps(log, indent=1) + "\n")
    return out


def _train(
    model: Qwen2_5_VLForConditionalGeneration,
    processor: ProcessorMixin,
    examples: Sequence[Example],
    cfg: WarmStartConfig,
) -> tuple[list[float], list[float]]:
    """The SFT loop; returns the loss and the seconds of every step."""
    rng = random.Random(cfg.seed)
    config = model.config
    image_token_id, merge_size = config.image_token_id, config.vision_config.spatial_merge_size
    end_of_turn = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    policy = PolicyModel(model, LearnerConfig.logprob_chunk_tokens).train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    # Warm-up keeps the first Adam steps of a random model from overshooting; the cosine tail
    # lets the last steps settle instead of leaving the weights mid-oscillation.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.steps, cfg.warmup_steps, "cosine", _MIN_LR_RATIO)
    )
    # Prompts are encoded once, on first use: the processor (image resize, patching) costs more
    # than a training step of a tiny model.
    encoded: dict[str, EncodedPrompt] = {}
    order: list[int] = []
    losses, step_seconds = [], []
    for step in range(cfg.steps):
        started = time.perf_counter()
        batch = []
        for _ in range(cfg.batch_size):
            if not order:
                order = rng.sample(range(len(examples)), len(examples))
            example = examples[order.pop()]
            if example.uid not in encoded:
                prompt = render_prompt(processor, example, cfg.prompt_format, example.uid, cfg.image_position)
                encoded[example.uid] = encode_prompt(processor, prompt, image_token_id, merge_size)
            target = build_target(
                example.answer,
                rng,
                prompt_format=cfg.prompt_format,
                max_fillers=cfg.max_fillers,
                rationale=example.rationale,
            )
            ids = processor.tokenizer.encode(target, add_special_tokens=False) + [end_of_turn]
            # `prompt` is only a label for collate's errors; the encoded prompt carries the inputs.
            sample = TrainSample(prompt=Prompt(uid=example.uid, text=""), response_ids=tuple(ids), advantage=0.0)
            batch.append((encoded[example.uid], sample))
        inputs = collate(batch, config.text_config.pad_token_id)
        logprobs, _ = policy(inputs)
        loss = -masked_mean(logprobs, inputs.response_mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(round(loss.item(), 5))
        step_seconds.append(round(time.perf_counter() - started, 4))
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            print(f"warm start step {step + 1}/{cfg.steps}: loss {losses[-1]:.4f}", flush=True)
    model.eval()
    return losses, step_seconds


def save_model(model: Qwen2_5_VLForConditionalGeneration, source: Path, out: Path) -> None:
    """Weights and config from `model`; tokenizer and processor files copied from `source`."""
    model.save_pretrained(out)
    for file in source.iterdir():
        weights = file.suffix in _WEIGHT_SUFFIXES or file.name.endswith(".index.json")
        if file.is_file() and not weights and file.name not in _MODEL_FILES:
            shutil.copy2(file, out / file.name)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tiny_r1v.warmstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="source model directory")
    parser.add_argument("--data", required=True, nargs="+", help="dataset file(s), JSONL or Parquet")
    parser.add_argument("--out", required=True, help="output model directory")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-fillers", type=int, default=MAX_FILLERS)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="boxed")
    parser.add_argument("--image-position", choices=IMAGE_POSITIONS, default="first")
    parser.add_argument("--min-pixels", type=int, help="default: the model's processor's bound")
    parser.add_argument("--max-pixels", type=int, help="default: the model's processor's bound")
    args = parser.parse_args(argv)

    # Images must reach the model at the size RL will feed it; the processor's own bounds are
    # the natural default, and the training config's `data.*_pixels` should be passed when they
    # differ.
    size = AutoProcessor.from_pretrained(args.model).image_processor.size
    examples = load_examples(
        args.data,
        min_pixels=args.min_pixels or size["shortest_edge"],
        max_pixels=args.max_pixels or size["longest_edge"],
    )
    cfg = WarmStartConfig(
        prompt_format=args.prompt_format,
        image_position=args.image_position,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        max_fillers=args.max_fillers,
        log_every=max(1, args.steps // 20),
        num_threads=args.num_threads,
    )
    out = warm_start(args.model, examples, args.out, cfg)
    log = json.loads((out / LOG_FILE).read_text())
    print(f"wrote {out} in {log['seconds']} s; loss {log['losses'][0]:.3f} -> {log['losses'][-1]:.3f}")


if __name__ == "__main__":
    main()
