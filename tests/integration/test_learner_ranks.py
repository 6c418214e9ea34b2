"""FSDP2 learner on CPU (gloo): model inputs, a real update on 1 and 2 ranks, weights out."""

from __future__ import annotations

import multiprocessing
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from tiny_r1v.config import load_config
from tiny_r1v.config.train import TrainConfig
from tiny_r1v.learner.inputs import collate, encode_prompt
from tiny_r1v.learner.worker import shard_for_rank
from tiny_r1v.protocol import Prompt, TrainSample

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def make_prompts(processor) -> list[Prompt]:
    prompts = []
    for i, colour in enumerate(COLOURS):
        content = [{"type": "image"}, {"type": "text", "text": f"What colour is shape {i}?"}]
        if i == 3:  # one text-only prompt in the batch
            content = content[1:]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        images = (Image.new("RGB", (56 + 28 * i, 56), colour),) if i != 3 else ()
        prompts.append(Prompt(uid=f"p{i}", text=text, images=images))
    return prompts


def make_samples(processor, n: int = 2) -> list[TrainSample]:
    generator = torch.Generator().manual_seed(0)
    samples = []
    for prompt in make_prompts(processor):
        for j in range(n):
            length = int(torch.randint(3, 12, (1,), generator=generator))
            ids = torch.randint(20, 400, (length,), generator=generator).tolist()
            samples.append(TrainSample(prompt=prompt, response_ids=tuple(ids), advantage=1.0 if j == 0 else -1.0))
    return samples


def learner_config(model_dir: Path, world_size: int, **overrides: str) -> TrainConfig:
    settings = {
        "model.path": str(model_dir),
        "data.train_files": "[unused.jsonl]",
        "rollout.n": "2",
        "learner.num_workers": str(world_size),
        "learner.global_batch_size": "2",
        "learner.micro_batch_size": "2",
        "learner.lr": "1e-3",
        "learner.max_grad_norm": "1e9",
        "trainer.rollout_batch_size": "4",
        "trainer.device": "cpu",
        "algorithm.kl_coef": "0.1",
        **overrides,
    }
    return load_config(TrainConfig, "configs/quickstart.yaml", [f"{k}={v}" for k, v in settings.items()])


def test_encode_prompt_checks_image_tokens(tiny_model_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    prompt = make_prompts(processor)[0]
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    encoded = encode_prompt(processor, prompt, image_id, merge_size=2)
    assert int((encoded.input_ids == image_id).sum()) == int(encoded.image_grid_thw.prod()) // 4
    assert encoded.mm_token_type_ids.sum() == (encoded.input_ids == image_id).sum()
    no_placeholder = Prompt(uid="bad", text=prompt.text.replace("<|image_pad|>", ""), images=prompt.images)
    with pytest.raises(ValueError, match="prompt 'bad'"):
        encode_prompt(processor, no_placeholder, image_id, merge_size=2)


def test_collate_pads_and_points_at_response_logits(tiny_model_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    samples = make_samples(processor)[:3]
    pairs = [(encode_prompt(processor, s.prompt, image_id, 2), s) for s in samples]
    batch = collate(pairs, pad_token_id=0)
    for row, (prompt, sample) in enumerate(pairs):
        p, r = len(prompt.input_ids), len(sample.response_ids)
        assert batch.attention_mask[row].sum() == p + r
        assert batch.response_mask[row].sum() == r
        # The logits at position t predict token t + 1: each points at the token before.
        positions = batch.logit_positions[row, :r]
        assert torch.equal(batch.input_ids[row, positions + 1], torch.tensor(sample.response_ids))
    assert batch.pixel_values.shape[0] == int(batch.image_grid_thw.prod(-1).sum())


def test_shard_for_rank_splits_each_mini_batch() -> None:
    samples = list(range(8))
    assert shard_for_rank(samples, 0, 2, mini_batch=4) == [0, 1, 4, 5]
    assert shard_for_rank(samples, 1, 2, mini_batch=4) == [2, 3, 6, 7]
    assert shard_for_rank(samples, 0, 1, mini_batch=4) == samples
    with pytest.raises(ValueError, match="do not split"):
        shard_for_rank(samples, 0, 3, mini_batch=4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, model_dir: str, out: dict, overrides: dict) -> None:
    from transformers import AutoProcessor

    from tiny_r1v.learner.worker import Learner

    cfg = learner_config(Path(model_dir), world_size, **overrides)
    samples = make_samples(AutoProcessor.from_pretrained(model_dir))
    learner = Learner(cfg, rank, world_size, "127.0.0.1", port)
    before = learner.full_state_dict()
    mini = cfg.learner.global_batch_size * cfg.rollout.n
    metrics = learner.train_step(shard_for_rank(samples, rank, world_size, mini))
    after = learner.full_state_dict()
    learner.close()
    out[f"pg_loss/{rank}"] = metrics["pg_loss"]
    if rank == 0:
        out["metrics"] = metrics
        out["before"] = before
        out["after"] = after


def _train(model_dir: Path, world_size: int, **overrides: str) -> dict:
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    with ctx.Manager() as manager:
        out = manager.dict()
        procs = [
            ctx.Process(target=_rank_main, args=(rank, world_size, port, str(model_dir), out, overrides))
            for rank in range(world_size)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=300)
        assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]
        return dict(out)


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path) -> dict[int | str, dict]:
    runs: dict[int | str, dict] = {world: _train(tiny_model_dir, world) for world in (1, 2)}
    runs["micro 1"] = _train(tiny_model_dir, 1, **{"learner.micro_batch_size": "1"})
    return runs


