"""The evaluation driver: reuse cached pairs, generate the rest on Ray, score, write the report.

Each model with work left gets one Ray actor holding its own vLLM engine (`ModelEvaluator`); up
to `parallel_slots` actors run at once and each works through its benchmarks one call at a
time. The driver scores every benchmark's responses with the training reward functions in a
timeout-safe process pool and saves them as soon as they arrive, so an interrupted run loses at
most the pairs in flight. Ray starts only when something is left to generate.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiny_r1v.config import to_dict
from tiny_r1v.console import ray_init_options
from tiny_r1v.device import compute_dtype, resolve_device
from tiny_r1v.eval import cache
from tiny_r1v.eval.config import EvalConfig
from tiny_r1v.eval.generate import Generation
from tiny_r1v.eval.inputs import Benchmark, ModelSource
from tiny_r1v.eval.metrics import SampleRecord, Summary, table
from tiny_r1v.eval.report import write_report
from tiny_r1v.rewards import ScorerPool
from tiny_r1v.rewards.completions import Reference, score_texts

logger = logging.getLogger(__name__)

Pair = tuple[str, str]
"""(model name, benchmark name)."""


@dataclass(frozen=True)
class EvalResult:
    rows: list[Summary]
    """The table: per model, its benchmarks then its average."""
    records: dict[Pair, list[SampleRecord]]
    """Every pair's per-sample records."""
    computed: list[Pair]
    """Pairs generated in this run."""
    reused: list[Pair]
    """Pairs read back from earlier runs' files."""
    files: list[Path]
    """The report files written."""


def engine_dtype(cfg: EvalConfig) -> str:
    """The dtype the engines compute in (`auto` resolved): it changes the responses."""
    return str(compute_dtype(cfg.dtype, resolve_device(cfg.device))).removeprefix("torch.")


def pair_settings(cfg: EvalConfig, model: ModelSource, benchmark: Benchmark) -> dict[str, Any]:
    """Everything that shapes a pair's records: what the cache key is computed from."""
    return {
        "model": {"dir": str(model.model_dir), "fingerprint": model.fingerprint},
        "benchmark": {"digest": benchmark.digest, "examples": len(benchmark.examples)},
        "prompt": to_dict(cfg.prompt),
        "decoding": to_dict(cfg.decoding),
        "max_response_length": cfg.engine.max_response_length,
        "dtype": engine_dtype(cfg),
        "format_weight": cfg.reward.format_weight,
    }


def describe_decoding(cfg: EvalConfig) -> str:
    """One line for the report: how every model's responses were produced."""
    d = cfg.decoding
    how = "greedy" if d.greedy else f"temperature {d.temperature}, top_p {d.top_p}, {d.n} samples, seed {d.seed}"
    return (
        f"Decoding: {how}; at most {cfg.engine.max_response_length} tokens; prompt format "
        f"{cfg.prompt.prompt_format}; {engine_dtype(cfg)}."
    )


