"""The driver: the only place that knows the iteration order.

One step: prompts → rollout workers (G samples each) → reward scorer (rewards, LIPO or GRPO
advantages) → learner ranks (old/ref log-probs, PPO updates) → weight sync to every rollout
worker. Every phase is timed; metrics go to the configured sinks; checkpoints are written every
``trainer.save_freq`` steps and at the end; the validation set is decoded greedily every
``trainer.val_freq`` steps and at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import ray
import yaml
from ray.exceptions import ActorUnavailableError, RayActorError
from transformers import AutoProcessor

from tiny_r1v.config import to_dict
from tiny_r1v.config.train import TrainConfig
from tiny_r1v.data import Example, build_messages
from tiny_r1v.learner.worker import shard_for_rank
from tiny_r1v.protocol import Completion, Prompt, TrainSample
from tiny_r1v.trainer import checkpoint
from tiny_r1v.trainer.actors import ActorGraph
from tiny_r1v.trainer.metrics import MetricsLogger
from tiny_r1v.trainer.sampler import step_indices
from tiny_r1v.trainer.scoring import Reference

logger = logging.getLogger(__name__)

# A restarting rollout worker rebuilds its engine (tens of seconds on CPU): retry patiently.
_RETRY_PAUSE_S = 2.0
_MAX_ROLLOUT_RETRIES = 60

StepHook = Callable[["Trainer", int, dict[str, float]], None]


def _chunks(items: Sequence, parts: int) -> list[Sequence]:
    size = -(-len(items) // parts)
    return [items[i : i + size] for i in range(0, len(items), size)]


class Trainer:
    """Runs LIPO/GRPO training steps on an actor graph (Ray must be initialised)."""

    def __init__(
        self, cfg: TrainConfig, examples: Sequence[Example], resume: bool = False, val_examples: Sequence[Example] = ()
    ) -> None:
        self.cfg = cfg
        self.examples = examples
        self.val_examples = val_examples
        self.run_dir = checkpoint.run_dir(cfg)
        self.processor = AutoProcessor.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        found = checkpoint.latest(self.run_dir) if resume else None
        if found is None:
            checkpoint.check_fresh(self.run_dir)
            self.step, self.weight_version, start = 0, 0, None
        else:
            start, state = found
            checkpoint.check_resumable(start, state, checkpoint.order_of(cfg, len(examples)))
            self.step, self.weight_version = state.step, state.weight_version
            logger.info("resuming from %s (step %d)", start, self.step)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        # Rollout workers always start from the configured model (version 0), also when resuming:
        # Ray rebuilds a restarted worker from these arguments, and a checkpoint directory may be
        # pruned by then. A worker on an older version is brought up to date from the learners.
        self.graph = ActorGraph(cfg, cfg.model.path, 0, None if start is None else str(start))
        self.weights_ref: ray.ObjectRef | None = None
        """The learners' weights of `weight_version` in the object store, once gathered."""
        self.metrics = MetricsLogger(
            self.run_dir, cfg.trainer.loggers, cfg.trainer.experiment_name, cfg.trainer.total_steps, self.step
        )
        if start is not None:
            self._load_rollouts()

    # ------------------------------------------------------------------ phases

    def _prompts(self, step: int) -> tuple[list[Prompt], dict[str, Reference]]:
        data = self.cfg.data
        indices = step_indices(len(self.examples), self.cfg.trainer.rollout_batch_size, step, data.seed, data.shuffle)
        # Unique within the step even when a batch spans two epochs and repeats an example.
        return self._prompts_of([(f"{step}:{slot}", self.examples[index]) for slot, index in enumerate(indices)])

    def _prompts_of(self, keyed: Sequence[tuple[str, Example]]) -> tuple[list[Prompt], dict[str, Reference]]:
        """Prompts (uid: key + the example's uid) and what their completions are scored against."""
        prompts, references = [], {}
        for key, example in keyed:
            uid = f"{key}:{example.uid}"
            text = self.processor.apply_chat_template(
                build_messages(example, self.cfg.data.prompt_format), add_generation_prompt=True, tokenize=False
            )
            prompts.append(Prompt(uid=uid, text=text, images=tuple(example.load_images())))
            references[uid] = Reference(task=example.task, answer=example.answer)
        return prompts, references

    def _rollout(self, prompts: list[Prompt], step: int, greedy: bool = False) -> tuple[list[Completion], int]:
        """Completions of every prompt, each from the current weights; returns the restarts needed."""
        chunks = _chunks(prompts, len(self.graph.rollouts))
        # Prompt j of the step samples with seed + step * batch + j, however the batch is split.
        seeds = [self.cfg.rollout.seed + step * len(prompts) + i * len(chunks[0]) for i in range(len(chunks))]
        workers = self.graph.rollouts
        pending = {i: workers[i].generate.remote(chunks[i], seeds[i], greedy) for i in range(len(chunks))}
        results: dict[int, list[Completion]] = {}
        restarts = 0
        while pending:
            index, ref = pending.popitem()
            worker = self.graph.rollouts[index]
            try:
                completions = ray.get(ref)
                if all(c.weight_version == self.weight_version for c in completions):
                    results[index] = completions
                    continue
                # Restarted since the last sync, so it holds the start weights: update it.
                ray.get(worker.load_weights.remote(self._weights(), self.weight_version))
            except (RayActorError, ActorUnavailableError) as err:
                logger.warning("rollout worker %d failed (%s); retrying once Ray has restarted it", index, err)
                time.sleep(_RETRY_PAUSE_S)
            restarts += 1
            if restarts > _MAX_ROLLOUT_RETRIES:
                raise RuntimeError(f"rollout workers failed {restarts} times in step {step}; giving up")
            pending[index] = worker.generate.remote(chunks[index], seeds[index], greedy)
        return [c for i in range(len(chunks)) for c in results[i]], restarts

    def _train(self, samples: list[TrainSample]) -> dict[str, float]:
        mini = self.cfg.learner.global_batch_size * self.cfg.rollout.n
        ranks = len(self.graph.learners)
        results = ray.get(
            [
                learner.train_step.remote(shard_for_rank(samples, rank, ranks, mini))
                for rank, learner in enumerate(self.graph.learners)
            ]
        )
        # Loss terms are per-rank averages; the gradient norm is already global.
        return {key: float(np.mean([r[key] for r in results])) for key in results[0]}

    def _weights(self) -> ray.ObjectRef:
        """The learners' current weights in the object store, gathered once per version."""
        if self.weights_ref is None:
            refs = [learner.packed_weights.remote() for learner in self.graph.learners]
            ray.get(refs[1:])  # every rank takes part in the gather; rank 0's result holds the weights
            self.weights_ref = refs[0]
        return self.weights_ref

    def _sync(self) -> dict[str, float]:
        """Full weights from the learners to every rollout worker through the object store."""
        self.weight_version += 1
        self.weights_ref = None
        return self._load_rollouts()

    def _load_rollouts(self) -> dict[str, float]:
        """Load the current weights into every rollout worker. One that fails meanwhile is left
        to Ray to restart: the next rollout finds it on an old version and loads it then."""
        weights = self._weights()
        calls = [worker.load_weights.remote(weights, self.weight_version) for worker in self.graph.rollouts]
        loads = []
        for index, call in enumerate(calls):
            try:
                loads.append(ray.get(call))
            except (RayActorError, ActorUnavailableError) as err:
                logger.warning("rollout worker %d failed while loading weights (%s)", index, err)
        return {
            "sync/bytes": max((load["bytes"] for load in loads), default=0),
            "sync/load_seconds": max((load["seconds"] for load in loads), default=0.0),
        }

    def validate(self) -> dict[str, float]:
        """Greedy completions of the validation set from the current weights, scored (`val/*`)."""
        start = time.perf_counter()
        prompts, references = self._prompts_of([(f"val:{i}", example) for i, example in enumerate(self.val_examples)])
        completions, _ = self._rollout(prompts, self.step, greedy=True)
        metrics = ray.get(self.graph.scorer.validate.remote(completions, references))
        return {**metrics, "time/validation": time.perf_counter() - start}

    # ------------------------------------------------------------------ loop

    def train_step(self) -> dict[str, float]:
        """One iteration; returns its metrics (also logged), its validation's too when one ran."""
        step = self.step
        timings: dict[str, float] = {}
        begin = time.perf_counter()

        prompts, references = self._prompts(step)
        start = time.perf_counter()
        completions, restarts = self._rollout(prompts, step)
        timings["time/rollout"] = time.perf_counter() - start

        start = time.perf_counter()
        scored = ray.get(self.graph.scorer.score.remote(completions, references))
        timings["time/reward"] = time.perf_counter() - start

        by_uid = {p.uid: p for p in prompts}
        samples = [
            TrainSample(prompt=by_uid[c.uid], response_ids=c.token_ids, advantage=a)
            for c, a in zip(completions, scored.advantages, strict=True)
        ]
        start = time.perf_counter()
        learner_metrics = self._train(samples)
        timings["time/learner"] = time.perf_counter() - start

        start = time.perf_counter()
        sync = self._sync()
        timings["time/sync"] = sync["sync/seconds"] = time.perf_counter() - start

        self.step += 1
        timings["time/step"] = time.perf_counter() - begin
        tokens = sum(len(c.token_ids) for c in completions)
        metrics = {
            **scored.metrics,
            **{f"actor/{k}" if not k.startswith("time/") else k: v for k, v in learner_metrics.items()},
            **sync,
            **timings,
            "perf/response_tokens": float(tokens),
            "perf/tokens_per_s": tokens / timings["time/step"],
            "perf/rollout_tokens_per_s": tokens / timings["time/rollout"],
            "rollout/restarts": float(restarts),
            "rollout/weight_version": float(self.weight_version),
        }
        self.metrics.log(self.step, metrics)
        if self._due(self.cfg.trainer.save_freq):
            self.save()
        # After the checkpoint, so that a failing validation loses no step; a row of its own.
        if self._due(self.cfg.trainer.val_freq) and self.val_examples:
            validation = self.validate()
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
            weight_version=self.weight_version,
            order=checkpoint.order_of(self.cfg, len(self.examples)),
        )
        return checkpoint.publish(staging, state, self.cfg.trainer.save_limit)

    def run(self, on_step_end: StepHook | None = None) -> None:
        """Train until ``trainer.total_steps``; ``on_step_end(trainer, step, metrics)`` after each step."""
        try:
            if self.val_examples and self._validation_missing():
                self.metrics.log(self.step, self.validate(), advance=False)
            while self.step < self.cfg.trainer.total_steps:
                metrics = self.train_step()
                if on_step_end is not None:
                    on_step_end(self, self.step, metrics)
        finally:
            self.metrics.close()

    def shutdown(self) -> None:
        """Stop the actors."""
        self.graph.shutdown()
