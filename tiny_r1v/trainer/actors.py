"""Ray actors: thin wrappers that place the plain classes (engine, scorer, learner) on a cluster."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import ray
import torch
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tiny_r1v.config.train import TrainConfig
from tiny_r1v.console import quiet_actor
from tiny_r1v.device import resolve_device
from tiny_r1v.learner.worker import Learner
from tiny_r1v.protocol import Generation, Prompt
from tiny_r1v.rollout.sampling import EngineModel, SamplingSpec
from tiny_r1v.trainer.checkpoint import log_dir
from tiny_r1v.trainer.ports import free_port
from tiny_r1v.trainer.scoring import GroupScorer
from tiny_r1v.trainer.weights import PackedWeights

if TYPE_CHECKING:
    from tiny_r1v.rollout.transfer import WeightSender

# A crashed rollout worker is rebuilt by Ray this many times per run; the driver then hands it
# the current weights. Learners are never restarted alone: their process group would be broken.
ROLLOUT_RESTARTS = 3


def _use_all_cores(device: torch.device) -> None:
    # Ray starts actors with OMP_NUM_THREADS=1; on a CPU run the phases take turns, so each may
    # use every core. The variable matters too: vLLM sizes torch's thread pool from it while it
    # builds an engine (and its CPU worker then disables torch.set_num_threads).
    if device.type == "cpu":
        cores = os.cpu_count() or 1
        os.environ["OMP_NUM_THREADS"] = str(cores)
        torch.set_num_threads(cores)


def rollout_sampling(cfg: TrainConfig) -> SamplingSpec:
    """How the rollout engines sample a group."""
    rollout = cfg.rollout
    return SamplingSpec(
        n=rollout.n,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        max_tokens=rollout.max_response_length,
        seed_mode=rollout.seed_mode,
    )


def build_rollout_llm(cfg: TrainConfig):  # -> vllm.LLM, imported lazily (the driver never loads vLLM)
    """The vLLM engine of a rollout worker (tests build the same one)."""
    from tiny_r1v.rollout.engine import build_llm
    from tiny_r1v.rollout.transfer import backend_for

    model = EngineModel.resolve(cfg.model.path, cfg.model.dtype, cfg.trainer.device, cfg.model.trust_remote_code)
    transfer = backend_for(resolve_device(cfg.trainer.device)) if cfg.rollout.weight_sync == "transfer_engine" else None
    return build_llm(model, cfg.rollout, cfg.data, cfg.rollout.seed, transfer)


class RolloutWorker:
    """One vLLM engine (see :class:`~tiny_r1v.rollout.engine.RolloutEngine`) on the configured
    model; the driver loads the learners' weights into it (its version starts at 0)."""

    def __init__(self, cfg: TrainConfig) -> None:
        quiet_actor(log_dir(cfg), "rollout", cfg.trainer.verbose)  # before vLLM's import prints
        from tiny_r1v.rollout.engine import RolloutEngine

        _use_all_cores(resolve_device(cfg.trainer.device))
        self.engine = RolloutEngine(build_rollout_llm(cfg), rollout_sampling(cfg))

    def generate(self, prompts: Sequence[Prompt], seed: int, first_slot: int, greedy: bool = False) -> Generation:
        start = time.perf_counter()
        completions = self.engine.generate(prompts, seed=seed, first_slot=first_slot, greedy=greedy)
        return Generation(completions, time.perf_counter() - start)

    def load_weights(self, weights: PackedWeights, version: int) -> dict[str, float]:
        """Load new weights; returns the seconds it took and the bytes received."""
        start = time.perf_counter()
        self.engine.load_weights(weights.tensors(), version)
        return {"seconds": time.perf_counter() - start, "bytes": float(weights.nbytes)}

    def receive_weights(self, update_info: dict, version: int) -> dict[str, float]:
        """Take new weights from the transfer group (see `load_weights`). A worker outside the
        group (restarted since it formed) refuses at once; one whose receive failed part-way
        holds an unusable engine and exits, for Ray to rebuild it."""
        from tiny_r1v.rollout.transfer import payload_bytes

        if not self.engine.in_transfer_group:
            raise RuntimeError("this rollout worker has not joined the weight-transfer group (restarted since)")
        start = time.perf_counter()
        try:
            self.engine.receive_weights(update_info, version)
        except Exception:
            logging.getLogger(__name__).exception("weight receive failed; exiting to be restarted")
            os._exit(1)
        return {"seconds": time.perf_counter() - start, "bytes": float(payload_bytes(update_info))}

    def join_transfer(self, address: str, port: int, rank: int, world_size: int) -> None:
        self.engine.join_transfer(address, port, rank, world_size)

    def weight_version(self) -> int:
        return self.engine.weight_version


