"""Rollout engine on vLLM's CPU backend: groups, log-probs, weight reload, agreement with the learner."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import pytest
import torch
from helpers import one_image_prompt, vllm_tensor
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from tiny_r1v.learner.inputs import collate, encode_prompt, pack
from tiny_r1v.learner.policy import PolicyModel
from tiny_r1v.learner.worker import logprob_gap
from tiny_r1v.protocol import Prompt, TrainSample
from tiny_r1v.rollout.engine import RolloutEngine
from tiny_r1v.trainer.actors import rollout_sampling

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def prompts(tiny_model_dir) -> list[Prompt]:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)

    def render(content):
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    return [
        Prompt(
            "red",
            render([{"type": "image"}, {"type": "text", "text": "What colour?"}]),
            (Image.new("RGB", (84, 56), (200, 20, 20)),),
        ),
        Prompt(
            "blue",
            render([{"type": "image"}, {"type": "text", "text": "What colour?"}]),
            (Image.new("RGB", (56, 56), (20, 20, 200)),),
        ),
        Prompt("text", render([{"type": "text", "text": "What is 2 + 3?"}])),
    ]


@pytest.fixture(scope="module")
def engine(vllm_engine, tiny_config) -> RolloutEngine:
    return RolloutEngine(vllm_engine, rollout_sampling(tiny_config))


def test_groups_logprobs_and_lengths(engine, prompts, tiny_config):
    completions = engine.generate(prompts, seed=0)
    n = tiny_config.rollout.n
    assert [c.uid for c in completions] == [p.uid for p in prompts for _ in range(n)]
    for c in completions:
        assert 1 <= len(c.token_ids) <= tiny_config.rollout.max_response_length
        assert len(c.logprobs) == len(c.token_ids)
        assert all(lp <= 0 for lp in c.logprobs)
        assert c.finish_reason in ("stop", "length")
        assert (c.finish_reason == "length") == (len(c.token_ids) == tiny_config.rollout.max_response_length)
        assert c.weight_version == 0
    # Same seed, same samples; another seed, other samples.
    assert [c.token_ids for c in engine.generate(prompts, seed=0)] == [c.token_ids for c in completions]
    assert [c.token_ids for c in engine.generate(prompts, seed=1)] != [c.token_ids for c in completions]


def test_no_two_samples_of_a_batch_share_a_seed(engine, prompts, tiny_config):
    # The same prompt in consecutive slots: with vLLM seeding sample k of a request s + k, seeds
    # s + index would give slot 1's first sample the draws of slot 0's second (the same tokens).
    n = tiny_config.rollout.n
    assert n >= 2
    twice = engine.generate([prompts[2], prompts[2]], seed=0)
    samples = [c.token_ids for c in twice]
    assert len(set(samples)) == 2 * n, samples
    # A slot's samples depend on the call's seed and the slot alone.
    assert [c.token_ids for c in engine.generate([prompts[2]], seed=1)] == samples[n:]


def test_greedy_gives_one_argmax_response_per_prompt(engine, prompts, tiny_config):
    greedy = engine.generate(prompts, seed=5, greedy=True)
    assert [c.uid for c in greedy] == [p.uid for p in prompts]  # n = 1 whatever rollout.n is
    # Seeds change nothing, and the first token is the most likely one: no sampled response
    # starts with a likelier token.
    assert [c.token_ids for c in engine.generate(prompts, seed=6, greedy=True)] == [c.token_ids for c in greedy]
    sampled = engine.generate(prompts, seed=0)
    for c in greedy:
        first = [s for s in sampled if s.uid == c.uid]
        assert all(s.logprobs[0] <= c.logprobs[0] + 1e-5 for s in first)


def test_weight_reload_takes_effect_and_advances_version(engine, prompts, tiny_model_dir):
    original = load_file(tiny_model_dir / "model.safetensors")
    before = engine.generate(prompts, seed=0)
    blank_head = {k: torch.zeros_like(v) if k == "lm_head.weight" else v for k, v in original.items()}
    try:
        engine.load_weights(blank_head, version=1)
        after = engine.generate(prompts, seed=0)
        vocab = original["lm_head.weight"].shape[0]
        # Zero head: every token equally likely, and the image path still works.
        for c in after:
            assert c.weight_version == 1
            assert c.logprobs == pytest.approx([-math.log(vocab)] * len(c.logprobs), abs=1e-4)
    finally:
        engine.load_weights(original, version=2)
    assert [c.token_ids for c in engine.generate(prompts, seed=0)] == [c.token_ids for c in before]


def test_learner_recomputes_rollout_logprobs(engine, prompts, tiny_model_dir, tiny_config):
    """The learner's inputs (processor, image tokens, 3-D rotary positions), padded and packed,
    reproduce vLLM's view of every sequence: same float32 weights, same log-probs."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    policy = PolicyModel(model, tiny_config.learner.logprob_chunk_tokens)
    config = policy.model.config
    completions = engine.generate(prompts, seed=0)
    by_uid = {p.uid: p for p in prompts}
    pairs = []
    for c in completions:
        prompt = by_uid[c.uid]
        encoded = encode_prompt(processor, prompt, config.image_token_id, config.vision_config.spatial_merge_size)
        assert len(encoded.input_ids) == c.prompt_tokens  # vLLM expanded the image the same way
        sample = TrainSample(prompt=prompt, response_ids=c.token_ids, advantage=0.0, rollout_logprobs=c.logprobs)
        pairs.append((encoded, sample))
    for batch in (
        collate(pairs, pad_token_id=processor.tokenizer.pad_token_id),
        pack(pairs, model.model.get_rope_index),
    ):
        with torch.no_grad():
            logprobs, _ = policy(batch, tiny_config.rollout.temperature)
        gaps = []
        for row, c in enumerate(completions):
            torch.testing.assert_close(logprobs[row, : len(c.logprobs)], torch.tensor(c.logprobs), atol=2e-3, rtol=0)
            gaps += (logprobs[row, : len(c.logprobs)] - torch.tensor(c.logprobs)).abs().tolist()
        # The learner's metric of the same gap: over every response token, padding left out.
        metric = logprob_gap([batch], [logprobs])
        assert metric["rollout/logprob_diff_max"] == pytest.approx(max(gaps), abs=1e-7)
        assert metric["rollout/logprob_diff_mean"] == pytest.approx(sum(gaps) / len(gaps), abs=1e-7)
        assert metric["rollout/logprob_diff_max"] < 2e-3


