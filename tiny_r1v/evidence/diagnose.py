"""Does a base read its digit images? Two measurements that locate the failure of check 3.

    python -m tiny_r1v.evidence.diagnose --out outputs/evidence [--model warm-model]

On the OCR rows of a base built with the ``cells`` layout (one glyph per vision token, so digit
``k`` of the answer is image token ``k``):

1. **probe**: a linear classifier (scikit-learn's logistic regression) fitted on the vision
   tower's output token of each digit's cell for the train rows, scored on the validation rows:
   how much of each digit the image tokens carry into the language model.
2. **sensitivity**: the language model's distribution over the ten digits right after
   ``<think> I read `` (where the warm start wrote the first digit) for each validation image:
   the mean total-variation distance between the distributions of two images (0: the image is
   ignored) and the share of images whose most likely digit is the true first digit; the same
   share on as many train rows tells a model that never learnt to read (chance on both) from
   one that learnt its train rows by heart (high on train only).
3. **reading**: teacher-forced, with the true reading after `READ_PREFIX`, the share of images
   whose most likely next token is the true character, per position (OCR validation and train
   rows; the math validation rows' readings too, when the base has them, with their values after
   ``=`` when they are worked out): whether the model reads every cell in order, operators
   included, not just the first, and whether it computes what it read.
4. **attention**: at that same position, each layer's and head's attention mass on the image
   tokens, and the shares of it on the first digit's cell and on the blank cells after the last
   digit: where the model looks when it should read the first digit.

Writes ``diagnose-<model>.json`` into ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from tiny_r1v.config.train import PromptConfig
from tiny_r1v.data import Example, load_examples, render_prompt
from tiny_r1v.evidence.base import BaseConfig
from tiny_r1v.tasks import IMAGE_POSITIONS, ImagePosition

READ_PREFIX = "<think> I read "
"""What the warm start writes before the first digit of a reading (`tiny_r1v.warmstart.build_target`)."""


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """Half the L1 distance between two distributions over the same outcomes."""
    return 0.5 * float((p - q).abs().sum())


def mean_pairwise_tv(distributions: Sequence[torch.Tensor]) -> float:
    """Mean total-variation distance over all pairs (at least two distributions)."""
    pairs = list(itertools.combinations(distributions, 2))
    if not pairs:
        raise ValueError("need at least two distributions")
    return sum(total_variation(p, q) for p, q in pairs) / len(pairs)


@torch.no_grad()
def cell_features(model, processor, examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, hidden)`` vision output token of each answer digit's cell and ``(N,)`` its digit."""
    features, digits = [], []
    for example in examples:
        images = processor.image_processor(images=example.load_images(), return_tensors="pt")
        tokens = torch.cat(
            list(model.model.get_image_features(images["pixel_values"], images["image_grid_thw"]).pooler_output)
        )
        if len(example.answer) > len(tokens):
            raise ValueError(
                f"{example.uid}: {len(example.answer)} digits but {len(tokens)} image tokens (not the cells layout?)"
            )
        features.append(tokens[: len(example.answer)])
        digits += [int(ch) for ch in example.answer]
    return torch.cat(features), torch.tensor(digits)


def _reading_inputs(processor, example: Example, prompt: PromptConfig, reading: str = "") -> dict:
    """The model inputs of `example`'s prompt (laid out by `prompt`) followed by `READ_PREFIX`
    and `reading`."""
    rendered = render_prompt(processor, example, prompt.prompt_format, example.uid, prompt.image_position)
    return processor(text=[rendered.text + READ_PREFIX + reading], images=list(rendered.images), return_tensors="pt")


@torch.no_grad()
def first_digit_distributions(
    model, processor, examples: Sequence[Example], prompt: PromptConfig
) -> list[torch.Tensor]:
    """The model's ``(10,)`` distribution over the digits after `READ_PREFIX`, per example."""
    tokenizer = processor.tokenizer
    digit_ids = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    out = []
    for example in examples:
        logits = model(**_reading_inputs(processor, example, prompt)).logits[0, -1, digit_ids]
        out.append(logits.float().softmax(-1))
    return out


