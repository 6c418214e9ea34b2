"""The driver: the only place that knows the iteration order.

One step: prompts → rollout workers (G samples each) → reward scorer (rewards, LIPO or GRPO
advantages) → learner ranks (old/ref log-probs, PPO updates) → weight sync to every rollout
worker. Every phase is timed; metrics go to the configured sinks; checkpoints are written every
``trainer.save_freq`` steps and at the end; the validation set is decoded greedily every
``trainer.val_freq`` steps and at the end.

With ``trainer.max_staleness`` k >= 1 the rollouts run ahead: the generation of steps s+1..s+k
is requested before step s trains. A rollout worker runs its calls one at a time in the order
the driver sent them, so a weight load sent after a sync runs between two generations of that
worker, and every generation requested after it samples with the new weights. Hence the rule:
the batch of step t is requested only once the load of version t - k has been sent (the driver
requests step s+k+1 right after the sync that ends step s), and the weight version each
completion carries is checked again when it arrives.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import yaml
from ray.exceptions import ActorUnavailableError, RayActorError
from transformers import AutoProcessor

from tiny_r1v.config import to_dict
from tiny_r1v.config.train import TrainConfig
from tiny_r1v.data import Example, render_prompt
from tiny_r1v.learner.worker import shard_for_rank
from tiny_r1v.protocol import Completion, Generation, Prompt, TrainSample
from tiny_r1v.rewards.completions import Reference
from tiny_r1v.timing import timed
from tiny_r1v.trainer import checkpoint
from tiny_r1v.trainer.actors import ActorGraph
from tiny_r1v.trainer.metrics import MetricsLogger, occupancy, staleness_metrics
from tiny_r1v.trainer.sampler import step_indices
from tiny_r1v.trainer.weights import SyncCalls, WeightSync, sync_metrics

logger = logging.getLogger(__name__)

# A restarting rollout worker rebuilds its engine (tens of seconds on CPU): retry patiently.
_RETRY_PAUSE_S = 2.0
_MAX_ROLLOUT_RETRIES = 60

StepHook = Callable[["Driver", int, dict[str, float]], None]


def _split_into(items: Sequence, parts: int) -> list[Sequence]:
    """``items`` in at most ``parts`` contiguous pieces of equal size (the last may be shorter)."""
    size = -(-len(items) // parts)
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class _Rollout:
    """One batch's generation in flight: a piece of the prompts per rollout worker."""

    chunks: list[Sequence[Prompt]]
    """The prompts of worker ``i``."""
    slots: list[int]
    """Sampling slot of the first prompt of each chunk."""
    greedy: bool
    references: dict[str, Reference]
    """What the completions are scored against, by prompt uid."""
    calls: dict[int, ray.ObjectRef] = field(default_factory=dict)
    """Worker index -> its pending ``generate`` call (a `Generation`)."""


