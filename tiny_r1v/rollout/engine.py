"""A vLLM engine that samples groups of responses and takes new weights in place.

The engine core runs in the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as verl and
EasyR1 run it): new weights then reach the model as tensors through ``apply_model`` instead of
being serialised to a worker process, and there is no engine process to supervise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from vllm import LLM, SamplingParams

from tiny_r1v.config.train import TrainConfig
from tiny_r1v.device import compute_dtype, resolve_device
from tiny_r1v.protocol import Completion, Prompt


def build_llm(cfg: TrainConfig) -> LLM:
    """An in-process vLLM engine for ``cfg.model.path`` sized by ``cfg.rollout`` and ``cfg.data``."""
    rollout = cfg.rollout
    device = resolve_device(cfg.trainer.device)
    memory = (
        {"kv_cache_memory_bytes": rollout.kv_cache_memory_mb << 20}
        if rollout.kv_cache_memory_mb is not None
        else {"gpu_memory_utilization": rollout.gpu_memory_utilization}
    )
    saved_environ = dict(os.environ)
    saved_set_num_threads = torch.set_num_threads
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        return LLM(
            model=cfg.model.path,
            trust_remote_code=cfg.model.trust_remote_code,
            dtype=str(compute_dtype(cfg.model.dtype, device)).removeprefix("torch."),
            tensor_parallel_size=rollout.tensor_parallel_size,
            enforce_eager=rollout.enforce_eager,
            max_model_len=cfg.data.max_prompt_length + rollout.max_response_length,
            limit_mm_per_prompt={"image": rollout.max_images_per_prompt, "video": 0},
            seed=rollout.seed,
            **memory,
        )
    finally:
        # vLLM's CPU platform exports settings meant for worker processes it would start (an
        # LD_PRELOAD of tcmalloc and libgomp, thread pinning) and turns torch.set_num_threads
        # into a no-op; in-process, neither may leak into this process's later children.
        os.environ.clear()
        os.environ.update(saved_environ)
        torch.set_num_threads = saved_set_num_threads


class RolloutEngine:
    """Samples ``rollout.n`` responses per prompt and records which weights produced them."""

    def __init__(self, llm: LLM, cfg: TrainConfig) -> None:
        self.llm = llm
        rollout = cfg.rollout
        self.sampling = SamplingParams(
            n=rollout.n,
            temperature=rollout.temperature,
            top_p=rollout.top_p,
            max_tokens=rollout.max_response_length,
            logprobs=0,  # just the sampled token's log-prob
            detokenize=False,  # the scorer decodes; token ids are what the learner needs
        )
        # Validation, as verl's default: one greedy response per prompt.
        self.greedy = SamplingParams(
            n=1, temperature=0.0, max_tokens=rollout.max_response_length, logprobs=0, detokenize=False
        )
        self.weight_version = 0

    def generate(self, prompts: Sequence[Prompt], seed: int | None = None, greedy: bool = False) -> list[Completion]:
        """``rollout.n`` completions per prompt (one greedy one with ``greedy``), grouped in prompt order.

        Args:
            seed: makes the batch's sampling reproducible: sample ``k`` of prompt ``index`` draws
                with seed ``(seed + index) * n + k`` (vLLM seeds a request's samples ``s + k``), so
                no two samples of consecutive prompt slots share their random draws.
        """
        requests = [
            {"prompt": p.text, "multi_modal_data": {"image": list(p.images)}} if p.images else {"prompt": p.text}
            for p in prompts
        ]
        params = self.greedy if greedy else self.sampling
        if seed is not None and not greedy:
            params = [params.clone() for _ in prompts]
            for index, item in enumerate(params):
                item.seed = (seed + index) * item.n
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
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.weight_version = version
