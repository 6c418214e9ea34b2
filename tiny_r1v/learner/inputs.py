"""Model inputs for Qwen2.5-VL: prompts through the HF processor, responses appended, then
either right-padded into rows (``collate``) or packed into one row without padding (``pack``).

Pure CPU tensor code (no distributed state), so it is tested directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

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
    """A micro-batch of ``b`` samples laid out in ``rows`` rows of ``T`` tokens: right-padded
    (``collate``: ``rows = b``, ``T`` = longest prompt + response) or packed (``pack``:
    ``rows = 1``, ``T`` = all tokens, no padding). ``R`` = longest response."""

    input_ids: torch.Tensor
    """``(rows, T)`` prompt then response ids of each sample."""
    attention_mask: torch.Tensor | None
    """``(rows, T)`` 1 on real tokens; None when packed (``position_ids`` mark the samples)."""
    position_ids: torch.Tensor | None
    """Packed only: ``(4, 1, T)`` each sample's positions from 0: row 0 the text positions
    (whose restarts tell attention where a sample ends), rows 1-3 Qwen2.5-VL's 3-D rotary
    (temporal, height, width) positions. None when padded (the model derives them from the mask)."""
    mm_token_type_ids: torch.Tensor
    """``(rows, T)``."""
    pixel_values: torch.Tensor | None
    """Patches of every image of the micro-batch, in sample order."""
    image_grid_thw: torch.Tensor | None
    """``(images, 3)``."""
    logit_positions: torch.Tensor
    """``(b, R)`` index into the ``rows * T`` flattened positions of the one whose logits predict
    response token ``j`` (the token before it)."""
    response_ids: torch.Tensor
    """``(b, R)`` response ids, padded."""
    response_mask: torch.Tensor
    """``(b, R)`` float, 1 on real response tokens."""
    advantages: torch.Tensor
    """``(b,)`` sequence-level advantage."""
    rollout_logprobs: torch.Tensor | None = None
    """``(b, R)`` the rollout engine's log-prob of each response token (0 on padding); None
    unless every sample was sampled by an engine."""

    def real_tokens(self) -> int:
        """Prompt and response tokens of all samples (what a packed micro-batch holds)."""
        return self.input_ids.numel() if self.attention_mask is None else int(self.attention_mask.sum())

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
        logit_positions[row, :r] = torch.arange(row * total + p - 1, row * total + p + r - 1)
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
        position_ids=None,
        mm_token_type_ids=mm_types,
        pixel_values=torch.cat(pixels) if pixels else None,
        image_grid_thw=torch.cat(grids) if grids else None,
        logit_positions=logit_positions,
        response_ids=response_ids,
        response_mask=response_mask,
        advantages=torch.tensor([s.advantage for _, s in samples], dtype=torch.float32),
        rollout_logprobs=rollout_logprobs,
    )


RopeIndex = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""``Qwen2_5_VLModel.get_rope_index``: ``(input_ids, mm_token_type_ids, image_grid_thw,
attention_mask=...)`` -> ``((3, b, T) positions, deltas)``."""


def pack(samples: Sequence[tuple[EncodedPrompt, TrainSample]], rope_index: RopeIndex) -> PolicyInputs:
    """The samples of ``collate`` concatenated into one row without padding.

    Every sample keeps the positions it has alone: the model's own ``rope_index`` runs per
    sample (on the padded rows, whose padding it skips), and the text positions restart at 0
    at each sample, which is how transformers' packed attention (flash-attention varlen, or a
    block-diagonal mask for sdpa/eager) keeps a sample from attending to the one before it.
    """
    padded = collate(samples, pad_token_id=0)
    real = padded.attention_mask.bool()
    rope, _ = rope_index(
        padded.input_ids, padded.mm_token_type_ids, padded.image_grid_thw, attention_mask=padded.attention_mask
    )
    text = padded.attention_mask.cumsum(-1) - 1
    positions = torch.cat([text.unsqueeze(0), rope.to(text.dtype)])[:, real].unsqueeze(1)
    # Where each padded position lands in the packed row (padding lands nowhere).
    packed_index = torch.full((real.numel(),), -1, dtype=torch.long)
    packed_index[real.flatten()] = torch.arange(int(real.sum()))
    return replace(
        padded,
        input_ids=padded.input_ids[real].unsqueeze(0),
        attention_mask=None,
        position_ids=positions,
        mm_token_type_ids=padded.mm_token_type_ids[real].unsqueeze(0),
        logit_positions=packed_index[padded.logit_positions],
    )


def cut_by_tokens(
    pairs: Sequence[tuple[EncodedPrompt, TrainSample]], budget: int, padded: bool, at_least: int = 1
) -> list[list[tuple[EncodedPrompt, TrainSample]]]:
    """``pairs`` grouped into micro-batches of at most ``budget`` tokens each, and at least
    ``at_least`` of them (every rank must run as many passes: each is collective under FSDP).

    A micro-batch's tokens are what its tensors hold: the sum of the samples' prompt + response
    lengths when packed, samples times the longest when ``padded``. First-fit decreasing, then
    the most populous micro-batches are halved until there are ``at_least``; each keeps its
    samples in their given order.

    Raises:
        ValueError: naming the sample (prompt uid and lengths) that alone exceeds ``budget``, or
            when ``at_least`` is more than there are samples.
    """
    if at_least > len(pairs):
        raise ValueError(f"cannot cut {len(pairs)} samples into {at_least} micro-batches")
    lengths = [len(prompt.input_ids) + len(sample.response_ids) for prompt, sample in pairs]
    for (prompt, sample), length in zip(pairs, lengths, strict=True):
        if length > budget:
            raise ValueError(
                f"sample of prompt {sample.prompt.uid!r}: {len(prompt.input_ids)} prompt + "
                f"{len(sample.response_ids)} response tokens exceed learner.max_tokens_per_micro_batch "
                f"({budget})"
            )

    def tokens(group: list[int]) -> int:
        return len(group) * max(lengths[i] for i in group) if padded else sum(lengths[i] for i in group)

    groups: list[list[int]] = []
    for i in sorted(range(len(pairs)), key=lambda i: -lengths[i]):
        home = next((g for g in groups if tokens([*g, i]) <= budget), None)
        if home is None:
            groups.append([i])
        else:
            home.append(i)
    while len(groups) < at_least:
        largest = max(groups, key=len)
        groups.remove(largest)
        groups += [largest[: len(largest) // 2], largest[len(largest) // 2 :]]
    return [[pairs[i] for i in sorted(group)] for group in groups]
