"""The common base the length-control methods start from, built by one cached command.

    python -m tiny_r1v.evidence.base --out outputs/evidence

writes under ``--out`` (each part skipped when it already exists):

- ``data/{math,chart,ocr}/{train,val,test}.jsonl``: the offline testbed (docs/testbed.md), train
  rows capped at ``--train-rows`` per task, of which ``--val-rows`` are moved into ``val.jsonl``
  (the split every choice is made on: the base's settings with ``--tune``, a merge's λ), test
  splits whole;
- ``base-model/``: the tiny factory Qwen2.5-VL (`tiny_r1v.models.tiny`);
- ``read-model/`` and ``warm-model/``: the base after a supervised warm start in two stages,
  reading (OCR and math rows, reading-only targets) and then the three-task mixture in rounds
  (``warm-model-1/``, ...; `tiny_r1v.warmstart`), every prompt with its image last: ``<think>``
  reasoning that opens, for math and OCR, with what the image shows (the rows' ``rationale``,
  a math row's worked out: ``7*8=56``), then 0..6 filler sentences, then ``\\boxed{}``;
- ``checks.json`` (and ``checks-samples.jsonl``, every scored sample): three checks on held-out
  test prompts (``--tune``: ``checks-val.json`` on the validation split, to choose settings by),
  sampled as RL samples them (temperature 1, ``n`` per prompt, fixed seed) on the real vLLM CPU
  engine, printed as a table:

  1. per-task sampled accuracy, and the share of groups that are mixed / all-correct / all-wrong;
  2. the share of samples truncated at the response limit the method sweep will use;
  3. a blank-image control: the same prompts and sample seeds with every image replaced by a white
     image of the same size.

The figures are pure functions of the scored samples (`task_figures`, `verdicts`); only
`sample_scored` runs an engine. docs/experiments.md ("The common base") records a run.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from tiny_r1v.config.train import PromptConfig, RewardConfig
from tiny_r1v.data import Example, load_examples, render_prompt
from tiny_r1v.tasks import ImagePosition, PromptFormat

if TYPE_CHECKING:
    from transformers import ProcessorMixin
    from vllm import LLM

TESTBED_KINDS: dict[str, str] = {"math": "tb-math", "chart": "tb-chart", "ocr": "tb-ocr"}
"""Task -> converter kind of `python -m tiny_r1v.data.convert`."""

ACCURACY_BAND = (0.2, 0.8)
"""Check 1: per-task sampled accuracy must lie in this band (both ends included)."""
MAX_TRUNCATED = 0.10
"""Check 2: the truncated share must stay below this."""
BLANK_GAP = 0.10
"""Check 3: every task's blank-image accuracy must be at least this much below its real one."""


class BaseDirError(ValueError):
    """The base directory cannot be completed as asked (the message names the path)."""


CHECKS_FILE = "checks.json"
"""The checks on the test split; ``--tune`` writes ``checks-val.json`` (and its samples) instead."""
VAL_FILE = "val.jsonl"
SAMPLES_FILE = "checks-samples.jsonl"


