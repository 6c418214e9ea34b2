"""Session-wide fixtures: a tiny Qwen2.5-VL model directory and one vLLM engine on it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# Nothing may be downloaded: a hub lookup must fail at once instead of waiting on the network.
# Set before anything imports huggingface_hub, which reads it at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

if TYPE_CHECKING:
    from vllm import LLM


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2.5-VL model directory (seed 0), built once per session."""
    from tiny_r1v.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir: Path) -> Iterator[LLM]:
    """One in-process vLLM engine on `tiny_model_dir`, shared by the whole session.

    Start-up is the expensive part (about 15 s on the 2-core CI machine once vLLM's
    model-inspection cache under ~/.cache/vllm is warm, about 40 s without it), so every test
    that needs an engine takes this one instead of building its own.
    """
    import torch

    import vllm

    saved_environ = dict(os.environ)
    saved_set_num_threads = torch.set_num_threads
    # In-process engine core, as verl runs it: no engine process to start, and tensors passed
    # to `collective_rpc` stay tensors.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        engine = vllm.LLM(
            model=str(tiny_model_dir),
            # vLLM would downcast the float32 checkpoint to bfloat16, which AVX2 CPUs emulate
            # (warm-up 19 s instead of 7 s) and which would make rollout logprobs differ from
            # the float32 learner's.
            dtype="float32",
            # No torch.compile / inductor graph of the model: compiling costs more start-up
            # time than it saves on a test's few generate calls.
            enforce_eager=True,
            # An explicit KV-cache size (32 MiB = 32k tokens at 1 KiB per token) instead of
            # `gpu_memory_utilization`, which on CPU is a share of host RAM minus the
            # process's own resident size, and fails when pytest has grown large.
            kv_cache_memory_bytes=32 << 20,
            max_model_len=1024,
            max_num_seqs=16,
            # Small warm-up batch: the start-up profiling run is a forward pass of this size.
            max_num_batched_tokens=1024,
            # Images only: no dummy-video profiling at start-up.
            limit_mm_per_prompt={"image": 1, "video": 0},
            seed=0,
        )
    finally:
        # vLLM's CPU platform exports settings meant for worker processes (LD_PRELOAD of
        # tcmalloc and libgomp, thread and inductor settings); an in-process engine starts
        # none, so they must not leak into subprocesses that later tests start (Ray, torchrun).
        os.environ.clear()
        os.environ.update(saved_environ)
        # Its CPU worker also replaces torch.set_num_threads by a no-op to protect a thread
        # binding that only its multiprocess executor makes.
        torch.set_num_threads = saved_set_num_threads
    yield engine
    # Tears down the engine core and vLLM's process group, so the interpreter exits cleanly.
    engine.llm_engine.engine_core.shutdown()
