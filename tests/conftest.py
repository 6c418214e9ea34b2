"""Session-wide fixtures: a tiny Qwen2.5-VL model directory and one vLLM engine on it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers import ROOT

import tiny_r1v  # noqa: F401  (its Ray setting must precede the test modules' `import ray`)

# Nothing may be downloaded: a hub lookup must fail at once instead of waiting on the network.
# Set before anything imports huggingface_hub, which reads it at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUICKSTART = ROOT / "configs" / "quickstart.yaml"

if TYPE_CHECKING:
    from vllm import LLM


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2.5-VL model directory (seed 0), built once per session."""
    from tiny_r1v.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def tiny_config(tiny_model_dir: Path):
    """The quickstart config pointed at the tiny model."""
    from tiny_r1v.config import load_config
    from tiny_r1v.config.train import TrainConfig

    return load_config(TrainConfig, QUICKSTART, [f"model.path={tiny_model_dir}"])


@pytest.fixture(scope="session")
def vllm_engine(tiny_config) -> Iterator[LLM]:
    """One in-process vLLM engine on the tiny model, shared by the whole session.

    Start-up is the expensive part (about 10 s here once vLLM's model-inspection cache under
    ~/.cache/vllm is warm, about 35 s on a fresh machine), so every test that needs an engine
    takes this one instead of building its own. Built exactly as the rollout workers build
    theirs (float32 on CPU, eager, fixed KV cache from the quickstart config).
    """
    from tiny_r1v.trainer.actors import build_rollout_llm

    engine = build_rollout_llm(tiny_config)
    yield engine
    # Tears down the engine core and vLLM's process group, so the interpreter exits cleanly.
    engine.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray instance shared by the tests that start actors (start-up takes seconds)."""
    import ray

    # address="local": a new instance even if a `ray start` cluster runs on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests need CUDA: without it they are reported as skipped, with the reason."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run on a GPU node: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
