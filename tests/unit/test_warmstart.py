"""Supervised warm start: targets the reward functions accept, and a short real fine-tune."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from helpers import snapshot
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from tiny_r1v.data import load_examples
from tiny_r1v.data.writer import DatasetWriter
from tiny_r1v.rewards import score
from tiny_r1v.warmstart import (
    FILLER_SENTENCES,
    LOG_FILE,
    MAX_FILLERS,
    WarmStartConfig,
    build_target,
    main,
    warm_start,
)

# One ground truth per task family, in the form each accuracy reward compares.
ANSWERS = {"vqa": "teal", "ocr": "7", "math": "12", "chart": "3.5"}


@pytest.mark.parametrize("prompt_format", ["boxed", "answer_tags"])
@pytest.mark.parametrize("task", sorted(ANSWERS))
def test_targets_earn_full_reward(task: str, prompt_format: str) -> None:
    rng = random.Random(0)
    answer = ANSWERS[task]
    targets = [build_target(answer, rng, prompt_format=prompt_format) for _ in range(200)]
    for target in targets:
        result = score(task, target, answer, prompt_format=prompt_format, format_weight=0.1)
        assert (result.accuracy, result.format) == (1.0, 1.0), target
    # Every filler count 0..MAX_FILLERS occurs, and a target repeats no filler.
    counts = {sum(sentence in target for sentence in FILLER_SENTENCES) for target in targets}
    assert counts == set(range(MAX_FILLERS + 1))
    assert all(target.count(sentence) <= 1 for target in targets for sentence in FILLER_SENTENCES)


def test_target_without_fillers_and_bounds() -> None:
    rng = random.Random(0)
    assert build_target("red", rng, max_fillers=0) == "<think> so the answer is red.</think> \\boxed{red}"
    with_step = build_target("23", rng, max_fillers=0, rationale="7*3+2")
    assert with_step == "<think> I read 7*3+2. so the answer is 23.</think> \\boxed{23}"
    with_fillers = build_target("23", random.Random(1), max_fillers=6, rationale="7*3+2")
    assert with_fillers.startswith("<think> I read 7*3+2.") and with_fillers.endswith(
        "so the answer is 23.</think> \\boxed{23}"
    )
    assert score("math", with_step, "23").accuracy == 1.0
    with pytest.raises(ValueError, match="max_fillers"):
        build_target("red", rng, max_fillers=len(FILLER_SENTENCES) + 1)


def test_targets_fit_the_tiny_tokenizer(tiny_model_dir: Path) -> None:
    """The templates round-trip and stay short, so the longest target fits an 80-token response."""
    tokenizer = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    rng = random.Random(0)
    for _ in range(200):
        target = build_target("rectangle", rng, rationale="9*9*9") + "<|im_end|>"
        ids = tokenizer.encode(target, add_special_tokens=False)
        assert tokenizer.decode(ids) == target
        assert len(ids) < 80
    for sentence in FILLER_SENTENCES:  # every word is a vocabulary token, none spelt out
        assert len(tokenizer.encode(sentence)) <= 7, sentence


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six solid-colour images asking for their colour, in the dataset format."""
    out = tmp_path_factory.mktemp("colours")
    colours = {
        "red": (220, 20, 20),
        "green": (20, 200, 20),
        "blue": (20, 20, 220),
        "yellow": (230, 230, 20),
        "black": (0, 0, 0),
        "gray": (128, 128, 128),
    }
    with DatasetWriter(out, split="train", prefix="colours") as writer:
        for name, rgb in colours.items():
            image = writer.image(name, Image.new("RGB", (56, 56), rgb))
            writer.row(uid=name, task="vqa", question="what color is the shape?", answer=name, images=[image])
    return writer.path


def test_warm_start_learns_saves_and_is_deterministic(tiny_model_dir: Path, dataset: Path, tmp_path: Path) -> None:
    pixels = {"min_pixels": 3136, "max_pixels": 12544}
    examples = load_examples(dataset, **pixels)
    settings = {"steps": 12, "lr": 2e-3, "batch_size": 4, "seed": 3}
    first = warm_start(tiny_model_dir, examples, tmp_path / "first", WarmStartConfig(**settings))
    # The command line runs the same function: same data and settings, same weights.
    main(
        [
            "--model",
            str(tiny_model_dir),
            "--data",
            str(dataset),
            "--out",
            str(tmp_path / "cli"),
            "--min-pixels",
            "3136",
            "--max-pixels",
            "12544",
            *[f"--{key.replace('_', '-')}={value}" for key, value in settings.items()],
        ]
    )

    log = json.loads((first / LOG_FILE).read_text())
    losses = log["losses"]
    assert len(losses) == 12
    assert len(log["step_seconds"]) == 12 and 0 < sum(log["step_seconds"]) <= log["seconds"]
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]

    weights = load_file(first / "model.safetensors")
    assert weights.keys() == load_file(tmp_path / "cli" / "model.safetensors").keys()
    for name, tensor in load_file(tmp_path / "cli" / "model.safetensors").items():
        assert torch.equal(weights[name], tensor), name
    source = load_file(tiny_model_dir / "model.safetensors")
    assert not torch.equal(weights["lm_head.weight"], source["lm_head.weight"])

    # A complete model directory: transformers loads model and processor from it alone.
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(first)
    processor = AutoProcessor.from_pretrained(first)
    assert processor.tokenizer.get_vocab() == AutoProcessor.from_pretrained(tiny_model_dir).tokenizer.get_vocab()
    assert model.config.vision_config.spatial_merge_size == 2


def test_warm_start_never_writes_over_a_model(tiny_model_dir: Path, dataset: Path, tmp_path: Path) -> None:
    examples = load_examples(dataset, min_pixels=3136, max_pixels=12544)
    before = snapshot(tiny_model_dir)
    for out in (tiny_model_dir, tiny_model_dir / "."):
        with pytest.raises(ValueError, match="holds a model"):
            warm_start(tiny_model_dir, examples, out, WarmStartConfig(steps=1, batch_size=1))
    assert snapshot(tiny_model_dir) == before