@dataclass(frozen=True)
class BaseConfig:
    """Settings of the base; every part is a deterministic function of them (the engine's
    sampling is seeded; its floating point may differ across CPUs)."""

    seed: int = 0
    """Seed of the data subsets, the model's weights and the warm start."""
    train_rows: int = 1000
    """Train rows per task (tb-chart has 1,124 in all)."""
    hidden_size: int = 128
    """Text tower width of the tiny model."""
    num_layers: int = 2
    """Text tower depth of the tiny model."""
    mrope_section: tuple[int, int, int] = (1, 1, 30)
    """Rotary frequency pairs of the tiny model's text tower per temporal/height/width axis,
    highest frequencies first (`tiny_r1v.models.tiny.MROPE_SECTION`). Qwen2.5-VL's (8, 12, 12)
    leaves the width axis, along which the digit cells lie, too little resolution to tell them
    apart, and the reading stage learns nothing; (1, 1, 30) gives it 0.42 rad per cell at the top
    and keeps every frequency for text (docs/experiments.md)."""
    digit_width: int = 224
    digit_height: int = 28
    digit_layout: str = "cells"
    """Images of the math and ocr rows (charts keep the converter's 112x112): 224x28, eight
    28-pixel cells from the left, one glyph per cell, so each glyph is one vision token."""
    chart_questions: tuple[str, ...] = ("most", "least")
    """Kinds of chart question (`tiny_r1v.data.testbed.CHART_QUESTIONS`): the largest and the
    smallest bar's label. A bar's value and the gap need its printed digits, a few pixels tall at
    112x112, which the tiny model does not read (docs/experiments.md)."""
    math_operands: tuple[int, ...] = (2,)
    """Digits per math expression (`tiny_r1v.data.testbed.MATH_OPERANDS`)."""
    math_rationale: str = "worked"
    """What a math row's rationale, its reading in the warm start's targets, holds:
    ``expression`` (``I read 7*3+2.``) or ``worked`` (``I read 7*3+2=23.``, the value computed
    right after the reading, at a fixed distance from it)."""
    reading_steps: int = 4500
    """Stage 1 of the warm start (``read-model/``): supervised steps (batch 16, lr
    `reading_lr`) on the `reading_tasks` train rows with reading-only targets (``<think> I read
    7*3+2. so the answer is 23.</think> \\boxed{23}``, no fillers), where the model learns to
    read its cells in order; 0 skips the stage. On the mixture the same skill does not appear in
    as many steps (docs/experiments.md)."""
    reading_lr: float = 3e-3
    reading_tasks: tuple[str, ...] = ("ocr", "math")
    """The tasks whose train rows the reading stage trains on (their readings are their
    rationales: an OCR row's digits, a math row's expression)."""
    warm_start_steps: tuple[int, ...] = (3000, 3000)
    """Stage 2 (``warm-model/``): supervised steps (batch 16, lr `warm_start_lr`) on the
    three-task mixture with 0..6 filler sentences, from the reading stage's model, as successive
    warm starts of these many steps, each from the previous one's model with its learning-rate
    schedule started again (``warm-model-1/``, ..., the last ``warm-model/``). On 300 two-digit
    expressions the second round is where the arithmetic is learnt (docs/experiments.md)."""
    warm_start_lr: float = 1e-3
    min_pixels: int = 3136
    max_pixels: int = 12544
    """Image bounds, as configs/quickstart.yaml sets them (a 112x112 chart costs 16 tokens)."""
    max_prompt_length: int = 256
    max_response_length: int = 96
    """The response limit of the method sweep; above the warm start's longest target."""
    check_prompts: int = 64
    """Prompts per task the checks sample (a seeded subset of each test split, or with `tune` of
    each validation split)."""
    n: int = 8
    """Samples per prompt (the RL group size of the checks)."""
    sample_seed: int = 1
    """vLLM sampling seed (the blank control reuses it)."""
    prompt_format: PromptFormat = "boxed"
    image_position: ImagePosition = "last"
    """Where the prompts put the image: ``last``, right before the answer, so a digit cell lies
    at the same distance from its reading in every task's prompt; the method sweep and the recipe
    train with the same ``data.image_position`` (docs/experiments.md)."""
    val_rows: int = 64
    """Rows per task moved from the train split into the validation split (`split_val`)."""
    tune: bool = False
    """Tuning mode: run the checks on the validation split instead of the test split, so the
    base's settings are chosen without the test split."""

    def digit_image_args(self) -> list[str]:
        """The converter options (`tiny_r1v.data.convert`) of the math and ocr rows' images."""
        return ["--width", str(self.digit_width), "--height", str(self.digit_height), "--layout", self.digit_layout]

    def converter_args(self, task: str) -> list[str]:
        """The converter options (`tiny_r1v.data.convert`) of `task`'s rows."""
        if task == "chart":
            return ["--questions", ",".join(self.chart_questions)]
        if task == "math":
            operands = ",".join(map(str, self.math_operands))
            return [*self.digit_image_args(), "--operands", operands, "--rationale", self.math_rationale]
        return self.digit_image_args()


# ---------------------------------------------------------------------------------------------
# pure: figures from scored samples