@pytest.mark.vllm
def test_vllm_generates_with_an_image(vllm_engine, tiny_model_dir) -> None:
    from transformers import AutoProcessor
    from vllm import SamplingParams

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    prompt = one_image_prompt(processor, "What colour is the square? Put the answer in \\boxed{}.")
    square = Image.new("RGB", (64, 64), (200, 30, 30))
    request = {"prompt": prompt, "multi_modal_data": {"image": square}}
    (output,) = vllm_engine.generate([request], SamplingParams(max_tokens=16, seed=0))

    # vLLM expands the image placeholder exactly as the transformers processor does.
    expected = processor(text=[prompt], images=[square])["input_ids"][0]
    assert list(output.prompt_token_ids) == list(expected)
    assert len(output.outputs[0].token_ids) > 0


def test_engine_resizes_images_into_the_data_pixel_bounds(engine, prompts, tiny_model_dir, tiny_config):
    """An image above data.max_pixels costs the engine as many prompt tokens as the learner's
    processor gives the data pipeline's resize of it (the checkpoint's own bound is far larger)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from tiny_r1v.data.dataset import IMAGE_FACTOR

    data = tiny_config.data
    large = Image.new("RGB", (300, 200), (20, 200, 20))
    assert large.width * large.height > data.max_pixels
    height, width = smart_resize(large.height, large.width, IMAGE_FACTOR, data.min_pixels, data.max_pixels)
    resized = large.resize((width, height), Image.Resampling.BICUBIC)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    config = Qwen2_5_VLForConditionalGeneration.config_class.from_pretrained(tiny_model_dir)
    learner_view = encode_prompt(
        processor,
        Prompt("large", prompts[0].text, (resized,)),
        config.image_token_id,
        config.vision_config.spatial_merge_size,
    )
    (completion, *_) = engine.generate([Prompt("large", prompts[0].text, (large,))], seed=0)
    assert completion.prompt_tokens == len(learner_view.input_ids)
    image_tokens = sum(token == config.image_token_id for token in learner_view.input_ids)
    assert image_tokens == height * width // (IMAGE_FACTOR * IMAGE_FACTOR) == 12


@pytest.fixture(scope="module")
def per_call_engine(vllm_engine, tiny_config) -> RolloutEngine:
    """The shared engine, seeded once per call."""
    return RolloutEngine(vllm_engine, replace(rollout_sampling(tiny_config), seed_mode="per_call"))


def tokens(completions) -> list[tuple[int, ...]]:
    return [c.token_ids for c in completions]


def test_per_call_seed_gives_the_same_samples_whatever_ran_before(per_call_engine, engine, prompts):
    first = tokens(per_call_engine.generate(prompts, seed=0, first_slot=6))
    assert len(set(first)) > 1
    # Other sampled calls in between (per-request seeded ones, another per-call seed) change nothing.
    engine.generate(prompts, seed=0)
    other_seed = tokens(per_call_engine.generate(prompts, seed=1, first_slot=6))
    other_slot = tokens(per_call_engine.generate(prompts, seed=0, first_slot=9))
    assert tokens(per_call_engine.generate(prompts, seed=0, first_slot=6)) == first
    assert other_seed != first and other_slot != first
    # Unseeded calls are not reproducible: the seed is what fixes the samples.
    assert tokens(per_call_engine.generate(prompts)) != tokens(per_call_engine.generate(prompts))


@pytest.mark.parametrize("seed_mode", ["per_request", "per_call"])
def test_a_call_with_more_prompt_tokens_than_a_step_holds(vllm_engine, tiny_config, prompts, seed_mode):
    """vLLM's CPU generators cannot rewind, so a seeded prefill split across steps crashed ("CPU
    Generator does not use offset"): the engine prefills each prompt in one step on CPU."""
    scheduler = vllm_engine.llm_engine.vllm_config.scheduler_config
    assert not scheduler.enable_chunked_prefill
    engine = RolloutEngine(vllm_engine, replace(rollout_sampling(tiny_config), seed_mode=seed_mode))
    per_group = engine.n * min(c.prompt_tokens for c in engine.generate(prompts, greedy=True))
    copies = scheduler.max_num_batched_tokens // (per_group * len(prompts)) + 1
    many = [replace(p, uid=f"{p.uid}-{i}") for i in range(copies) for p in prompts]
    assert (
        sum(c.prompt_tokens for c in engine.generate(many, greedy=True)) * engine.n > scheduler.max_num_batched_tokens
    )
    samples = tokens(engine.generate(many, seed=2))
    assert len(samples) == len(many) * engine.n
    if seed_mode == "per_request":
        # Each prompt's samples are its slot's, however the prompts are split into calls.
        half = len(many) // 2
        split = engine.generate(many[:half], seed=2) + engine.generate(many[half:], seed=2, first_slot=half)
        assert tokens(split) == samples
    else:
        assert tokens(engine.generate(many, seed=2)) == samples


