"""A tiny random-weight Qwen2.5-VL checkpoint, built offline, for tests and the quickstart.

`build_tiny_model(out_dir)` writes a complete Hugging Face model directory (config, generation
config, safetensors weights, tokenizer, image/video processor, chat template) that loads with
`AutoProcessor` / `Qwen2_5_VLForConditionalGeneration.from_pretrained` and with vLLM, without
touching the hub. Everything is a pure function of `seed`: two builds are byte-identical.

Command line: ``python -m tiny_r1v.models.tiny --out DIR [--seed N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_model", "build_tokenizer"]

# Qwen2.5's special tokens, in Qwen's id order, appended after the trained BPE vocabulary.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Tokens a sampled response may contain; every other special token is suppressed (see
# `_suppress_tokens`).
_EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")

# Qwen2.5-VL-Instruct's chat template (ChatML, one vision placeholder per image or video).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's pre-tokenizer split (digits one by one, which keeps arithmetic learnable).
_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_WORDS = (
    "red green blue yellow orange purple black white gray brown pink "
    "circle square triangle rectangle star shape colour color left right top bottom "
    "yes no true false one two three four five six seven eight nine ten zero "
    "what how many which is are the a an of in on this image picture number answer "
    "plus minus times divided by equals sum total count think step first then so "
    "You are a helpful assistant system user assistant question Let me"
).split()

# An upper bound: the corpus runs out of pairs to merge first (about 500 tokens are learnt).
_BPE_VOCAB_SIZE = 1024

# Pixel budget per image: 28 = patch_size * spatial_merge_size, so an image costs between 4 and
# 64 tokens; a 64x64 image is resized to 56x56 and costs 4.
# vLLM's CPU attention rejects head dims below 64.
_HEAD_DIM = 64

MIN_PIXELS = 28 * 28 * 4
MAX_PIXELS = 28 * 28 * 64


def _corpus() -> list[str]:
    """A fixed training corpus: words, digits, arithmetic and R1-style answers."""
    rng = random.Random(1234)  # the tokenizer is part of the interface: independent of `seed`
    lines = [" ".join(_WORDS), "0123456789 + - * / = ( ) . , ? !"]
    for _ in range(400):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice("+-*")
        result = {"+": a + b, "-": a - b, "*": a * b}[op]
        word = rng.choice(_WORDS)
        lines.append(
            f"user\nWhat is {a} {op} {b}?\nassistant\n<think>{a} {op} {b} = {result}, so the "
            f"{word} answer is {result}.</think> \\boxed{{{result}}}"
        )
        lines.append(f"user\nIs the shape {word}?\nassistant\n<think>yes</think> \\boxed{{no}}")
    return lines


def build_tokenizer() -> Qwen2Tokenizer:
    """Train a byte-level BPE on `_corpus()` and wrap it as a Qwen2 tokenizer.

    The pipeline (NFC, Qwen2 split regex, byte-level) is Qwen2's, so the wrapper reproduces the
    trained tokenizer exactly; the special tokens follow the BPE vocabulary in Qwen's order.
    """
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(trained["vocab"])
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(pair) for pair in trained["merges"]],
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in _EOS_TOKENS],  # eos, pad above
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )


def _processor(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLProcessor:
    """Qwen2.5-VL's processor with a small pixel budget (videos get the same budget)."""
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    # `size` is passed explicitly: these processors mutate their class-level default in place.
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(size)),
        video_processor=Qwen2VLVideoProcessor(size=dict(size)),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


MROPE_SECTION = (8, 12, 12)
"""How the text tower's 32 rotary frequency pairs (head_dim 64), highest first, are split between
the temporal, height and width position of a token (text tokens have all three equal, so for text
the split changes nothing). Qwen2.5-VL's proportions, which leave the width axis the 12 lowest
frequencies: at rotary base 1e6, at most ``1e6 ** (-20 / 32)``, about 2e-4 rad per vision token,
too little for the language model to tell an image's columns apart by position (a reading task
needs more: docs/experiments.md)."""


