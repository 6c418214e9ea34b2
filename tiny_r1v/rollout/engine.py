"""A vLLM engine that samples groups of responses and takes new weights in place.

The engine core runs in the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as verl and
EasyR1 run it): new weights then reach the model as tensors through ``apply_model`` instead of
being serialised to a worker process, and there is no engine process to supervise.

The engine knows nothing of training or evaluation configs: it takes the model (`EngineModel`),
vLLM's sizing (`EngineConfig`) and how to sample (`SamplingSpec`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from vllm import LLM, SamplingParams
from vllm.config.weight_transfer import WeightTransferConfig
from vllm.platforms import current_platform

from tiny_r1v.config.train import EngineConfig, PromptConfig
from tiny_r1v.protocol import Completion, Prompt
from tiny_r1v.rollout.sampling import EngineModel, SamplingSpec, call_seed, sample_seed
from tiny_r1v.rollout.transfer import register_gloo_engine


def _eager_on_cpu() -> AbstractContextManager:
    """torch.compile off on vLLM's CPU backend. Its sampler compiles a function for batches
    without a generator per request (the warm-up's and per_call's), which takes longer than the
    rest of a tiny model's engine start-up; eager, the same operations draw from torch's global
    generator, which `per_call` seeds. On GPU, compilation is left to vLLM."""
    return torch._dynamo.config.patch(disable=True) if current_platform.is_cpu() else nullcontext()


def build_llm(
    model: EngineModel, engine: EngineConfig, prompt: PromptConfig, seed: int, weight_transfer: str | None = None
) -> LLM:
    """An in-process vLLM engine for ``model``, sized by ``engine`` for ``prompt``'s prompts: up to
    ``max_prompt_length`` tokens, images resized into [``min_pixels``, ``max_pixels``]; with
    `weight_transfer` (a backend of `tiny_r1v.rollout.transfer`) it can join a weight-transfer group.

    The pixel bounds go to vLLM's processor as the data pipeline's: vLLM then profiles its
    memory with the largest image the data can hold rather than the checkpoint's default maximum
    (far larger for Qwen2.5-VL), and an image outside the bounds is resized to the same number of
    tokens the learner's processor sees after the data pipeline's resize."""
    memory = (
        {"kv_cache_memory_bytes": engine.kv_cache_memory_mb << 20}
        if engine.kv_cache_memory_mb is not None
        else {"gpu_memory_utilization": engine.gpu_memory_utilization}
    )
    if weight_transfer is not None:
        register_gloo_engine()
        memory["weight_transfer_config"] = WeightTransferConfig(backend=weight_transfer)
    saved_environ = dict(os.environ)
    saved_set_num_threads = torch.set_num_threads
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        with _eager_on_cpu():
            return LLM(
                model=model.path,
                trust_remote_code=model.trust_remote_code,
                dtype=str(model.dtype).removeprefix("torch."),
                tensor_parallel_size=engine.tensor_parallel_size,
                enforce_eager=engine.enforce_eager,
                max_model_len=prompt.max_prompt_length + engine.max_response_length,
                limit_mm_per_prompt={"image": engine.max_images_per_prompt, "video": 0},
                mm_processor_kwargs={"min_pixels": prompt.min_pixels, "max_pixels": prompt.max_pixels},
                # A prefill split across engine steps makes vLLM rewind the request's generator for
                # the discarded sample, which a CPU generator cannot do ("CPU Generator does not use
                # offset"): on CPU every prompt prefills in one step (vLLM then raises the step's
                # token budget to at least the model length).
                enable_chunked_prefill=not current_platform.is_cpu(),
                # Profiling runs the vision tower on a full encoder-cache budget of the largest
                # images to size the KV cache from the memory left; with the KV cache sized
                # explicitly it decides nothing.
                skip_mm_profiling=engine.kv_cache_memory_mb is not None,
                seed=seed,
                **memory,
            )
    finally:
        # vLLM's CPU platform exports settings meant for worker processes it would start (an
        # LD_PRELOAD of tcmalloc and libgomp, thread pinning) and turns torch.set_num_threads
        # into a no-op; in-process, neither may leak into this process's later children.
        os.environ.clear()
        os.environ.update(saved_environ)
        torch.set_num_threads = saved_set_num_threads


def _params(spec: SamplingSpec) -> SamplingParams:
    return SamplingParams(
        n=spec.n,
        temperature=spec.temperature,
        top_p=spec.top_p,
        max_tokens=spec.max_tokens,
        logprobs=0,  # just the sampled token's log-prob
        detokenize=False,  # the scorer decodes; token ids are what the learner needs
    )


def _seed_torch(worker: object, seed: int) -> None:
    """Run on each vLLM worker: unseeded requests draw from its default torch generators."""
    torch.manual_seed(seed)  # the CPU generator and every CUDA device's


class RolloutEngine:
    """Samples ``sampling.n`` responses per prompt and records which weights produced them."""

    def __init__(self, llm: LLM, sampling: SamplingSpec) -> None:
        self.llm = llm
        self.n = sampling.n
        self.seed_mode = sampling.seed_mode
        self.sampling = _params(sampling)
        # Validation, as verl's default: one greedy response per prompt.
        self.greedy = _params(SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_tokens=sampling.max_tokens))
        self.weight_version = 0
        self.in_transfer_group = False

    def generate(
        self, prompts: Sequence[Prompt], seed: int | None = None, first_slot: int = 0, greedy: bool = False
    ) -> list[Completion]:
        """``n`` completions per prompt (one greedy one with ``greedy``), grouped in prompt order.

        Args:
            seed: makes sampling reproducible, as the spec's ``seed_mode`` says
                (`tiny_r1v.rollout.sampling.SeedMode`): ``per_request`` draws prompt ``i`` (slot
                ``first_slot + i``) with ``sample_seed(seed, slot, n)``, however a batch is split
                across engines; ``per_call`` seeds the whole call with
                ``call_seed(seed, first_slot)``.
        """
        requests = [
            {"prompt": p.text, "multi_modal_data": {"image": list(p.images)}} if p.images else {"prompt": p.text}
            for p in prompts
        ]
        params = self.greedy if greedy else self.sampling
        if seed is not None and not greedy:
            if self.seed_mode == "per_request":
                params = [params.clone() for _ in prompts]
                for index, item in enumerate(params):
                    item.seed = sample_seed(seed, first_slot + index, self.n)
            else:
                # A fresh engine's caches are empty; cached prefixes or images would let vLLM
                # pack the steps differently, and the noise rows follow the packing.
                self._drop_caches()
                self.llm.collective_rpc(_seed_torch, args=(call_seed(seed, first_slot),))
        with _eager_on_cpu():
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        completions = []
        for prompt, output in zip(prompts, outputs, strict=True):
            for sample in output.outputs:
                token_ids = tuple(sample.token_ids)
                logprobs = zip(sample.logprobs, token_ids, strict=True)
                completions.append(
                    Completion(
                        uid=prompt.uid,
                        token_ids=token_ids,
                        logprobs=tuple(step[token].logprob for step, token in logprobs),
                        finish_reason="length" if sample.finish_reason == "length" else "stop",
                        weight_version=self.weight_version,
                        prompt_tokens=len(output.prompt_token_ids),
                    )
                )
        return completions

    def load_weights(self, weights: Mapping[str, torch.Tensor], version: int) -> None:
        """Load full weights (Hugging Face names, either Qwen2.5-VL key layout) in place.

        Goes through vLLM's reload path, which restores each layer to checkpoint format before
        loading and re-packs it after (the CPU backend re-packs linear weights for its kernels,
        so a plain ``load_weights`` finds them emptied). Cached prefixes and image embeddings
        were computed by the old weights, so both caches are dropped too.
        """
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items())})
        self._drop_caches()
        self.weight_version = version

    def load_model_dir(self, model_dir: str) -> None:
        """Load the weights of another checkpoint of the same model in place (its safetensors
        files, through vLLM's reload as `load_weights`)."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": model_dir})
        self._drop_caches()

    def join_transfer(self, address: str, port: int, rank: int, world_size: int) -> None:
        """Join a weight-transfer group as `rank` (the engine must be built with ``weight_transfer``)."""
        init_info = {"master_address": address, "master_port": port, "rank_offset": rank, "world_size": world_size}
        self.llm.init_weight_transfer_engine({"init_info": init_info})
        self.in_transfer_group = True

    def receive_weights(self, update_info: dict, version: int) -> None:
        """Take the weights of `version` that the group's rank 0 broadcasts (``update_info``:
        `tiny_r1v.rollout.transfer.update_info`), through vLLM's reload as `load_weights` does.
        If it fails part-way, some layers are left unloaded: the engine is then unusable."""
        self.llm.start_weight_update(is_checkpoint_format=True)
        self.llm.update_weights({"update_info": update_info})
        self.llm.finish_weight_update()
        self._drop_caches()
        self.weight_version = version

    def _drop_caches(self) -> None:
        """Forget cached prompt prefixes and image embeddings."""
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
