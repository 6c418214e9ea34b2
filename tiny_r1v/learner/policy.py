"""The trained module: Qwen2.5-VL returning response log-probs instead of full-vocabulary logits."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import checkpoint
from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

from tiny_r1v.learner.inputs import PolicyInputs


class PolicyModel(nn.Module):
    """Wraps ``Qwen2_5_VLForConditionalGeneration`` so one ``forward`` yields what the loss needs.

    The language-model head runs only at the response tokens, ``chunk_tokens`` of them at a
    time: ``(tokens, vocab)`` float32 logits at Qwen's 151k vocabulary would dominate memory.
    Under autograd each chunk is checkpointed, so the backward pass recomputes one chunk's
    logits at a time instead of keeping all of them. Being one module also lets FSDP2 shard it
    as the root, so its hooks gather the embedding and head weights around this forward.
    """

    def __init__(self, model: nn.Module, chunk_tokens: int) -> None:
        super().__init__()
        if chunk_tokens <= 0:
            raise ValueError(f"chunk_tokens must be > 0, got {chunk_tokens}")
        self.model = model
        self.chunk_tokens = chunk_tokens

    def forward(self, inputs: PolicyInputs, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(logprobs, entropy)``, each ``(b, R)`` in float32 or the model's dtype if wider
        (0 on response padding), at
        sampling ``temperature``; ``entropy`` carries no gradient."""
        layout = {
            "input_ids": inputs.input_ids,
            "attention_mask": inputs.attention_mask,
            "position_ids": inputs.position_ids,
            "use_cache": False,
        }
        if inputs.pixel_values is None:
            return self._text_only(inputs, layout, temperature)
        hidden = self.model.model(
            **layout,
            mm_token_type_ids=inputs.mm_token_type_ids,
            pixel_values=inputs.pixel_values,
            image_grid_thw=inputs.image_grid_thw,
        ).last_hidden_state
        return self._head(hidden, inputs, temperature)

    def _text_only(self, inputs: PolicyInputs, layout: dict, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """A micro-batch without images still runs the vision tower, on a blank image whose
        output is added times zero.

        Sharded vision blocks gather their weights collectively: a rank that skipped the tower
        while another ran it would deadlock the process group, and a rank without vision
        gradients would break the reduce-scatter. The zero term keeps the maths unchanged.
        """
        vision = self.model.config.vision_config
        side = vision.spatial_merge_size
        grid = torch.tensor([[1, side, side]], device=inputs.input_ids.device)
        patch = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        pixels = torch.zeros(side * side, patch, device=grid.device)
        blank = self.model.model.get_image_features(pixels, grid).pooler_output
        hidden = self.model.model(**layout).last_hidden_state
        hidden = hidden + 0.0 * torch.cat(blank).sum()
        return self._head(hidden, inputs, temperature)

    def _head(
        self, hidden: torch.Tensor, inputs: PolicyInputs, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden``: ``(rows, T, H)``; the head sees only the ``n`` real response tokens."""
        mask = inputs.response_mask.bool()
        states = hidden.flatten(0, 1)[inputs.logit_positions[mask]]  # (n, H)
        labels = inputs.response_ids[mask]  # (n,)
        pieces = []
        for start in range(0, len(labels), self.chunk_tokens):
            piece = (states[start : start + self.chunk_tokens], labels[start : start + self.chunk_tokens], temperature)
            if torch.is_grad_enabled():
                pieces.append(checkpoint(self._chunk, *piece, use_reentrant=False))
            else:
                pieces.append(self._chunk(*piece))
        logprobs, entropy = (torch.cat(parts) for parts in zip(*pieces, strict=True))
        blank = torch.zeros(mask.shape, dtype=logprobs.dtype, device=mask.device)
        return blank.masked_scatter(mask, logprobs), blank.masked_scatter(mask, entropy)

    def _chunk(
        self, states: torch.Tensor, labels: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-prob of ``labels`` and entropy at ``states`` ``(c, H)``: each ``(c,)``."""
        logits = self.model.lm_head(states)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
        # Entropy is only logged: without a graph it keeps nothing for the backward pass.
        with torch.no_grad():
            entropy = entropy_from_logits(logits)
        return logprobs_from_logits(logits, labels), entropy


def shard_policy(policy: PolicyModel, mixed_precision: MixedPrecisionPolicy) -> None:
    """FSDP2-shard ``policy`` in place over the default process group.

    One FSDP unit per transformer block (its parameters are gathered just for its own
    forward/backward); the root unit holds embeddings, head and the vision merger.
    """
    model = policy.model
    for block in (*model.model.language_model.layers, *model.model.visual.blocks):
        fully_shard(block, mp_policy=mixed_precision)
    fully_shard(policy, mp_policy=mixed_precision)
