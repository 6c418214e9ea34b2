"""The tiny Qwen2.5-VL factory: loads and generates with transformers, deterministic (vLLM:
tests/integration/test_rollout.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import one_image_prompt
from PIL import Image

from tiny_r1v.models.tiny import build_tiny_model

QUESTION = "What colour is the square? Put the answer in \\boxed{}."


def _square() -> Image.Image:
    return Image.new("RGB", (64, 64), (200, 30, 30))


def test_transformers_generates_with_an_image(tiny_model_dir: Path) -> None:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    config = model.config
    prompt = one_image_prompt(processor, QUESTION)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")

    inputs = processor(text=[prompt], images=[_square()], return_tensors="pt")
    (grid,) = inputs["image_grid_thw"]
    n_image_tokens = int((inputs["input_ids"] == config.image_token_id).sum())
    assert n_image_tokens == int(grid.prod()) // config.vision_config.spatial_merge_size**2
    assert grid.tolist() == [1, 4, 4]  # 64x64 -> 56x56 pixels -> 4x4 patches -> 4 tokens

    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new_tokens = out[0, inputs["input_ids"].shape[1] :]
    assert len(new_tokens) > 0
    # Vision placeholders are never sampled (they would break the learner's forward pass).
    assert config.image_token_id not in new_tokens.tolist()


def test_ids_match_between_config_and_tokenizer(tiny_model_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer.convert_tokens_to_ids
    assert config.image_token_id == ids("<|image_pad|>")
    assert config.video_token_id == ids("<|video_pad|>")
    assert config.vision_start_token_id == ids("<|vision_start|>")
    assert config.vision_end_token_id == ids("<|vision_end|>")
    assert config.text_config.eos_token_id == tokenizer.eos_token_id == ids("<|im_end|>")
    assert config.text_config.pad_token_id == tokenizer.pad_token_id == ids("<|endoftext|>")
    assert GenerationConfig.from_pretrained(tiny_model_dir).eos_token_id == [
        ids("<|im_end|>"),
        ids("<|endoftext|>"),
    ]
    assert len(tokenizer) <= config.text_config.vocab_size
    text = "<think>12 + 7 = 19</think> \\boxed{19}"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_builds_are_deterministic(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", seed=0)
    second = build_tiny_model(tmp_path / "b", seed=0)
    other_seed = build_tiny_model(tmp_path / "c", seed=1)
    for name in ("model.safetensors", "tokenizer.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert (first / "model.safetensors").read_bytes() != (other_seed / "model.safetensors").read_bytes()
    assert not list(first.glob("*.bin")) and not list(first.glob("*.pt"))


def test_mrope_section_changes_the_config_only(tmp_path: Path) -> None:
    from transformers import AutoConfig

    default = build_tiny_model(tmp_path / "default", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=0, mrope_section=(1, 1, 30))
    assert AutoConfig.from_pretrained(default).text_config.rope_parameters == {
        "rope_type": "default",
        "rope_theta": 1_000_000.0,
        "mrope_section": [8, 12, 12],
    }
    assert AutoConfig.from_pretrained(other).text_config.rope_parameters["mrope_section"] == [1, 1, 30]
    # The split has no weights: the same seed draws the same model.
    assert (default / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"mrope_section: three positive counts summing to 32, got \[0, 2, 30\]"):
        build_tiny_model(tmp_path / "bad", mrope_section=(0, 2, 30))
