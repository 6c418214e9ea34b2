"""The base's model choice: one supervised training step of the tiny factory model against the
same Qwen2.5-VL with SmolLM2-135M's text tower shape, on the testbed's OCR rows.

    python bench/bench_model_choice.py [--batch-size 4] [--steps 5]

Issue "Evidence I" prefers SmolLM2-135M-Instruct as the language half if its cost allows the
default grid (36 runs of 30 steps in about 2 hours on 2 cores). Both models here have random
weights (the cost of a step does not depend on their values) and the factory's vision tower and
tokenizer; the SmolLM2 shape is hidden 576, 30 layers, 9 query and 3 KV heads, MLP 1536 and its
49,152-row vocabulary. A step is `tiny_r1v.warmstart`'s (the learner's own inputs and log-prob
code, AdamW, float32, 2 threads), timed by the warm start itself; the figure is the median over
the steps after every prompt has been encoded once (`EXAMPLES` rows), per training sample
(`--steps` for the larger model, four times as many for the tiny one). Printed:
seconds per sample, the ratio to the tiny model measured in this run, and the learner seconds the
default grid would spend (36 x 30 steps x 16 samples, times 4/3 for the forward-only log-prob pass
before each update; rollouts, scoring and validation not included).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

from tiny_r1v.data import convert, load_examples
from tiny_r1v.evidence.base import BaseConfig
from tiny_r1v.models.tiny import build_tiny_model
from tiny_r1v.warmstart import LOG_FILE, WarmStartConfig, save_model, warm_start

SMOLLM2_135M = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
}
"""SmolLM2-135M's text tower (its config.json), in Qwen2.5-VL's text config keys."""
BASE = BaseConfig()
"""The evidence base's digit images and pixel bounds."""
EXAMPLES = 8
"""Testbed OCR rows the steps draw from (each prompt is encoded on first use)."""
GRID_STEP_SAMPLES = 36 * 30 * 16
"""Training samples of the default grid: runs x steps x samples per step (configs/quickstart.yaml)."""


def smollm_shaped(tiny: Path, out: Path) -> Path:
    """`tiny` with SmolLM2-135M's text tower shape, random weights, saved to `out`."""
    config = AutoConfig.from_pretrained(tiny)
    for key, value in SMOLLM2_135M.items():
        setattr(config.text_config, key, value)
    config.text_config.layer_types = ["full_attention"] * SMOLLM2_135M["num_hidden_layers"]
    config.vision_config.out_hidden_size = SMOLLM2_135M["hidden_size"]
    save_model(Qwen2_5_VLForConditionalGeneration(config), tiny, out)
    return out


def step_seconds(model: Path, examples: list, out: Path, steps: int, batch_size: int) -> float:
    """Median seconds of one training step of `batch_size` samples, once every prompt is encoded."""
    settings = WarmStartConfig(steps=steps, batch_size=batch_size, warmup_steps=1, num_threads=2)
    warm_start(model, examples, out, settings)
    timed = json.loads((out / LOG_FILE).read_text())["step_seconds"][math.ceil(len(examples) / batch_size) :]
    if not timed:
        raise SystemExit(f"--steps {steps} leaves no step after the prompts are encoded")
    return statistics.median(timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="steps of the larger model (the tiny one: 4x)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "ocr"
        convert.main(
            ["tb-ocr", "--split", "train", "--limit", str(EXAMPLES), "--out", str(data), *BASE.digit_image_args()]
        )
        examples = load_examples([data / "train.jsonl"], min_pixels=BASE.min_pixels, max_pixels=BASE.max_pixels)
        tiny = build_tiny_model(work / "tiny")
        runs = {"tiny": (tiny, 4 * args.steps), "smollm2-135m-shape": (smollm_shaped(tiny, work / "smol"), args.steps)}
        per_sample = {
            name: step_seconds(path, examples, work / f"{name}-warm", steps, args.batch_size) / args.batch_size
            for name, (path, steps) in runs.items()
        }
    print(f"one training step, batch {args.batch_size}, median over the steps (seconds per sample)")
    for name, seconds in per_sample.items():
        ratio, grid_hours = seconds / per_sample["tiny"], GRID_STEP_SAMPLES * seconds * 4 / 3 / 3600
        print(f"{name:20s} {seconds:8.4f} s  x{ratio:7.1f}  default grid's learner: {grid_hours:6.2f} h")


if __name__ == "__main__":
    main()
