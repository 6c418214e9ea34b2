"""Model inputs for Qwen2.5-VL: prompts through the HF processor, responses appended, padded.

Pure CPU tensor code (no distributed state), so it is tested directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from transformers import ProcessorMixin

from tiny_r1v.protocol import Prompt, TrainSample


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt as the model sees it."""

    input_ids: torch.Tensor
    """``(P,)`` token ids, image placeholders expanded to one token per merged patch."""
    mm_token_type_ids: torch.Tensor
    """``(P,)`` 0 for text, 1 for image tokens: Qwen2.5-VL builds its 3-D rotary positions from it."""
    pixel_values: torch.Tensor | None
    """``(patches, channels * temporal_patch * patch**2)`` flattened patches of every image."""
    image_grid_thw: torch.Tensor | None
    """``(images, 3)`` patch grid (time, height, width) of each image."""


@dataclass(frozen=True)
class PolicyInputs:
    """A right-padded micro-batch of ``b`` samples; ``T`` = longest prompt + response,
    ``R`` = longest response."""

    input_ids: torch.Tensor
    """``(b, T)`` prompt then response ids, padded."""
    attention_mask: torch.Tensor
    """``(b, T)`` 1 on real tokens."""
    mm_token_type_ids: torch.Tensor
    """``(b, T)``."""
    pixel_values: torch.Tensor | None
    """Patches of every image of the micro-batch, in sample order."""
    image_grid_thw: torch.Tensor | None
    """``(images, 3)``."""
    logit_positions: torch.Tensor
    """``(b, R)`` position in ``T`` whose logits predict response token ``j`` (prompt end + j - 1)."""
    response_ids: torch.Tensor
    """``(b, R)`` response ids, padded."""
    response_mask: torch.Tensor
    """``(b, R)`` float, 1 on real response tokens."""
    advantages: torch.Tensor
    """``(b,)`` sequence-level advantage."""
    rollout_logprobs: torch.Tensor | None = None
    """``(b, R)`` the rollout engine's log-prob of each response token (0 on padding); None
    unless every sample was sampled by an engine."""

    def to(self, device: torch.device | str) -> PolicyInputs:
        """The same micro-batch on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return PolicyInputs(**{k: None if v is None else v.to(device) for k, v in moved.items()})


def encode_prompt(processor: ProcessorMixin, prompt: Prompt, image_token_id: int, merge_size: int) -> EncodedPrompt:
    """Run the processor on one prompt and check that its image placeholders match its images.

    Raises:
        ValueError: naming the prompt when the number of image tokens is not what the image
            grids imply (a template without placeholders, or an image the processor dropped).
    """
    batch = processor(
        text=[prompt.text],
        images=list(prompt.images) or None,
        return_tensors="pt",
        return_mm_token_type_ids=True,
    )
    input_ids = batch["input_ids"][0]
    grid = batch.get("image_grid_thw")
    expected = 0 if grid is None else int(grid.prod(dim=-1).sum()) // merge_size**2
    found = int((input_ids == image_token_id).sum())
    if found != expected:
        raise ValueError(
            f"prompt {prompt.uid!r}: {found} image tokens in the text but its {len(prompt.images)} "
            f"image(s) need {expected}"
        )
    return EncodedPrompt(
        input_ids=input_ids,
        mm_token_type_ids=batch["mm_token_type_ids"][0],
        pixel_values=batch.get("pixel_values"),
        image_grid_thw=grid,
    )


def collate(samples: Sequence[tuple[EncodedPrompt, TrainSample]], pad_token_id: int) -> PolicyInputs:
    """Pad encoded prompts plus their responses into one micro-batch."""
    if not samples:
        raise ValueError("cannot collate an empty micro-batch")
    total = max(len(p.input_ids) + len(s.response_ids) for p, s in samples)
    width = max(len(s.response_ids) for _, s in samples)
    b = len(samples)
    input_ids = torch.full((b, total), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((b, total), dtype=torch.long)
    mm_types = torch.zeros((b, total), dtype=torch.int32)
    response_ids = torch.full((b, width), pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((b, width))
    # Padding slots point at position 0; their mask is 0, so what they gather never counts.
    logit_positions = torch.zeros((b, width), dtype=torch.long)
    for row, (prompt, sample) in enumerate(samples):
        if not sample.response_ids:
            raise ValueError(f"prompt {sample.prompt.uid!r}: empty response")
        p, r = len(prompt.input_ids), len(sample.response_ids)
        response = torch.tensor(sample.response_ids, dtype=torch.long)
        input_ids[row, :p] = prompt.input_ids
        input_ids[row, p : p + r] = response
        attention_mask[row, : p + r] = 1
        mm_types[row, :p] = prompt.mm_token_type_ids
        response_ids[row, :r] = response
        response_mask[row, :r] = 1.0
        logit_positions[row, :r] = torch.arange(p - 1, p + r - 1)
    sampled = all(s.rollout_logprobs for _, s in samples)
    rollout_logprobs = torch.zeros((b, width)) if sampled else None
    for row, (_, sample) in enumerate(samples):
        if sampled:
            if len(sample.rollout_logprobs) != len(sample.response_ids):
                raise ValueError(
                    f"prompt {sample.prompt.uid!r}: {len(sample.rollout_logprobs)} rollout log-probs for "
                    f"{len(sample.response_ids)} response tokens"
                )
            rollout_logprobs[row, : len(sample.rollout_logprobs)] = torch.tensor(sample.rollout_logprobs)
    pixels = [p.pixel_values for p, _ in samples if p.pixel_values is not None]
    grids = [p.image_grid_thw for p, _ in samples if p.image_grid_thw is not None]
    return PolicyInputs(
        input_ids=input_ids,
        attention_mask=attention_mask,
        mm_token_type_ids=mm_types,
        pixel_values=torch.cat(pixels) if pixels else None,
        image_grid_thw=torch.cat(grids) if grids else None,
        logit_positions=logit_positions,
        response_ids=response_ids,
        response_mask=response_mask,
        advantages=torch.tensor([s.advantage for _, s in samples], dtype=torch.float32),
        rollout_logprobs=rollout_logprobs,
    )