@dataclass(frozen=True)
class ScoredSample:
    """One sampled response and its score."""

    uid: str
    task: str
    sample: int
    """Index within the prompt's group."""
    response: str
    accuracy: float
    """SPEC §1 task accuracy (1 - NED for ocr, so it can be partial)."""
    tokens: int
    truncated: bool
    """Stopped by the response limit rather than the end-of-turn token."""


@dataclass(frozen=True)
class TaskFigures:
    prompts: int
    samples: int
    accuracy: float
    """Mean accuracy over all samples."""
    mixed: float
    """Share of groups whose accuracies differ (the groups GRPO-style advantages learn from)."""
    all_correct: float
    """Share of groups whose every sample scores 1."""
    all_wrong: float
    """Share of groups whose every sample scores 0."""
    truncated: float
    """Share of samples truncated at the response limit."""
    mean_tokens: float


def group_kind(accuracies: Sequence[float]) -> str:
    """'all-correct', 'all-wrong', 'mixed', or 'tied' (equal partial scores: no signal either)."""
    if not accuracies:
        raise ValueError("a group needs at least one sample")
    if len(set(accuracies)) > 1:
        return "mixed"
    return {1.0: "all-correct", 0.0: "all-wrong"}.get(accuracies[0], "tied")


def task_figures(samples: Sequence[ScoredSample]) -> dict[str, TaskFigures]:
    """Figures per task, plus 'all' over every sample (groups are the samples of one uid)."""
    by_task: dict[str, list[ScoredSample]] = {}
    for sample in samples:
        by_task.setdefault(sample.task, []).append(sample)
        by_task.setdefault("all", []).append(sample)
    return {task: _figures(rows) for task, rows in by_task.items()}


def _figures(samples: Sequence[ScoredSample]) -> TaskFigures:
    groups: dict[str, list[float]] = {}
    for sample in samples:
        groups.setdefault(sample.uid, []).append(sample.accuracy)
    kinds = [group_kind(accuracies) for accuracies in groups.values()]
    count = len(samples)
    return TaskFigures(
        prompts=len(groups),
        samples=count,
        accuracy=sum(s.accuracy for s in samples) / count,
        mixed=kinds.count("mixed") / len(kinds),
        all_correct=kinds.count("all-correct") / len(kinds),
        all_wrong=kinds.count("all-wrong") / len(kinds),
        truncated=sum(s.truncated for s in samples) / count,
        mean_tokens=sum(s.tokens for s in samples) / count,
    )


def verdicts(real: dict[str, TaskFigures], blank: dict[str, TaskFigures]) -> dict[str, bool]:
    """The three checks, per task where they are per task."""
    low, high = ACCURACY_BAND
    tasks = [task for task in real if task != "all"]
    out = {f"accuracy_in_band/{t}": low <= real[t].accuracy <= high for t in tasks}
    out["truncated_below_limit"] = real["all"].truncated < MAX_TRUNCATED
    out.update({f"blank_lower/{t}": blank[t].accuracy <= real[t].accuracy - BLANK_GAP for t in tasks})
    return out


def format_checks(report: dict) -> str:
    """The checks of `run_checks`' report as a small table and three verdict lines."""
    real, blank, ok = report["real"], report["blank"], report["verdicts"]
    lines = [
        f"{report.get('split', 'held-out test')} prompts, {report['n']} samples each at temperature 1, response limit "
        f"{report['max_response_length']} tokens",
        f"{'task':<6} {'prompts':>7} {'acc':>6} {'mixed':>6} {'all-ok':>6} {'all-0':>6} "
        f"{'trunc':>6} {'tokens':>6} {'blank':>6}",
    ]
    tasks = [task for task in real if task != "all"]
    for task in [*tasks, "all"]:
        row = real[task]
        lines.append(
            f"{task:<6} {row['prompts']:>7} {row['accuracy']:>6.3f} {row['mixed']:>6.2f} {row['all_correct']:>6.2f} "
            f"{row['all_wrong']:>6.2f} {row['truncated']:>6.3f} {row['mean_tokens']:>6.1f} "
            f"{blank[task]['accuracy']:>6.3f}"
        )
    low, high = ACCURACY_BAND

    def marks(prefix: str) -> str:
        return ", ".join(f"{t} {'yes' if ok[f'{prefix}/{t}'] else 'NO'}" for t in tasks)

    lines += [
        f"check 1, sampled accuracy in [{low}, {high}]: {marks('accuracy_in_band')}",
        f"check 2, truncated share below {MAX_TRUNCATED:.0%}: "
        f"{'yes' if ok['truncated_below_limit'] else 'NO'} ({real['all']['truncated']:.3f})",
        f"check 3, blank image at least {BLANK_GAP} lower: {marks('blank_lower')}",
    ]
    return "\n".join(lines)