class LearnerWorker(Learner):
    """A learner rank as an actor (all methods but the constructor are collective)."""

    def __init__(self, cfg: TrainConfig, rank: int, *args, **kwargs) -> None:
        quiet_actor(log_dir(cfg), f"learner-{rank}", cfg.trainer.verbose)
        _use_all_cores(resolve_device(cfg.trainer.device))
        super().__init__(cfg, rank, *args, **kwargs)
        self.sender: WeightSender | None = None  # rank 0's end of the weight-transfer group

    def packed_weights(self) -> PackedWeights:
        """The full weights in the model's dtype for the object store (on rank 0; empty elsewhere)."""
        return PackedWeights.pack({name: tensor.cpu() for name, tensor in self.model_weights()})

    def transfer_address(self) -> tuple[str, int]:
        """Where a weight-transfer group led by this rank can meet (this node, a free port)."""
        return free_port()

    def update_info(self) -> dict:
        """What each engine is told to receive in a sync (vLLM's ``update_info``)."""
        from tiny_r1v.rollout.transfer import bucket_bytes, update_info

        return update_info(self.weight_entries(), bucket_bytes(self.cfg.rollout.weight_bucket_mb))

    def join_transfer(self, address: str, port: int, world_size: int) -> None:
        """Join a new weight-transfer group as its rank 0 (on learner rank 0 only)."""
        from tiny_r1v.rollout.transfer import WeightSender, backend_for, bucket_bytes

        if self.sender is None:
            self.sender = WeightSender(backend_for(self.device), bucket_bytes(self.cfg.rollout.weight_bucket_mb))
        self.sender.join(address, port, world_size)

    def send_weights(self) -> bool:
        """Broadcast the weights to the transfer group from rank 0 (collective: every rank takes
        part in the gathers). False when the broadcast failed (a member died): the remaining
        tensors are still gathered, so that the other ranks are not left waiting."""
        tensors = self.model_weights()
        try:
            if self.sender is not None:
                self.sender.send(tensors)
            return True
        except RuntimeError as err:
            logging.getLogger(__name__).warning("weight broadcast failed: %s", err)
            return False
        finally:
            for _ in tensors:
                pass


class ActorGraph:
    """Creates the actors of one run and holds their handles."""

    def __init__(self, cfg: TrainConfig, checkpoint: str | None) -> None:
        device = resolve_device(cfg.trainer.device)
        gpu = device.type == "cuda"
        learners, rollouts = cfg.learner.num_workers, cfg.rollout.num_workers
        # On CPU everything shares the node's cores; each actor gets an equal fraction so Ray
        # can place all of them, and the phases take turns using the cores.
        cpu_share = 1.0 if gpu else ray.cluster_resources().get("CPU", 1.0) / (learners + rollouts + 1)
        bundle = {"CPU": cpu_share, **({"GPU": 1.0} if gpu else {})}
        self.learner_group: PlacementGroup = placement_group([bundle] * learners, strategy="PACK")
        ray.get(self.learner_group.ready())
        on_bundle = [PlacementGroupSchedulingStrategy(self.learner_group, i) for i in range(learners)]
        address, port = ray.get(ray.remote(num_cpus=0)(free_port).options(scheduling_strategy=on_bundle[0]).remote())
        learner_cls = ray.remote(LearnerWorker)
        self.learners = [
            learner_cls.options(
                scheduling_strategy=on_bundle[rank], num_cpus=cpu_share, num_gpus=1 if gpu else 0
            ).remote(cfg, rank, learners, address, port, checkpoint)
            for rank in range(learners)
        ]
        rollout_cls = ray.remote(RolloutWorker).options(
            num_cpus=cpu_share,
            num_gpus=float(cfg.rollout.tensor_parallel_size) if gpu else 0,
            max_restarts=ROLLOUT_RESTARTS,
        )
        self.rollouts = [rollout_cls.remote(cfg) for _ in range(rollouts)]
        # The reward/length-scoring actor; its scoring processes are its own children.
        self.scorer = ray.remote(GroupScorer).options(num_cpus=cpu_share).remote(cfg)

    def shutdown(self) -> None:
        """Stop every actor and free the learners' placement group."""
        ray.get([learner.close.remote() for learner in self.learners])
        ray.get(self.scorer.close.remote())
        for actor in (*self.learners, *self.rollouts, self.scorer):
            ray.kill(actor)
        ray.util.remove_placement_group(self.learner_group)
