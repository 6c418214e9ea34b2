"""Padding-free packing, token-budget micro-batches and chunked log-probs against their plain forms,
on the tiny model without a process group."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import learner_samples
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from tiny_r1v.learner.inputs import EncodedPrompt, PolicyInputs, collate, cut_by_tokens, encode_prompt, pack
from tiny_r1v.learner.policy import PolicyModel
from tiny_r1v.protocol import Prompt, TrainSample


@pytest.fixture(scope="module")
def pairs(tiny_model_dir: Path) -> list[tuple[EncodedPrompt, TrainSample]]:
    """Two samples of each of four prompts: three images of different sizes, one text-only."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return [(encode_prompt(processor, s.prompt, image_id, 2), s) for s in learner_samples(processor)]


def load(model_dir: Path, attn: str, dtype: torch.dtype = torch.float32) -> Qwen2_5_VLForConditionalGeneration:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn)


def surrogate(policy: PolicyModel, inputs: PolicyInputs) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Log-probs ``(b, R)``, an advantage-weighted token-mean loss and the gradient of every parameter."""
    policy.zero_grad(set_to_none=True)
    logprobs, _ = policy(inputs)
    mask = inputs.response_mask
    loss = -(logprobs * inputs.advantages.unsqueeze(-1) * mask).sum() / mask.sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in policy.named_parameters() if p.grad is not None}
    return logprobs.detach(), loss.detach(), grads


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("chosen", [[0, 2, 4, 6, 1], [6, 7]], ids=["images of three sizes and text", "text only"])
def test_packed_equals_padded(tiny_model_dir: Path, pairs: list, attn: str, chosen: list[int]) -> None:
    model = load(tiny_model_dir, attn)
    policy = PolicyModel(model, chunk_tokens=1024)
    group = [pairs[i] for i in chosen]
    padded = collate(group, pad_token_id=0)
    packed = pack(group, model.model.get_rope_index)
    assert packed.input_ids.shape == (1, padded.real_tokens()) and packed.attention_mask is None
    lp_pad, loss_pad, grads_pad = surrogate(policy, padded)
    lp_pack, loss_pack, grads_pack = surrogate(policy, packed)
    torch.testing.assert_close(lp_pack, lp_pad, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(loss_pack, loss_pad, atol=1e-6, rtol=1e-5)
    assert grads_pack.keys() == grads_pad.keys()
    for name, grad in grads_pad.items():
        torch.testing.assert_close(grads_pack[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads_pad.values()]))
    norm_pack = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads_pack.values()]))
    assert norm_pack == pytest.approx(float(norm), rel=1e-5)


def test_packed_positions_are_each_samples_own(tiny_model_dir: Path, pairs: list) -> None:
    rope_index = load(tiny_model_dir, "sdpa").model.get_rope_index
    group = [pairs[i] for i in (0, 2, 4, 6)]
    packed = pack(group, rope_index)
    start = 0
    for pair in group:
        alone = pack([pair], rope_index)
        length = alone.input_ids.shape[1]
        assert torch.equal(packed.position_ids[:, :, start : start + length], alone.position_ids)
        assert torch.equal(packed.input_ids[:, start : start + length], alone.input_ids)
        assert alone.position_ids[0, 0, 0] == 0  # text positions restart: a new sample to attention
        start += length
    assert start == packed.input_ids.shape[1]
    # An image's 3-D positions differ from its text positions (height/width vary over the grid).
    assert not torch.equal(packed.position_ids[1:], packed.position_ids[:1].expand(3, -1, -1))
    # Each response token is predicted at the token before it, in the packed row too.
    for row, (_, sample) in enumerate(group):
        positions = packed.logit_positions[row, : len(sample.response_ids)]
        assert packed.input_ids[0, positions + 1].tolist() == list(sample.response_ids)


@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_chunked_logprobs_equal_full_logits(tiny_model_dir: Path, pairs: list, chunk: int) -> None:
    # float64 throughout, so that only a real difference (not summation order) could show.
    model = load(tiny_model_dir, "sdpa", torch.float64)
    policy = PolicyModel(model, chunk_tokens=chunk)
    inputs = collate([pairs[i] for i in (0, 3, 6)], pad_token_id=0)
    inputs = replace(inputs, pixel_values=inputs.pixel_values.double())
    mask = inputs.response_mask.double()
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * mask

    policy.zero_grad(set_to_none=True)
    logprobs, entropy = policy(inputs)
    (logprobs * weights).sum().backward()
    chunked = {name: p.grad.clone() for name, p in policy.named_parameters() if p.grad is not None}

    # The plain computation: every position's full-vocabulary logits at once.
    policy.zero_grad(set_to_none=True)
    hidden = model.model(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        mm_token_type_ids=inputs.mm_token_type_ids,
        pixel_values=inputs.pixel_values,
        image_grid_thw=inputs.image_grid_thw,
    ).last_hidden_state
    logits = model.lm_head(hidden).flatten(0, 1)[inputs.logit_positions]  # (b, R, vocab)
    full = torch.log_softmax(logits, -1).gather(-1, inputs.response_ids.unsqueeze(-1)).squeeze(-1) * mask
    (full * weights).sum().backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    torch.testing.assert_close(logprobs, full, atol=1e-12, rtol=1e-12)
    expected_entropy = torch.distributions.Categorical(logits=logits).entropy() * mask
    torch.testing.assert_close(entropy, expected_entropy, atol=1e-12, rtol=1e-12)
    assert {f"model.{name}" for name in plain} == chunked.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(
            chunked[f"model.{name}"], grad, atol=1e-12, rtol=1e-10, msg=lambda m, name=name: f"{name}: {m}"
        )
    with torch.no_grad():
        torch.testing.assert_close(policy(inputs)[0], logprobs.detach(), atol=0, rtol=0)


def fake_pairs(lengths: list[tuple[int, int]]) -> list[tuple[EncodedPrompt, TrainSample]]:
    """Samples of the given (prompt, response) lengths, prompt uids ``u0``, ``u1``, ..."""
    return [
        (
            EncodedPrompt(torch.zeros(p, dtype=torch.long), torch.zeros(p, dtype=torch.int32), None, None),
            TrainSample(Prompt(f"u{i}", ""), tuple(range(r)), advantage=0.0),
        )
        for i, (p, r) in enumerate(lengths)
    ]


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 60), st.integers(1, 40)), min_size=1, max_size=24),
    slack=st.integers(0, 150),
    padded=st.booleans(),
    data=st.data(),
)
def test_token_budget_never_exceeded(lengths: list, slack: int, padded: bool, data: st.DataObject) -> None:
    pairs = fake_pairs(lengths)
    budget = max(p + r for p, r in lengths) + slack
    at_least = data.draw(st.integers(1, len(pairs)))
    groups = cut_by_tokens(pairs, budget, padded, at_least)
    assert len(groups) >= at_least and all(groups)
    for group in groups:
        sizes = [len(prompt.input_ids) + len(sample.response_ids) for prompt, sample in group]
        assert (len(sizes) * max(sizes) if padded else sum(sizes)) <= budget
        order = [int(sample.prompt.uid[1:]) for _, sample in group]
        assert order == sorted(order)  # samples keep their given order within a micro-batch
    uids = sorted(sample.prompt.uid for group in groups for _, sample in group)
    assert uids == sorted(sample.prompt.uid for _, sample in pairs)  # each sample exactly once
    # Without a minimum count, no two micro-batches could have been one.
    if at_least == 1 and not padded:
        totals = sorted(sum(len(p.input_ids) + len(s.response_ids) for p, s in g) for g in groups)
        assert len(totals) < 2 or totals[0] + totals[1] > budget


def test_token_budget_names_a_sample_too_long() -> None:
    pairs = fake_pairs([(10, 5), (30, 12), (8, 2)])
    with pytest.raises(ValueError, match=r"prompt 'u1': 30 prompt \+ 12 response tokens exceed .* \(40\)"):
        cut_by_tokens(pairs, 40, padded=False)
    with pytest.raises(ValueError, match="cannot cut 3 samples into 4"):
        cut_by_tokens(pairs, 100, padded=False, at_least=4)