def blank_example(example: Example) -> Example:
    """`example` with every image replaced by a white image of the same size (PNG bytes)."""
    images = []
    for image in example.load_images():
        buffer = io.BytesIO()
        Image.new("RGB", image.size, (255, 255, 255)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return replace(example, images=tuple(images))


def check_subset(examples: Sequence[Example], per_task: int, seed: int) -> list[Example]:
    """A seeded subset of `per_task` examples of each task, in file order within each task."""
    chosen = []
    for task in TESTBED_KINDS:
        rows = [e for e in examples if e.task == task]
        keep = sorted(random.Random(seed).sample(range(len(rows)), min(per_task, len(rows))))
        chosen += [rows[i] for i in keep]
    return chosen


# ---------------------------------------------------------------------------------------------
# the engine


def sample_scored(
    llm: LLM,
    processor: ProcessorMixin,
    examples: Sequence[Example],
    *,
    n: int,
    max_tokens: int,
    seed: int,
    prompt: PromptConfig,
) -> list[ScoredSample]:
    """`n` samples per example at temperature 1 on `llm`, prompted as `prompt` says (its format
    and image position), scored by the training rewards (the training scorer's path: decode,
    then the timeout-safe pool)."""
    from tiny_r1v.rewards import ScorerPool
    from tiny_r1v.rewards.completions import Reference, decode, score_texts
    from tiny_r1v.rollout.engine import RolloutEngine
    from tiny_r1v.rollout.sampling import SamplingSpec

    engine = RolloutEngine(llm, SamplingSpec(n=n, temperature=1.0, top_p=1.0, max_tokens=max_tokens))
    prompts = [render_prompt(processor, e, prompt.prompt_format, e.uid, prompt.image_position) for e in examples]
    completions = engine.generate(prompts, seed=seed)
    texts = decode(processor.tokenizer, completions)
    by_uid = {e.uid: e for e in examples}
    references = [Reference(task=by_uid[c.uid].task, answer=by_uid[c.uid].answer) for c in completions]
    with ScorerPool(RewardConfig().num_workers, RewardConfig().timeout_s) as pool:
        scores = score_texts(pool, texts, references, prompt.prompt_format, RewardConfig().format_weight)
    return [
        ScoredSample(
            uid=c.uid,
            task=reference.task,
            sample=index % n,
            response=text,
            accuracy=result.accuracy,
            tokens=len(c.token_ids),
            truncated=c.finish_reason == "length",
        )
        for index, (c, text, reference, result) in enumerate(zip(completions, texts, references, scores, strict=True))
    ]


def run_checks(
    llm: LLM,
    processor: ProcessorMixin,
    examples: Sequence[Example],
    *,
    n: int,
    max_tokens: int,
    seed: int,
    prompt: PromptConfig,
) -> tuple[dict, list[ScoredSample], list[ScoredSample]]:
    """The three checks on `examples`: returns the report and the real and blank samples."""
    kwargs = {"n": n, "max_tokens": max_tokens, "seed": seed, "prompt": prompt}
    real = sample_scored(llm, processor, examples, **kwargs)
    blank = sample_scored(llm, processor, [blank_example(e) for e in examples], **kwargs)
    real_figures, blank_figures = task_figures(real), task_figures(blank)
    report = {
        "n": n,
        "max_response_length": max_tokens,
        "seed": seed,
        "real": {task: asdict(f) for task, f in real_figures.items()},
        "blank": {task: asdict(f) for task, f in blank_figures.items()},
        "verdicts": verdicts(real_figures, blank_figures),
    }
    return report, real, blank


# ---------------------------------------------------------------------------------------------
# the cached build


def split_val(directory: Path, rows: int, seed: int) -> None:
    """Move a seeded choice of `rows` lines of ``directory/train.jsonl`` into ``val.jsonl``.

    Each file is written under a temporary name and renamed, ``val.jsonl`` first; when it exists
    its rows are removed from ``train.jsonl`` (nothing to do once they are), so a build killed
    between the two renames finishes the split when run again. The rows keep their image paths:
    both files live beside the converter's ``images/``.
    """
    train, val = directory / "train.jsonl", directory / VAL_FILE
    lines = train.read_text().splitlines(keepends=True)
    if not val.is_file():
        if rows >= len(lines):
            raise BaseDirError(f"{train}: {len(lines)} rows cannot spare {rows} for validation")
        chosen = sorted(random.Random(seed).sample(range(len(lines)), rows))
        _replace(val, "".join(lines[i] for i in chosen))
    held = {json.loads(line)["id"] for line in val.read_text().splitlines()}
    kept = [line for line in lines if json.loads(line)["id"] not in held]
    if len(kept) < len(lines):
        _replace(train, "".join(kept))


def _replace(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def build_base(out: Path, cfg: BaseConfig = BaseConfig()) -> dict:
    """Build whatever of the base is missing under `out`, print the checks, return their report."""
    timings = build_models(out, cfg)
    data, warm = out / "data", out / "warm-model"
    checks = out / _on_split(CHECKS_FILE, cfg)
    if checks.is_file():
        report = json.loads(checks.read_text())
    else:
        examples = check_subset(_load(data, "val" if cfg.tune else "test", cfg), cfg.check_prompts, cfg.seed)
        report = _checks(out, warm, examples, cfg)
        report["timings"] = {**timings, **report["timings"]}
        checks.write_text(json.dumps(report, indent=1) + "\n")
    print(format_checks(report), flush=True)
    return report


def build_models(out: Path, cfg: BaseConfig) -> dict[str, float]:
    """The testbed and the models of the base that are missing under `out` (everything but the
    checks); returns the seconds of each part built."""
    if not cfg.warm_start_steps or min(cfg.warm_start_steps) < 1:
        raise ValueError(f"warm_start_steps: one or more positive step counts, got {list(cfg.warm_start_steps)}")
    timings: dict[str, float] = {}
    data = out / "data"
    base, read, warm = out / "base-model", out / "read-model", out / "warm-model"
    for task, kind in TESTBED_KINDS.items():
        for split in ("train", "test"):
            if not (data / task / f"{split}.jsonl").is_file():
                from tiny_r1v.data import convert

                limit = ["--limit", str(cfg.train_rows)] if split == "train" else []
                options = cfg.converter_args(task)
                args = [kind, "--split", split, "--out", str(data / task), "--seed", str(cfg.seed), *limit, *options]
                started = time.perf_counter()
                convert.main(args)
                timings[f"data/{task}/{split}"] = round(time.perf_counter() - started, 1)
        if not (data / task / VAL_FILE).is_file() and (warm / "config.json").is_file():
            # A base built before the validation split: its warm start saw every train row.
            raise BaseDirError(
                f"{data / task}: no {VAL_FILE}, but {warm} was trained on every row of its train split, "
                "so none can be held out; build the base in a new --out"
            )
        split_val(data / task, cfg.val_rows, cfg.seed)
    if not (base / "config.json").is_file():
        from tiny_r1v.models.tiny import build_tiny_model

        print(f"base: building the tiny model in {base}", flush=True)
        build_tiny_model(
            base,
            seed=cfg.seed,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            mrope_section=cfg.mrope_section,
        )
    if cfg.reading_steps and not (read / "config.json").is_file() and not (warm / "config.json").is_file():
        examples = _load(data, "train", cfg, cfg.reading_tasks)
        timings["reading"] = _warm_start(base, examples, read, cfg.reading_steps, cfg.reading_lr, cfg, reading=True)
    if not (warm / "config.json").is_file():
        source = read if cfg.reading_steps else base
        examples = _load(data, "train", cfg)
        for round_, steps in enumerate(cfg.warm_start_steps, 1):
            target = warm if round_ == len(cfg.warm_start_steps) else out / f"warm-model-{round_}"
            if not (target / "config.json").is_file():
                timings[f"warm_start/{round_}"] = _warm_start(
                    source, examples, target, steps, cfg.warm_start_lr, cfg, reading=False
                )
            source = target
    return timings


def _warm_start(
    source: Path, examples: Sequence[Example], out: Path, steps: int, lr: float, cfg: BaseConfig, *, reading: bool
) -> float:
    """One warm-start stage from `source` into `out` (the `reading` stage without fillers);
    returns its seconds."""
    from tiny_r1v.warmstart import MAX_FILLERS, WarmStartConfig, warm_start

    stage = "reading" if reading else "warm start"
    print(f"base: {stage} on {len(examples)} rows from {source}, {steps} steps", flush=True)
    started = time.perf_counter()
    settings = WarmStartConfig(
        prompt_format=cfg.prompt_format,
        image_position=cfg.image_position,
        steps=steps,
        lr=lr,
        max_fillers=0 if reading else MAX_FILLERS,
        seed=cfg.seed,
        log_every=max(1, steps // 20),
    )
    warm_start(source, examples, out, settings)
    return round(time.perf_counter() - started, 1)


def _on_split(name: str, cfg: BaseConfig) -> str:
    """`name`, or for the validation checks ``checks-val...`` (``checks-samples.jsonl`` ->
    ``checks-val-samples.jsonl``)."""
    return name.replace("checks", "checks-val", 1) if cfg.tune else name


def _load(data: Path, split: str, cfg: BaseConfig, tasks: Sequence[str] = tuple(TESTBED_KINDS)) -> list[Example]:
    files = [data / task / f"{split}.jsonl" for task in tasks]
    return load_examples(files, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)


def _checks(out: Path, warm: Path, examples: Sequence[Example], cfg: BaseConfig) -> dict:
    import torch
    from transformers import AutoProcessor

    from tiny_r1v.config.train import EngineConfig
    from tiny_r1v.rollout.engine import build_llm
    from tiny_r1v.rollout.sampling import EngineModel

    engine = EngineConfig(max_response_length=cfg.max_response_length, kv_cache_memory_mb=256, enforce_eager=True)
    split = "validation" if cfg.tune else "held-out test"
    print(f"base: checks on {len(examples)} {split} prompts x {cfg.n} samples (and the blank control)", flush=True)
    started = time.perf_counter()
    prompt = PromptConfig(
        prompt_format=cfg.prompt_format,
        image_position=cfg.image_position,
        max_prompt_length=cfg.max_prompt_length,
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
    )
    llm = build_llm(EngineModel(str(warm), torch.float32), engine, prompt, cfg.sample_seed)
    try:
        processor = AutoProcessor.from_pretrained(warm)
        report, real, blank = run_checks(
            llm,
            processor,
            examples,
            n=cfg.n,
            max_tokens=cfg.max_response_length,
            seed=cfg.sample_seed,
            prompt=prompt,
        )
    finally:
        llm.llm_engine.engine_core.shutdown()
    with (out / _on_split(SAMPLES_FILE, cfg)).open("w") as file:
        for control, samples in (("real", real), ("blank", blank)):
            for sample in samples:
                file.write(json.dumps({"control": control, **asdict(sample)}) + "\n")
    report["config"] = asdict(cfg)
    report["split"] = split
    report["timings"] = {"checks": round(time.perf_counter() - started, 1)}
    return report


def main(argv: Sequence[str] | None = None) -> None:
    defaults = BaseConfig()
    parser = argparse.ArgumentParser(prog="python -m tiny_r1v.evidence.base", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/evidence", help="directory of the base (parts there are reused)")
    for key, value in asdict(defaults).items():
        if isinstance(value, bool):
            parser.add_argument(f"--{key.replace('_', '-')}", action="store_true", help="see BaseConfig." + key)
        elif isinstance(value, tuple) and isinstance(value[0], str):
            parser.add_argument(f"--{key.replace('_', '-')}", nargs="+", default=value)
        elif isinstance(value, tuple):
            parser.add_argument(f"--{key.replace('_', '-')}", type=int, nargs="+", default=value)
        else:
            parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    cfg = replace(defaults, **{key: type(value)(getattr(args, key)) for key, value in asdict(defaults).items()})
    try:
        build_base(Path(args.out), cfg)
    except BaseDirError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
