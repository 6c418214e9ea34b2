"""The merge as a Ray actor: one GPU when the cluster has one (and the config allows it), else CPU."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from tiny_r1v.merge.config import MergeConfig
from tiny_r1v.merge.errors import MergeError
from tiny_r1v.merge.runner import merge
from tiny_r1v.merge.sources import Source

# Transparent huge pages for torch's large CPU buffers: each merged tensor allocates fresh
# buffers, and with 4 KiB pages their page faults cost more than the arithmetic (torch reads
# this when the process first allocates, so it is set where the actor process starts).
THP = {"THP_MEM_ALLOC_ENABLE": "1"}


class MergeJob:
    """Plain class behind the actor (see `run_on_ray`); works without Ray too."""

    def __init__(self) -> None:
        # Ray limits an actor's threads to its num_cpus (1 here); the merge is the node's only
        # job, so its maths and dtype conversions may use every core.
        torch.set_num_threads(os.cpu_count() or 1)

    def run(self, cfg: MergeConfig, base: Source, experts: Sequence[Source]) -> dict[str, Any]:
        from ray.experimental.tqdm_ray import tqdm  # renders on the driver's console

        return merge(cfg, base, experts, progress=tqdm)


def run_on_ray(cfg: MergeConfig, base: Source, experts: Sequence[Source]) -> dict[str, Any]:
    """Run the merge in an actor on the connected Ray cluster; returns its provenance.

    `cfg.output` must be absolute (as the sources are): the actor's working directory is not
    the driver's."""
    import ray  # here, not at the top: the bench imports THP on machines without Ray

    has_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    if cfg.device == "cuda" and not has_gpu:
        raise MergeError("device is 'cuda' but the Ray cluster has no GPU")
    gpus = 1 if cfg.device != "cpu" and has_gpu else 0
    job = ray.remote(num_cpus=1, num_gpus=gpus, runtime_env={"env_vars": THP})(MergeJob).remote()
    try:
        return ray.get(job.run.remote(cfg, base, list(experts)))
    finally:
        ray.kill(job)