def test_update_changes_weights_and_reports_metrics(trained: dict[int, dict]) -> None:
    result = trained[2]
    before, after = result["before"], result["after"]
    assert before.keys() == after.keys()
    assert any(k.startswith("model.visual.") for k in after) and "lm_head.weight" in after
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "lm_head.weight" in changed and any("language_model.layers.0" in k for k in changed)
    metrics = result["metrics"]
    for key in ("pg_loss", "pg_clipfrac", "ppo_kl", "entropy", "kl", "grad_norm", "time/update", "time/ref_logprob"):
        assert key in metrics and metrics[key] == metrics[key], key  # present and not NaN
    assert metrics["optimizer_steps"] == 2  # rollout batch 4 prompts / global batch 2
    assert metrics["grad_norm"] > 0


def test_micro_batching_changes_neither_gradient_nor_reported_loss(trained: dict[int | str, dict]) -> None:
    # Gradient accumulation over 4 micro-batches of 1 instead of 2 of 2: the same mini-batches.
    one, micro = trained[1], trained["micro 1"]
    # (Weights are not compared: Adam's first step moves every weight by about lr whatever the
    # size of its gradient, so rounding noise in near-zero vision gradients shows at full size.)
    for key in ("pg_loss", "grad_norm"):
        assert micro["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-4, abs=1e-7), key


def test_two_ranks_match_one_rank(trained: dict[int, dict]) -> None:
    one, two = trained[1], trained[2]
    # The global gradient norm is computed over all ranks' shards: equal if the loss is
    # normalised over the whole mini-batch, whatever the number of ranks.
    assert two["metrics"]["grad_norm"] == pytest.approx(one["metrics"]["grad_norm"], rel=1e-4)
    # Each rank reports its share of the mini-batch loss; the driver's mean over ranks is the loss.
    mean = (two["pg_loss/0"] + two["pg_loss/1"]) / 2
    assert mean == pytest.approx(one["metrics"]["pg_loss"], rel=1e-4, abs=1e-7)
    for name, weight in one["after"].items():
        torch.testing.assert_close(two["after"][name], weight, atol=2e-5, rtol=1e-4, msg=name)


def _resume_main(port: int, model_dir: str, directory: str, out: dict) -> None:
    from transformers import AutoProcessor

    from tiny_r1v.learner.worker import Learner

    cfg = learner_config(Path(model_dir), 1, **{"model.dtype": "bfloat16"})
    samples = make_samples(AutoProcessor.from_pretrained(model_dir))
    learner = Learner(cfg, 0, 1, "127.0.0.1", port)
    learner.train_step(samples)
    learner.save(directory)
    out["masters"] = learner.full_state_dict()
    learner.close()
    resumed = Learner(cfg, 0, 1, "127.0.0.1", _free_port(), checkpoint=directory)
    out["resumed"] = resumed.full_state_dict()
    resumed.close()


def test_a_bfloat16_checkpoint_resumes_from_the_float32_masters(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The model file is rounded to bf16 (what the merge and evaluation read); the learner resumes
    from the float32 masters saved beside the optimizer state, not from the rounded weights."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        proc = ctx.Process(target=_resume_main, args=(_free_port(), str(tiny_model_dir), str(tmp_path), out))
        proc.start()
        proc.join(timeout=300)
        assert proc.exitcode == 0
        masters, resumed = out["masters"], out["resumed"]
    assert masters.keys() == resumed.keys()
    assert all(torch.equal(masters[name], resumed[name]) for name in masters)
    rounded = [name for name, t in masters.items() if not torch.equal(t, t.to(torch.bfloat16).float())]
    assert rounded  # the masters are not representable in bf16, so the model file alone would not do