def test_restarted_worker_samples_a_per_call_step_again(ray_local, tiny_config, prompts):
    """A rollout worker that Ray restarts draws the samples of the step it is given again, though
    its engine's generators start where the first call of the killed one started."""
    import ray

    from tiny_r1v.trainer.actors import RolloutWorker

    cfg = replace(tiny_config, rollout=replace(tiny_config.rollout, seed_mode="per_call"))
    worker = ray.remote(RolloutWorker).options(max_restarts=1).remote(cfg)
    try:
        ray.get(worker.generate.remote(prompts, 3, 12))  # an earlier step
        step = tokens(ray.get(worker.generate.remote(prompts, 3, 15)).completions)
        ray.kill(worker, no_restart=False)
        again = None
        for _ in range(120):  # until Ray has rebuilt it
            try:
                again = tokens(ray.get(worker.generate.remote(prompts, 3, 15)).completions)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                time.sleep(1)
        assert again == step
    finally:
        ray.kill(worker)


def test_a_bfloat16_learner_checkpoint_loads_in_vllm_with_equal_weights(tiny_model_dir, tiny_config, tmp_path):
    """Every tensor vLLM holds as a parameter is the checkpoint's bf16 tensor (fused where vLLM
    fuses). vLLM's CPU backend repacks linear weights for its kernels and leaves their parameters
    empty: those are compared through the learner-vs-rollout log-prob test instead."""
    import shutil

    from tiny_r1v.learner.worker import save_weights
    from tiny_r1v.rollout.engine import build_llm
    from tiny_r1v.rollout.sampling import EngineModel

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    learner = {name: t + 1e-3 * torch.randn_like(t) for name, t in model.state_dict().items()}  # not bf16-exact
    save_weights(model, tmp_path, learner, torch.bfloat16)
    for path in tiny_model_dir.iterdir():  # tokenizer and processor files, as the learner saves them
        if not (tmp_path / path.name).exists():
            shutil.copy(path, tmp_path / path.name)
    saved = load_file(tmp_path / "model.safetensors")
    llm = build_llm(EngineModel(str(tmp_path), torch.bfloat16), tiny_config.rollout, tiny_config.data, 0)
    try:
        (loaded,) = llm.apply_model(lambda m: {n: p.detach().cpu().clone() for n, p in m.named_parameters()})
    finally:
        llm.llm_engine.engine_core.shutdown()
    compared = {name: t for name, t in loaded.items() if t.numel()}
    assert {"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"} <= set(compared)
    assert all(name.endswith(".weight") for name in set(loaded) - set(compared))  # the repacked linears
    for name, tensor in compared.items():
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, vllm_tensor(saved, name)), name
    # transformers loads the same file to the learner's weights rounded once to bf16:
    # tests/unit/trainer/test_learner_outputs.py::test_bfloat16_checkpoint_reloads_equal