def _config(tokenizer: Qwen2Tokenizer, hidden: int, layers: int, mrope_section: Sequence[int]) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL that vLLM's CPU backend accepts: about a million parameters at the default
    text tower (`hidden` 128, 2 `layers`); the vision tower is fixed.

    Head dims are 64 in both towers because vLLM's CPU attention rejects smaller ones; the text
    tower has twice as many query heads as KV heads so grouped-query attention is exercised. The
    embedding matrix is rounded up to a multiple of 64 rows, like Qwen's, so code that assumes
    `vocab_size == len(tokenizer)` fails here rather than on a real checkpoint.
    """
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    heads = hidden // _HEAD_DIM
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": -(-len(tokenizer) // 64) * 64,
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads // 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": list(mrope_section),
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "dtype": "float32",
        },
        vision_config={
            "depth": 2,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            # block 0 uses windowed attention, block 1 full attention, as in the real model
            "fullatt_block_indexes": [1],
            "out_hidden_size": hidden,
            "tokens_per_second": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        # Untied, as in Qwen2.5-VL-7B: the output head is edited by `_suppress_tokens`
        # independently of the input embeddings, and checkpoint code sees a separate lm_head.
        tie_word_embeddings=False,
        dtype="float32",
    )


def _suppress_tokens(model: Qwen2_5_VLForConditionalGeneration, suppressed: list[int]) -> None:
    """Make the random model (practically) never sample the `suppressed` token ids.

    A random model samples nearly uniformly, and a sampled `<|image_pad|>` would make the
    response unreadable for the learner's forward pass (image tokens must match image
    features). So hidden dimension 0 is made a constant positive feature: every input embedding
    holds 1.0 there and no attention or MLP output writes to it, so after the final norm it is
    about 10 at every text position. The suppressed rows of the output head read only that
    dimension, with weight -10: their logits are about -100, against about 0 for the rest.
    """
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = 1.0
        for layer in model.model.language_model.layers:
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
        head = model.get_output_embeddings().weight
        head[suppressed] = 0.0
        head[suppressed, 0] = -10.0


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    mrope_section: Sequence[int] = MROPE_SECTION,
) -> Path:
    """Write a tiny random-weight Qwen2.5-VL model directory to `out_dir` and return its path.

    `hidden_size` (a multiple of 128: head_dim 64, twice as many query as KV heads) and
    `num_layers` size the text tower; `mrope_section` splits its rotary frequencies between the
    axes of a position (see `MROPE_SECTION`; it does not change the weights a seed draws). Weights
    are float32, which the CPU learner trains in; AVX2 CPUs have no native bfloat16 (give vLLM
    `dtype="float32"`, else it downcasts). Saved as safetensors; about 5 MB at the default size.
    """
    if hidden_size % (2 * _HEAD_DIM) or num_layers < 1:
        raise ValueError(
            f"need hidden_size a multiple of {2 * _HEAD_DIM} and num_layers >= 1, got {hidden_size} and {num_layers}"
        )
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    if len(mrope_section) != 3 or min(mrope_section) < 1 or sum(mrope_section) != _HEAD_DIM // 2:
        raise ValueError(
            f"need mrope_section: three positive counts summing to {_HEAD_DIM // 2}, got {list(mrope_section)}"
        )
    config = _config(tokenizer, hidden_size, num_layers, mrope_section)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    eos_ids = [tokenizer.convert_tokens_to_ids(token) for token in _EOS_TOKENS]
    # every special token but the EOS ones, and the padding rows beyond the tokenizer
    first_special = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[0])
    suppressed = [i for i in range(first_special, config.text_config.vocab_size) if i not in eos_ids]
    _suppress_tokens(model, suppressed)
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=config.text_config.pad_token_id,
    )
    model.save_pretrained(out)
    _processor(tokenizer).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to write the model to")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    parser.add_argument("--hidden-size", type=int, default=128, help="text tower width")
    parser.add_argument("--num-layers", type=int, default=2, help="text tower depth")
    parser.add_argument(
        "--mrope-section", type=int, nargs=3, default=MROPE_SECTION, help="text rotary pairs per t/h/w axis"
    )
    args = parser.parse_args(argv)
    print(
        build_tiny_model(
            args.out,
            seed=args.seed,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            mrope_section=args.mrope_section,
        )
    )


if __name__ == "__main__":
    main()
