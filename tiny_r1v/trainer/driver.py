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
from tiny_r1v.data import Example, render_prompt
from tiny_r1v.learner.worker import shard_for_rank
from tiny_r1v.protocol import Completion, Prompt, TrainSample
from tiny_r1v.rewards.completions import Reference
from tiny_r1v.timing import timed
from tiny_r1v.trainer import checkpoint
from tiny_r1v.trainer.actors import ActorGraph
from tiny_r1v.trainer.metrics import MetricsLogger
from tiny_r1v.trainer.sampler import step_indices
from tiny_r1v.trainer.weights import WeightSync

logger = logging.getLogger(__name__)

# A restarting rollout worker rebuilds its engine (tens of seconds on CPU): retry patiently.
_RETRY_PAUSE_S = 2.0
_MAX_ROLLOUT_RETRIES = 60

StepHook = Callable[["Driver", int, dict[str, float]], None]


def _split_into(items: Sequence, parts: int) -> list[Sequence]:
    """``items`` in at most ``parts`` contiguous pieces of equal size (the last may be shorter)."""
    size = -(-len(items) // parts)
    return [items[i : i + size] for i in range(0, len(items), size)]


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
        self.weights = WeightSync(self.graph.learners, self.graph.rollouts, version)
        if start is not None:
            self.weights.load_all()

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
            prompts.append(render_prompt(self.processor, example, self.cfg.data.prompt_format, uid))
            references[uid] = Reference(task=example.task, answer=example.answer)
        return prompts, references

    def _rollout(self, prompts: list[Prompt], step: int, greedy: bool = False) -> tuple[list[Completion], int]:
        """Completions of every prompt, each from the current weights; returns the restarts needed."""
        chunks = _split_into(prompts, len(self.graph.rollouts))
        # Prompt j of the step is sampling slot step * batch + j, however the batch is split.
        slots = [step * len(prompts) + i * len(chunks[0]) for i in range(len(chunks))]
        seed = self.cfg.rollout.seed
        workers = self.graph.rollouts
        pending = {i: workers[i].generate.remote(chunks[i], seed, slots[i], greedy) for i in range(len(chunks))}
        results: dict[int, list[Completion]] = {}
        restarts = 0
        while pending:
            index, ref = pending.popitem()
            worker = self.graph.rollouts[index]
            try:
                completions = ray.get(ref)
                if all(c.weight_version == self.weights.version for c in completions):
                    results[index] = completions
                    continue
                # Restarted since the last sync, so it holds the start weights: update it.
                self.weights.catch_up(worker)
            except (RayActorError, ActorUnavailableError) as err:
                logger.warning("rollout worker %d failed (%s); retrying once Ray has restarted it", index, err)
                time.sleep(_RETRY_PAUSE_S)
            restarts += 1
            if restarts > _MAX_ROLLOUT_RETRIES:
                raise RuntimeError(f"rollout workers failed {restarts} times in step {step}; giving up")
            pending[index] = worker.generate.remote(chunks[index], seed, slots[index], greedy)
        return [c for i in range(len(chunks)) for c in results[i]], restarts

    def _train(self, samples: list[TrainSample]) -> dict[str, float]:
        mini = self.cfg.samples_per_update()
        ranks = len(self.graph.learners)
        results = ray.get(
            [
                learner.train_step.remote(shard_for_rank(samples, rank, ranks, mini))
                for rank, learner in enumerate(self.graph.learners)
            ]
        )
        # Loss terms are per-rank averages (their mean is the global one); the gradient norm is
        # already global; a maximum is the largest of the ranks'.
        return {
            key: float((np.max if key.endswith("_max") else np.mean)([r[key] for r in results])) for key in results[0]
        }

    def run_validation(self) -> dict[str, float]:
        """Greedy completions of the validation set from the current weights, scored (`val/*`)."""
        timings: dict[str, float] = {}
        with timed(timings, "time/validation"):
            keyed = [(f"val:{i}", example) for i, example in enumerate(self.val_examples)]
            prompts, references = self._prompts_of(keyed)
            completions, _ = self._rollout(prompts, self.step, greedy=True)
            metrics = ray.get(self.graph.scorer.validation_metrics.remote(completions, references))
        return {**metrics, **timings}

    # ------------------------------------------------------------------ loop

    def train_step(self) -> dict[str, float]:
        """One iteration; returns its metrics (also logged), its validation's too when one ran."""
        step = self.step
        timings: dict[str, float] = {}
        with timed(timings, "time/step"):
            prompts, references = self._prompts(step)
            with timed(timings, "time/rollout"):
                completions, restarts = self._rollout(prompts, step)
            with timed(timings, "time/reward"):
                scored = ray.get(self.graph.scorer.score.remote(completions, references))
            by_uid = {p.uid: p for p in prompts}
            samples = [
                TrainSample(prompt=by_uid[c.uid], response_ids=c.token_ids, advantage=a, rollout_logprobs=c.logprobs)
                for c, a in zip(completions, scored.advantages, strict=True)
            ]
            with timed(timings, "time/learner"):
                learner_metrics = self._train(samples)
            with timed(timings, "time/sync"):
                sync = self.weights.advance()
            sync["sync/seconds"] = timings["time/sync"]
            self.step += 1
        tokens = sum(len(c.token_ids) for c in completions)
        metrics = {
            **scored.metrics,
            **{f"actor/{k}" if not k.startswith(("time/", "rollout/")) else k: v for k, v in learner_metrics.items()},
            **sync,
            **timings,
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
        finally:
            self.metrics.close()

    def shutdown(self) -> None:
        """Stop the actors."""
        self.graph.shutdown()