@torch.no_grad()
def image_attention(model, processor, examples: Sequence[Example], prompt: PromptConfig) -> dict[str, dict[str, float]]:
    """Per ``layer<l>/head<h>``, means over `examples` of: the attention mass that the position
    after `READ_PREFIX` puts on the image tokens (``image``), and the shares of that mass on the
    first digit's cell (``first_cell``) and on the cells after the answer's last digit
    (``blank_cells``). `model` must compute attention eagerly (other kernels return none)."""
    sums: dict[str, dict[str, float]] = {}
    for example in examples:
        batch = _reading_inputs(processor, example, prompt)
        attentions = model(**batch, output_attentions=True).attentions
        image = (batch["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
        for layer, attention in enumerate(attentions):
            for head, row in enumerate(attention[0, :, -1]):
                on_image = row[image]
                mass = float(on_image.sum())
                shares = {
                    "image": mass,
                    "first_cell": float(on_image[0]) / mass if mass else 0.0,
                    "blank_cells": float(on_image[len(example.answer) :].sum()) / mass if mass else 0.0,
                }
                slot = sums.setdefault(f"layer{layer}/head{head}", dict.fromkeys(shares, 0.0))
                for key, value in shares.items():
                    slot[key] += value / len(examples)
    return sums


@torch.no_grad()
def reading_accuracy(model, processor, examples: Sequence[Example], prompt: PromptConfig) -> list[float]:
    """Per character position ``k`` of the rows' readings (their ``rationale``, as the warm start
    writes it after `READ_PREFIX`: an OCR row's digits, a math row's expression such as
    ``7*3+2``): the share of the `examples` whose reading has a character ``k`` and whose most
    likely token there, given the true characters before it, is that character. Every character
    is one token in the tiny tokenizer (checked)."""
    tokenizer = processor.tokenizer
    hits: list[int] = []
    counts: list[int] = []
    for example in examples:
        ids = tokenizer.encode(example.rationale, add_special_tokens=False)
        if not example.rationale or len(ids) != len(example.rationale):
            raise ValueError(f"{example.uid}: reading {example.rationale!r} is not one token per character")
        batch = _reading_inputs(processor, example, prompt, example.rationale)
        predicted = model(**batch).logits[0, -len(ids) - 1 : -1].argmax(-1).tolist()
        for k, (guess, truth) in enumerate(zip(predicted, ids, strict=True)):
            if k == len(hits):
                hits.append(0)
                counts.append(0)
            hits[k] += guess == truth
            counts[k] += 1
    return [hit / count for hit, count in zip(hits, counts, strict=True)]


def first_digit_accuracy(distributions: Sequence[torch.Tensor], examples: Sequence[Example]) -> float:
    """Share of examples whose most likely first digit (`first_digit_distributions`) is right."""
    first = torch.tensor([int(e.answer[0]) for e in examples])
    return float((torch.stack(list(distributions)).argmax(-1) == first).float().mean())


def diagnose(base: Path, model_name: str, *, rows: int = 300, image_position: ImagePosition | None = None) -> dict:
    """The measures of the module docstring for ``base/model_name``, prompted as the base's
    `BaseConfig` defaults prompt (`image_position` overrides theirs: a base built with another)."""
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model_dir = base / model_name
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    defaults = BaseConfig()  # the prompts and pixel bounds the base was built and checked with
    bounds = {"min_pixels": defaults.min_pixels, "max_pixels": defaults.max_pixels}
    prompt = PromptConfig(
        prompt_format=defaults.prompt_format,
        image_position=image_position or defaults.image_position,
        **bounds,
    )
    train = load_examples([base / "data" / "ocr" / "train.jsonl"], **bounds)[:rows]
    val = load_examples([base / "data" / "ocr" / "val.jsonl"], **bounds)
    math_file = base / "data" / "math" / "val.jsonl"
    math_val = load_examples([math_file], **bounds) if math_file.is_file() else []
    x_train, y_train = cell_features(model, processor, train)
    x_val, y_val = cell_features(model, processor, val)
    probe = LogisticRegression(max_iter=2000).fit(x_train.numpy(), y_train.numpy())
    dists = first_digit_distributions(model, processor, val, prompt)
    seen = train[: len(val)]
    seen_dists = first_digit_distributions(model, processor, seen, prompt)
    eager = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    )
    return {
        "model": str(model_dir),
        "probe_train_digits": len(y_train),
        "probe_val_digits": len(y_val),
        "probe_val_accuracy": float(probe.score(x_val.numpy(), y_val.numpy())),
        "first_digit_mean_pairwise_tv": mean_pairwise_tv(dists),
        "first_digit_accuracy": first_digit_accuracy(dists, val),
        "first_digit_accuracy_train": first_digit_accuracy(seen_dists, seen),
        "reading_accuracy": reading_accuracy(model, processor, val, prompt),
        "reading_accuracy_train": reading_accuracy(model, processor, seen, prompt),
        "math_reading_accuracy": reading_accuracy(model, processor, math_val, prompt) if math_val else None,
        "image_attention": image_attention(eager, processor, val, prompt),
        "val_images": len(val),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tiny_r1v.evidence.diagnose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/evidence"), help="the base directory")
    parser.add_argument("--model", default="warm-model", help="model directory inside --out")
    parser.add_argument("--rows", type=int, default=300, help="OCR train rows the probe is fitted on")
    parser.add_argument("--image-position", choices=IMAGE_POSITIONS, help="the base's, when not BaseConfig's default")
    args = parser.parse_args(argv)
    report = diagnose(args.out, args.model, rows=args.rows, image_position=args.image_position)
    (args.out / f"diagnose-{args.model}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
