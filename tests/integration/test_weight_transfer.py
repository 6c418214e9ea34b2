"""Weight sync through vLLM's weight-transfer engine into two real rollout workers (the gloo
engine on CPU), against the object-store path."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import engine_parameters, one_image_prompt, vllm_tensor
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor

from tiny_r1v.protocol import Prompt
from tiny_r1v.rollout.transfer import GLOO_BACKEND, WeightSender, bucket_ranges, update_info
from tiny_r1v.trainer.actors import RolloutWorker
from tiny_r1v.trainer.ports import free_port
from tiny_r1v.trainer.weights import PackedWeights

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.filterwarnings("ignore:Tensor '.*' has size .* bytes, which exceeds buffer_size_bytes"),
]

BUCKET = 64 << 10  # small enough that buckets close inside the tiny model's larger tensors


def test_two_rollout_workers_take_the_learners_weights_through_the_transfer_engine(
    ray_local, tiny_config, tiny_model_dir
):
    import ray

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    prompts = [
        Prompt("img", one_image_prompt(processor, "What colour?"), (Image.new("RGB", (84, 56), (200, 20, 20)),)),
        Prompt(
            "txt", processor.apply_chat_template([{"role": "user", "content": "2 + 3?"}], add_generation_prompt=True)
        ),
    ]
    original = load_file(tiny_model_dir / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    new = {name: t + 0.05 * torch.randn(t.shape, generator=generator) for name, t in original.items()}
    sizes = [t.nbytes for t in new.values()]
    buckets = bucket_ranges(sizes, BUCKET)
    assert len(buckets) > 2 and any(sum(sizes[i] for i in bucket) > BUCKET for bucket in buckets)

    cfg = replace(tiny_config, rollout=replace(tiny_config.rollout, weight_sync="transfer_engine"))
    workers = [ray.remote(RolloutWorker).remote(cfg) for _ in range(2)]

    def greedy(worker) -> list[tuple]:
        completions = ray.get(worker.generate.remote(prompts, 0, 0, True)).completions
        return [(c.weight_version, c.token_ids, c.logprobs) for c in completions]

    try:
        before = greedy(workers[0])
        info = update_info([(name, t.dtype, tuple(t.shape)) for name, t in new.items()], BUCKET)
        # A worker outside the group (one restarted since it formed) refuses at once.
        with pytest.raises(ray.exceptions.RayTaskError, match="has not joined the weight-transfer group"):
            ray.get(workers[1].receive_weights.remote(info, 1))
        address, port = free_port()
        joins = [worker.join_transfer.remote(address, port, 1 + i, 3) for i, worker in enumerate(workers)]
        sender = WeightSender(GLOO_BACKEND, BUCKET)
        sender.join(address, port, 3)
        ray.get(joins)
        loads = [worker.receive_weights.remote(info, 1) for worker in workers]
        sender.send(iter(new.items()))
        assert [load["bytes"] for load in ray.get(loads)] == [float(sum(sizes))] * 2

        transferred = [greedy(worker) for worker in workers]
        assert transferred[0] == transferred[1]
        assert all(version == 1 for version, _, _ in transferred[0])
        assert [tokens for _, tokens, _ in transferred[0]] != [tokens for _, tokens, _ in before]
        for worker in workers:
            params = engine_parameters(worker)
            assert {"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"} <= set(params)
            for name, tensor in params.items():
                assert torch.equal(tensor, vllm_tensor(new, name)), name

        # The same weights through the object store give the same greedy answers.
        ray.get(workers[0].load_weights.remote(PackedWeights.pack(new), 1))
        assert greedy(workers[0]) == transferred[0]
    finally:
        for worker in workers:
            ray.kill(worker)
