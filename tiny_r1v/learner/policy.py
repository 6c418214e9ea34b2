"""The trained module: Qwen2.5-VL returning response log-probs instead of full-vocabulary logits."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

from tiny_r1v.learner.inputs import PolicyInputs


class PolicyModel(nn.Module):
    """Wraps ``Qwen2_5_VLForConditionalGeneration`` so one ``forward`` yields what the loss needs.

    The language-model head runs only at the response positions: ``(b, T, vocab)`` logits over
    whole prompts (hundreds of image tokens) would dominate memory at Qwen's 151k vocabulary.
    Being one module also lets FSDP2 shard it as the root, so its hooks gather the embedding
    and head weights around this forward.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: PolicyInputs, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(logprobs, entropy)``, each ``(b, R)`` float32, at sampling ``temperature``;
        ``entropy`` carries no gradient."""
        if inputs.pixel_values is None:
            return self._text_only(inputs, temperature)
        hidden = self.model.model(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            mm_token_type_ids=inputs.mm_token_type_ids,
            pixel_values=inputs.pixel_values,
            image_grid_thw=inputs.image_grid_thw,
            use_cache=False,
        ).last_hidden_state
        return self._head(hidden, inputs, temperature)

    def _text_only(self, inputs: PolicyInputs, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
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
        hidden = self.model.model(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, use_cache=False
        ).last_hidden_state
        hidden = hidden + 0.0 * torch.cat(blank).sum()
        return self._head(hidden, inputs, temperature)

    def _head(
        self, hidden: torch.Tensor, inputs: PolicyInputs, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = inputs.logit_positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        logits = self.model.lm_head(hidden.gather(1, index)).float() / temperature
        # Entropy is only logged: without a graph it frees its (b, R, vocab) softmax at once
        # instead of holding it for the backward pass.
        with torch.no_grad():
            entropy = entropy_from_logits(logits)
        return logprobs_from_logits(logits, inputs.response_ids), entropy


def shard_policy(policy: PolicyModel, mixed_precision: MixedPrecisionPolicy) -> None:
    """FSDP2-shard ``policy`` in place over the default process group.

    One FSDP unit per transformer block (its parameters are gathered just for its own
    forward/backward); the root unit holds embeddings, head and the vision merger.
    """
    model = policy.model
    for block in (*model.model.language_model.layers, *model.model.visual.blocks):
        fully_shard(block, mp_policy=mixed_precision)
    fully_shard(policy, mp_policy=mixed_precision)