def parallel_slots(max_parallel: int | None, gpu: bool, gpus: float, tensor_parallel_size: int, models: int) -> int:
    """How many model engines run at once: as many as the GPUs hold (one on CPU, where an engine
    uses every core it is given), capped by `max_parallel` and the number of models."""
    fits = max(1, int(gpus // tensor_parallel_size)) if gpu else 1
    return max(1, min(max_parallel if max_parallel is not None else fits, models))


def score(
    pool: ScorerPool, cfg: EvalConfig, model: str, benchmark: Benchmark, generations: Sequence[Generation]
) -> list[SampleRecord]:
    """Generations -> records, scored by the task's reward functions (SPEC §1) as in training."""
    examples = {example.uid: example for example in benchmark.examples}
    references = [Reference(task=examples[g.id].task, answer=examples[g.id].answer) for g in generations]
    texts = [g.response for g in generations]
    scores = score_texts(pool, texts, references, cfg.prompt.prompt_format, cfg.reward.format_weight)
    return [
        SampleRecord(
            model=model,
            benchmark=benchmark.name,
            id=g.id,
            sample=g.sample,
            task=reference.task,
            prompt=g.prompt,
            response=g.response,
            answer=reference.answer,
            tokens=g.tokens,
            finish_reason=g.finish_reason,
            reward={"accuracy": s.accuracy, "format": s.format, "total": s.total},
            correct=s.accuracy == 1.0,
        )
        for g, reference, s in zip(generations, references, scores, strict=True)
    ]


def run_eval(cfg: EvalConfig, models: Sequence[ModelSource], benchmarks: Sequence[Benchmark]) -> EvalResult:
    """Evaluate every model on every benchmark, reusing finished pairs; writes the report."""
    out = Path(cfg.output_dir)
    records: dict[Pair, list[SampleRecord]] = {}
    keys: dict[Pair, tuple[str, dict[str, Any]]] = {}
    todo: dict[str, list[Benchmark]] = {}
    for model in models:
        for benchmark in benchmarks:
            pair = (model.name, benchmark.name)
            settings = pair_settings(cfg, model, benchmark)
            keys[pair] = cache.cache_key(settings), settings
            expected = len(benchmark.examples) * cfg.decoding.n
            found = cache.load(cache.samples_path(out, *pair), keys[pair][0], expected)
            if found is None:
                todo.setdefault(model.name, []).append(benchmark)
            else:
                records[pair] = found
    reused = list(records)
    logger.info("%d of %d model/benchmark pairs reused from %s", len(reused), len(keys), out)

    if todo:
        with ScorerPool(cfg.reward.num_workers, cfg.reward.timeout_s) as pool:

            def finish(model: ModelSource, benchmark: Benchmark, generations: list[Generation]) -> None:
                pair = (model.name, benchmark.name)
                records[pair] = score(pool, cfg, model.name, benchmark, generations)
                key, settings = keys[pair]
                cache.save(cache.samples_path(out, *pair), key, settings, records[pair])

            by_name = {model.name: model for model in models}
            generate_on_ray(cfg, [(by_name[name], benchmarks_left) for name, benchmarks_left in todo.items()], finish)

    rows = table(records, [m.name for m in models], [b.name for b in benchmarks])
    settings = {
        "decoding": to_dict(cfg.decoding),
        "prompt": to_dict(cfg.prompt),
        "max_response_length": cfg.engine.max_response_length,
        "dtype": engine_dtype(cfg),
        "reward": to_dict(cfg.reward),
        "models": {m.name: str(m.model_dir) for m in models},
        "benchmarks": {b.name: str(b.path) for b in benchmarks},
    }
    files = write_report(out, rows, settings, describe_decoding(cfg))
    computed = [pair for pair in keys if pair not in reused]
    return EvalResult(rows=rows, records=records, computed=computed, reused=reused, files=files)


Finish = Callable[[ModelSource, Benchmark, list[Generation]], None]


def generate_on_ray(cfg: EvalConfig, jobs: Sequence[tuple[ModelSource, Sequence[Benchmark]]], finish: Finish) -> None:
    """Generate each job's benchmarks in an engine actor; `finish` receives each benchmark's
    generations as they arrive (in the driver, so it may write files). An actor done with its
    model takes the next queued model that it serves alike (equal `ModelSource.serving`),
    loading its weights in place, instead of a new actor starting an engine."""
    import ray

    from tiny_r1v.eval.generate import ModelEvaluator

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), **ray_init_options())
    gpu = resolve_device(cfg.device).type == "cuda"
    resources = ray.cluster_resources()
    tp = cfg.engine.tensor_parallel_size
    slots = parallel_slots(cfg.max_parallel, gpu, resources.get("GPU", 0.0), tp, len(jobs))
    # On CPU the engines split the cores; Ray sets OMP_NUM_THREADS, which sizes vLLM's thread
    # pool, to the actor's share.
    cpus = 1.0 if gpu else resources.get("CPU", 1.0) / slots
    actor_cls = ray.remote(ModelEvaluator).options(num_cpus=cpus, num_gpus=float(tp) if gpu else 0)
    # Put once: every model's actor reads the same benchmark.
    shared: Mapping[str, ray.ObjectRef] = {b.name: ray.put(b.examples) for _, benchmarks in jobs for b in benchmarks}
    queue = deque((model, list(benchmarks)) for model, benchmarks in jobs)
    running: dict[ray.ObjectRef, tuple[Any, ModelSource, list[Benchmark], float]] = {}
    alive: list[Any] = []

    def submit(actor: Any, model: ModelSource, left: list[Benchmark]) -> None:
        call = actor.generate.remote(shared[left[0].name], str(model.model_dir))
        running[call] = (actor, model, left, time.perf_counter())

    try:
        while queue or running:
            while queue and len(running) < slots:  # one call in flight per actor
                model, left = queue.popleft()
                logger.info("starting an engine for model %s (%s)", model.name, model.model_dir)
                alive.append(actor_cls.remote(cfg, str(model.model_dir)))
                submit(alive[-1], model, left)
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, model, left, start = running.pop(ref)
            generations = ray.get(ref)
            logger.info(
                "model %s on %s: %d responses, %.1f s after submission (engine start included for "
                "a model's first benchmark)",
                model.name,
                left[0].name,
                len(generations),
                time.perf_counter() - start,
            )
            if left[1:]:
                submit(actor, model, left[1:])  # the engine works on while the driver scores
            elif (follower := next((job for job in queue if job[0].serving == model.serving), None)) is not None:
                # A model served alike: its weights into this engine instead of a new engine.
                queue.remove(follower)
                logger.info("loading model %s into the engine of model %s", follower[0].name, model.name)
                submit(actor, *follower)
            else:
                ray.kill(actor)
                alive.remove(actor)
            finish(model, left[0], generations)
    finally:
        # Also on failure: an engine whose call raised (say, a prompt vLLM rejects) is still alive.
        for actor in alive:
            ray.kill(actor)
