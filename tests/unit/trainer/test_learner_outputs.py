"""The learner's outputs: entropy carries no gradient, and checkpoints are written in the compute
dtype and load back exactly."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from tiny_r1v.learner.inputs import EncodedPrompt, collate
from tiny_r1v.learner.policy import PolicyModel
from tiny_r1v.learner.worker import save_weights
from tiny_r1v.protocol import Prompt, TrainSample


def test_entropy_is_built_without_gradients(tiny_model_dir: Path) -> None:
    policy = PolicyModel(Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir), chunk_tokens=2)
    prompt = EncodedPrompt(torch.arange(3, 9), torch.zeros(6, dtype=torch.int32), None, None)
    inputs = collate([(prompt, TrainSample(Prompt("p", ""), (10, 11, 12), advantage=1.0))], pad_token_id=0)
    logprobs, entropy = policy(inputs)
    assert logprobs.requires_grad and not entropy.requires_grad
    with torch.no_grad():
        logits = policy.model(input_ids=inputs.input_ids).logits[0, 5:8].float()
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy[0], expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_checkpoint_reloads_equal(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    weights = model.state_dict()
    save_weights(model, tmp_path, weights, torch.bfloat16)
    assert model.config.dtype == torch.float32  # the live model's config is left alone
    loaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path, dtype="auto")
    assert loaded.dtype == torch.bfloat16
    state = loaded.state_dict()
    assert state.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(state[name], tensor.to(torch.bfloat16)), name
    # float32 (the CPU quickstart) stays exact too
    save_weights(model, tmp_path / "f32", weights, torch.float32)
    again = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "f32", dtype="auto")
    assert again.dtype == torch.float32
    assert all(torch.equal(again.state_dict()[n], t) for n, t in weights.items())