class Driver:
    """Runs LIPO/GRPO training steps on an actor graph (Ray must be initialised).

    Args:
        start: the checkpoint to resume from and its state (`checkpoint.start_point`, which the
            launcher calls before Ray starts); None starts at step 0.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        examples: Sequence[Example],
        val_examples: Sequence[Example] = (),
        start: tuple[Path, checkpoint.TrainerState] | None = None,
    ) -> None:
        self.cfg = cfg
        self.examples = examples
        self.val_examples = val_examples
        self.run_dir = checkpoint.run_dir(cfg)
        self.processor = AutoProcessor.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        self.step, version = (0, 0) if start is None else (start[1].step, start[1].weight_version)
        if start is not None:
            logger.info("resuming from %s (step %d)", start[0], self.step)
        # First, as it refuses an earlier run's metrics before anything else in the directory changes.
        self.metrics = MetricsLogger(
            self.run_dir, cfg.trainer.loggers, cfg.trainer.experiment_name, cfg.trainer.total_steps, self.step
        )
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        # Rollout workers always start from the configured model (version 0), also when resuming:
        # Ray rebuilds a restarted worker from its constructor arguments, and a checkpoint
        # directory may be pruned by then. A worker on an older version is brought up to date.
        self.graph = ActorGraph(cfg, None if start is None else str(start[0]))
        transfer = cfg.rollout.weight_sync == "transfer_engine"
        self.weights = WeightSync(self.graph.learners, self.graph.rollouts, version, transfer)
        if start is not None:
            self.weights.load_all()
        # Rollouts requested ahead, by step (0-based); with k = 0 only the current one.
        self._ahead: dict[int, _Rollout] = {}
        # Weight syncs sent but not waited for, oldest first.
        self._loads: deque[SyncCalls] = deque()

    # ------------------------------------------------------------------ phases

    def _prompts(self, step: int) -> tuple[list[Prompt], dict[str, Reference]]:
        data = self.cfg.data
        indices = step_indices(len(self.examples), self.cfg.trainer.rollout_batch_size, step, data.seed, data.shuffle)
        # Unique within the step even when a batch spans two epochs and repeats an example.
        return self._prompts_of([(f"{step}:{slot}", self.examples[index]) for slot, index in enumerate(indices)])

    def _prompts_of(self, keyed: Sequence[tuple[str, Example]]) -> tuple[list[Prompt], dict[str, Reference]]:
        """Prompts (uid: key + the example's uid) and what their completions are scored against."""
        prompts, references = [], {}
        data = self.cfg.data
        for key, example in keyed:
            uid = f"{key}:{example.uid}"
            prompts.append(render_prompt(self.processor, example, data.prompt_format, uid, data.image_position))
            references[uid] = Reference(task=example.task, answer=example.answer)
        return prompts, references

    def _request(
        self, prompts: list[Prompt], references: dict[str, Reference], step: int, greedy: bool = False
    ) -> _Rollout:
        """Send every rollout worker its piece of `prompts` (sampled with the weights it holds
        once the calls already sent to it have run)."""
        chunks = _split_into(prompts, len(self.graph.rollouts))
        # Prompt j of the step is sampling slot step * batch + j, however the batch is split.
        slots = [step * len(prompts) + i * len(chunks[0]) for i in range(len(chunks))]
        rollout = _Rollout(chunks, slots, greedy, references)
        rollout.calls.update({i: self._generate(rollout, i) for i in range(len(chunks))})
        return rollout

    def _generate(self, rollout: _Rollout, index: int) -> ray.ObjectRef:
        worker = self.graph.rollouts[index]
        return worker.generate.remote(
            rollout.chunks[index], self.cfg.rollout.seed, rollout.slots[index], rollout.greedy
        )

    def _receive(self, rollout: _Rollout, max_staleness: int) -> tuple[list[Completion], int, float]:
        """The completions of `rollout`, each from weights at most `max_staleness` versions behind
        the learners'; a piece that is older (its worker restarted on the start weights) or lost
        is generated again. Returns the restarts needed and the workers' busy seconds."""
        pending = dict(rollout.calls)
        results: dict[int, list[Completion]] = {}
        restarts, busy = 0, 0.0
        while pending:
            index, ref = pending.popitem()
            worker = self.graph.rollouts[index]
            try:
                generation: Generation = ray.get(ref)
                busy += generation.seconds
                if all(self.weights.version - c.weight_version <= max_staleness for c in generation.completions):
                    results[index] = generation.completions
                    continue
                # Restarted since the last sync, so it holds the start weights: update it.
                self.weights.catch_up(worker)
            except (RayActorError, ActorUnavailableError) as err:
                logger.warning("rollout worker %d failed (%s); retrying once Ray has restarted it", index, err)
                time.sleep(_RETRY_PAUSE_S)
            restarts += 1
            if restarts > _MAX_ROLLOUT_RETRIES:
                raise RuntimeError(f"rollout workers failed {restarts} times in step {self.step}; giving up")
            pending[index] = self._generate(rollout, index)
        return [c for i in range(len(rollout.chunks)) for c in results[i]], restarts, busy

    def _request_ahead(self) -> None:
        """Request the rollouts of steps ``step .. step + max_staleness`` not yet requested: the
        learners train each at most ``max_staleness`` versions after the weights last sent."""
        last = min(self.step + self.cfg.trainer.max_staleness, self.cfg.trainer.total_steps - 1)
        for step in range(self.step, last + 1):
            if step not in self._ahead:
                self._ahead[step] = self._request(*self._prompts(step), step)

    def _train(self, samples: list[TrainSample]) -> dict[str, float]:
        mini = self.cfg.samples_per_update()
        ranks = len(self.graph.learners)
        results = ray.get(
            [
                learner.train_step.remote(shard_for_rank(samples, rank, ranks, mini), self.step)
                for rank, learner in enumerate(self.graph.learners)
            ]
        )
        # Loss terms are per-rank averages (their mean is the global one); the gradient norm is
        # already global; a maximum is the largest of the ranks'.
        return {
            key: float((np.max if key.endswith("_max") else np.mean)([r[key] for r in results])) for key in results[0]
        }

    def run_validation(self) -> dict[str, float]:
        """Greedy completions of the validation set from the current weights, scored (`val/*`).
        Its generation runs after the rollouts already requested ahead."""
        timings: dict[str, float] = {}
        with timed(timings, "time/validation"):
            keyed = [(f"val:{i}", example) for i, example in enumerate(self.val_examples)]
            prompts, references = self._prompts_of(keyed)
            completions, _, _ = self._receive(self._request(prompts, references, self.step, greedy=True), 0)
            metrics = ray.get(self.graph.scorer.validation_metrics.remote(completions, references))
        return {**metrics, **timings}

    # ------------------------------------------------------------------ loop

    def _sync(self) -> tuple[dict[str, float], float, float]:
        """Send the learners' new weights to the rollout workers (and, with max_staleness k >= 1,
        request the next rollout after them); returns the metrics of the loads waited for, the
        learners' seconds in the gather and the rollout workers' summed seconds in the loads.

        The driver waits for a sync's loads once the next step needs them: at once with k <= 1,
        else k - 1 syncs later (a worker loads after the k - 1 generations queued before)."""
        k = self.cfg.trainer.max_staleness
        start = time.perf_counter()
        loads = self.weights.advance()
        gather_seconds = time.perf_counter() - start
        self._loads.append(loads)
        self.step += 1
        if k > 0:
            self._request_ahead()
        metrics, busy = {}, 0.0
        while len(self._loads) >= max(k, 1):
            done = self.weights.collect(self._loads.popleft())
            metrics = sync_metrics(done)
            busy += sum(load["seconds"] for load in done)
        return metrics, gather_seconds, busy

    def train_step(self) -> dict[str, float]:
        """One iteration; returns its metrics (also logged), its validation's too when one ran."""
        step = self.step
        timings: dict[str, float] = {}
        with timed(timings, "time/step"):
            self._request_ahead()
            rollout = self._ahead.pop(step)
            with timed(timings, "time/rollout"):
                completions, restarts, generating = self._receive(rollout, self.cfg.trainer.max_staleness)
            with timed(timings, "time/reward"):
                scored = ray.get(self.graph.scorer.score.remote(completions, rollout.references))
            by_uid = {chunk.uid: chunk for prompts in rollout.chunks for chunk in prompts}
            samples = [
                TrainSample(
                    prompt=by_uid[c.uid],
                    response_ids=c.token_ids,
                    advantage=a,
                    rollout_logprobs=c.logprobs,
                    weight_version=c.weight_version,
                )
                for c, a in zip(completions, scored.advantages, strict=True)
            ]
            staleness = staleness_metrics([s.weight_version for s in samples], self.weights.version)
            with timed(timings, "time/learner"):
                learner_metrics = self._train(samples)
            with timed(timings, "time/sync"):
                sync, gathering, loading = self._sync()
            sync["sync/seconds"] = timings["time/sync"]
        tokens = sum(len(c.token_ids) for c in completions)
        busy = {
            "rollout": (generating + loading) / len(self.graph.rollouts),
            "learner": timings["time/learner"] + gathering,
        }
        metrics = {
            **scored.metrics,
            **{f"actor/{k}" if not k.startswith(("time/", "rollout/")) else k: v for k, v in learner_metrics.items()},
            **sync,
            **timings,
            **staleness,
            **occupancy(timings["time/step"], busy),
            "perf/response_tokens": float(tokens),
            "perf/tokens_per_s": tokens / timings["time/step"],
            "perf/rollout_tokens_per_s": tokens / timings["time/rollout"],
            "rollout/restarts": float(restarts),
            "rollout/weight_version": float(self.weights.version),
        }
        self.metrics.log(self.step, metrics)
        if self._due(self.cfg.trainer.save_freq):
            self.save()
        # After the checkpoint, so that a failing validation loses no step; a row of its own.
        if self._due(self.cfg.trainer.val_freq) and self.val_examples:
            validation = self.run_validation()
            self.metrics.log(self.step, validation, advance=False)
            metrics.update(validation)
        return metrics

    def _validation_missing(self) -> bool:
        """Whether to validate the weights the run starts from: the start weights with
        ``val_before_train``; after a resume, when validation was due at the checkpoint's step and
        the interrupted run did not log it (it runs after the checkpoint is written)."""
        if self.step == 0:
            return self.cfg.trainer.val_before_train
        return self._due(self.cfg.trainer.val_freq) and self.step not in self.metrics.validated

    def _due(self, freq: int) -> bool:
        """Whether a thing done every `freq` steps (0: at the end only) is due after this step."""
        return self.step == self.cfg.trainer.total_steps or (freq > 0 and self.step % freq == 0)

    def save(self) -> Path:
        """Write a complete checkpoint of the current step."""
        staging = checkpoint.staging_dir(self.run_dir, self.step)
        ray.get([learner.save.remote(str(staging)) for learner in self.graph.learners])
        state = checkpoint.TrainerState(
            step=self.step,
            weight_version=self.weights.version,
            order=checkpoint.order_of(self.cfg, len(self.examples)),
        )
        return checkpoint.publish(staging, state, self.cfg.trainer.save_limit)

    def run(self, on_step_end: StepHook | None = None) -> None:
        """Train until ``trainer.total_steps``; ``on_step_end(trainer, step, metrics)`` after each step."""
        try:
            if self.val_examples and self._validation_missing():
                self.metrics.log(self.step, self.run_validation(), advance=False)
            while self.step < self.cfg.trainer.total_steps:
                metrics = self.train_step()
                if on_step_end is not None:
                    on_step_end(self, self.step, metrics)
            while self._loads:
                self.weights.collect(self._loads.popleft())
        finally:
            self.metrics.close()

    def shutdown(self) -> None:
        """Stop the actors."""
        self.graph.shutdown()
