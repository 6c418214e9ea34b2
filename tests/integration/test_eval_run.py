"""`launch/eval.py` end to end on tiny models: Ray actors with vLLM engines, the training rewards,
tables that match a hand count of the saved per-sample outputs, determinism, and reuse of
finished results (no engine, files untouched) by a re-run.

One evaluation run (two models, two benchmarks) starts one engine actor, which loads the second
model's weights in place after the first; the determinism check repeats one model on the
session's shared engine and the second on a fresh engine of its own; every other test reads the
run's outputs or re-runs without an engine.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from helpers import ROOT, fill_checkpoint, launcher
from PIL import Image

from tiny_r1v.config import load_config
from tiny_r1v.eval import EvalConfig
from tiny_r1v.eval import runner as eval_runner
from tiny_r1v.eval.generate import Generation, ModelEvaluator, engine_model, sampling
from tiny_r1v.eval.inputs import resolve_benchmarks, resolve_models
from tiny_r1v.rewards import score
from tiny_r1v.trainer import checkpoint

pytestmark = pytest.mark.vllm

CONFIG = ROOT / "configs" / "eval.yaml"
MODELS = ("a", "b")
BENCHMARKS = ("colours", "sums")
# The tiny model on vLLM's CPU backend, as the quickstart sizes it; short responses keep it quick.
OVERRIDES = [
    "device=cpu",
    "dtype=float32",
    "max_parallel=1",
    "models=[]",
    "benchmarks=[]",
    "prompt.max_prompt_length=256",
    "prompt.min_pixels=3136",
    "prompt.max_pixels=12544",
    "engine.max_response_length=24",
    "engine.kv_cache_memory_mb=64",
    "engine.enforce_eager=true",
    "reward.num_workers=1",
]


def write_benchmarks(root: Path) -> tuple[Path, Path]:
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (56, 56), (200, 30, 30)).save(root / "images" / "red.png")
    Image.new("RGB", (84, 56), (30, 30, 200)).save(root / "images" / "blue.png")
    colours = root / "colours.jsonl"
    colours.write_text(
        "".join(
            json.dumps(row) + "\n"
            for row in [
                {"question": "What colour is this?", "answer": "red", "task": "vqa", "images": ["images/red.png"]},
                {
                    "question": "Which colour fills the image?",
                    "answer": "blue",
                    "task": "vqa",
                    "images": ["images/blue.png"],
                },
                {"question": "Name the colour.", "answer": "red", "task": "vqa", "images": ["images/red.png"]},
            ]
        )
    )
    sums = root / "sums.jsonl"
    sums.write_text(
        "".join(
            json.dumps(row) + "\n"
            for row in [
                {"id": "two", "question": "What is 1 + 1?", "answer": "2", "task": "math", "images": []},
                {"id": "ten", "question": "What is 7 + 3?", "answer": "10", "task": "math", "images": []},
                {"id": "frac", "question": "Halve 3.", "answer": "\\frac{3}{2}", "task": "math", "images": []},
                {"id": "big", "question": "What is 12 * 12?", "answer": "144", "task": "math", "images": []},
            ]
        )
    )
    return colours, sums


def write_run(run: Path, seed: int) -> Path:
    """A training run directory with one complete checkpoint, as the trainer writes it."""
    from tiny_r1v.models.tiny import build_tiny_model

    staging = checkpoint.staging_dir(run, 3)
    build_tiny_model(staging / "model", seed=seed)
    fill_checkpoint(staging)
    return checkpoint.publish(staging, checkpoint.TrainerState(3, 3, {"dataset_size": 8}), keep=2) / "model"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir) -> dict:
    root = tmp_path_factory.mktemp("eval")
    colours, sums = write_benchmarks(root / "bench")
    run = root / "run-b"
    b_model = write_run(run, seed=1)
    args = [
        "--models",
        f"a={tiny_model_dir},b={run}",
        "--benchmarks",
        f"{colours},{sums}",
        "--config",
        str(CONFIG),
        "--out",
        str(root / "out"),
        *OVERRIDES,
    ]
    return {"root": root, "out": root / "out", "args": args, "b_model": b_model, "colours": colours, "sums": sums}


@pytest.fixture(scope="module")
def first_run(setup, ray_local) -> dict:
    """The one run that starts engines: launch/eval.py's main() under the session's Ray instance;
    its log messages are kept under "log"."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("tiny_r1v.eval")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert launcher("eval").main(setup["args"]) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return {**setup, "log": messages}


def read_samples(out: Path, model: str, benchmark: str) -> list[dict]:
    path = out / "samples" / model / f"{benchmark}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def hand_count(samples: Sequence[dict]) -> dict[str, float]:
    tokens = sorted(s["tokens"] for s in samples)
    middle = len(tokens) // 2
    return {
        "samples": len(samples),
        "accuracy": sum(s["reward"]["accuracy"] for s in samples) / len(samples),
        "pass_at_k": statistics.fmean(
            any(s["correct"] for s in samples if s["id"] == uid) for uid in {s["id"] for s in samples}
        ),
        "format": sum(s["reward"]["format"] for s in samples) / len(samples),
        "mean_tokens": sum(tokens) / len(tokens),
        "median_tokens": tokens[middle] if len(tokens) % 2 else (tokens[middle - 1] + tokens[middle]) / 2,
        "truncated": sum(s["finish_reason"] == "length" for s in samples) / len(samples),
    }


def test_samples_are_complete_and_scored_by_the_training_rewards(first_run):
    out = first_run["out"]
    expected_ids = {"colours": ["colours-1", "colours-2", "colours-3"], "sums": ["two", "ten", "frac", "big"]}
    answers = {"colours": ["red", "blue", "red"], "sums": ["2", "10", "\\frac{3}{2}", "144"]}
    for model in MODELS:
        for benchmark in BENCHMARKS:
            samples = read_samples(out, model, benchmark)
            assert [s["id"] for s in samples] == expected_ids[benchmark]
            assert [s["answer"] for s in samples] == answers[benchmark]
            for s in samples:
                assert (s["model"], s["benchmark"], s["sample"]) == (model, benchmark, 0)
                assert 1 <= s["tokens"] <= 24 and s["finish_reason"] in ("stop", "length")
                assert (s["finish_reason"] == "length") == (s["tokens"] == 24)
                assert s["prompt"].startswith("<|im_start|>")
                assert ("<|vision_start|>" in s["prompt"]) == (benchmark == "colours")
                expected = score(s["task"], s["response"], s["answer"], prompt_format="boxed", format_weight=0.1)
                assert s["reward"] == {
                    "accuracy": expected.accuracy,
                    "format": expected.format,
                    "total": expected.total,
                }
                assert s["correct"] == (expected.accuracy == 1.0)


def test_tables_equal_a_hand_count_of_the_samples(first_run):
    out = first_run["out"]
    payload = json.loads((out / "results.json").read_text())
    rows = {(row["model"], row["benchmark"]): row for row in payload["rows"]}
    assert list(rows) == [(m, b) for m in MODELS for b in (*BENCHMARKS, "average")]
    csv_rows = {(r["model"], r["benchmark"]): r for r in csv.DictReader((out / "results.csv").open())}
    markdown = (out / "results.md").read_text()
    for model in MODELS:
        counts = [hand_count(read_samples(out, model, b)) for b in BENCHMARKS]
        averaged = {key: statistics.fmean(c[key] for c in counts) for key in counts[0]}
        averaged["samples"] = sum(c["samples"] for c in counts)
        for benchmark, expected in [*zip(BENCHMARKS, counts, strict=True), ("average", averaged)]:
            row = rows[model, benchmark]
            for key, value in expected.items():
                assert row[key] == pytest.approx(value, abs=1e-12), (model, benchmark, key)
                assert float(csv_rows[model, benchmark][key]) == pytest.approx(value, abs=1e-12)
            assert (
                f"| {model} | {benchmark} | {expected['samples']} | {100 * expected['accuracy']:.1f} "
                f"| {100 * expected['pass_at_k']:.1f} | {100 * expected['format']:.1f} "
                f"| {expected['mean_tokens']:.1f} | {expected['median_tokens']:.1f} "
                f"| {100 * expected['truncated']:.1f} |"
            ) in markdown
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert payload["settings"]["models"]["b"] == str(first_run["b_model"].resolve())  # the run's checkpoint


def test_greedy_outputs_repeat_on_another_engine_and_differ_across_models(first_run, tiny_model_dir, vllm_engine):
    """A second run of model `a`, in this process on the session's engine: the same outputs."""
    out = first_run["out"]
    cfg = load_config(EvalConfig, CONFIG, OVERRIDES)
    evaluator = ModelEvaluator(cfg, str(tiny_model_dir), llm=vllm_engine)
    for benchmark in resolve_benchmarks(cfg, [str(first_run["colours"]), str(first_run["sums"])]):
        again = [asdict(g) for g in evaluator.generate(benchmark.examples)]
        saved = read_samples(out, "a", benchmark.name)
        assert again == [{key: s[key] for key in again[0]} for s in saved]
    responses = {m: [s["response"] for b in BENCHMARKS for s in read_samples(out, m, b)] for m in MODELS}
    assert responses["a"] != responses["b"]  # the check could tell two models apart


def test_a_model_loaded_into_the_first_models_engine_answers_as_on_a_fresh_engine(first_run):
    """Model `b` shares model `a`'s config and processor: the run loaded it into a's engine (one
    engine started); a fresh engine built for `b` gives the same outputs."""
    import ray

    assert sum("starting an engine" in m for m in first_run["log"]) == 1
    assert "loading model b into the engine of model a" in first_run["log"]
    cfg = load_config(EvalConfig, CONFIG, OVERRIDES)
    fresh_engine = ray.remote(ModelEvaluator).remote(cfg, str(first_run["b_model"]))  # a process of its own
    try:
        for benchmark in resolve_benchmarks(cfg, [str(first_run["colours"]), str(first_run["sums"])]):
            fresh = [asdict(g) for g in ray.get(fresh_engine.generate.remote(benchmark.examples))]
            saved = read_samples(first_run["out"], "b", benchmark.name)
            assert fresh == [{key: s[key] for key in fresh[0]} for s in saved]
    finally:
        ray.kill(fresh_engine)


def test_sampled_decoding_gives_k_seeded_samples_per_prompt_and_pass_at_k(first_run, tiny_model_dir, vllm_engine):
    """k = 3 samples at temperature 1 on the session's engine, scored and summarised as a run does."""
    from tiny_r1v.eval.metrics import summarize
    from tiny_r1v.rewards import ScorerPool

    def sampled(seed: int) -> EvalConfig:
        return load_config(
            EvalConfig, CONFIG, [*OVERRIDES, "decoding.temperature=1.0", "decoding.n=3", f"decoding.seed={seed}"]
        )

    cfg = sampled(7)
    (benchmark,) = resolve_benchmarks(cfg, [str(first_run["sums"])])
    generations = ModelEvaluator(cfg, str(tiny_model_dir), llm=vllm_engine).generate(benchmark.examples)
    assert [(g.id, g.sample) for g in generations] == [(e.uid, k) for e in benchmark.examples for k in range(3)]
    again = ModelEvaluator(cfg, str(tiny_model_dir), llm=vllm_engine).generate(benchmark.examples)
    other = ModelEvaluator(sampled(8), str(tiny_model_dir), llm=vllm_engine).generate(benchmark.examples)
    assert [g.response for g in again] == [g.response for g in generations]  # seeded
    assert [g.response for g in other] != [g.response for g in generations]
    assert len({g.response for g in generations}) > len(benchmark.examples)  # samples of a prompt differ

    pool = ScorerPool(1, 5.0)
    try:
        records = eval_runner.score(pool, cfg, "a", benchmark, generations)
    finally:
        pool.close()
    row = summarize("a", benchmark.name, records)
    solved = {r.id for r in records if r.correct}
    assert row.samples == 3 * len(benchmark.examples)
    assert row.pass_at_k == len(solved) / len(benchmark.examples)


def test_rerun_reuses_results_without_an_engine(first_run, monkeypatch, capsys):
    out = first_run["out"]
    files = sorted((out / "samples").rglob("*"))
    before = {path: path.stat().st_mtime_ns for path in files}
    table = (out / "results.json").read_text()

    def no_engines(*args, **kwargs):
        raise AssertionError("a re-run with the same settings started engines")

    monkeypatch.setattr(eval_runner, "generate_on_ray", no_engines)
    assert launcher("eval").main(first_run["args"]) == 0
    assert "0 pairs evaluated, 4 reused" in capsys.readouterr().out
    assert sorted((out / "samples").rglob("*")) == files
    assert {path: path.stat().st_mtime_ns for path in files} == before
    assert (out / "results.json").read_text() == table


def replay(calls: list, source: Path):
    """A stand-in for `generate_on_ray` that records its jobs and hands back the generations saved
    in `source`, so re-planning and re-scoring are checked without an engine."""

    def generate_on_ray(cfg, jobs, finish):
        calls.append([(model.name, [b.name for b in benchmarks]) for model, benchmarks in jobs])
        for model, benchmarks in jobs:
            for benchmark in benchmarks:
                finish(
                    model,
                    benchmark,
                    [
                        Generation(s["id"], s["sample"], s["prompt"], s["response"], s["tokens"], s["finish_reason"])
                        for s in read_samples(source, model.name, benchmark.name)
                    ],
                )

    return generate_on_ray


def test_partial_or_other_settings_results_are_recomputed(first_run, monkeypatch, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(first_run["out"], out)
    cfg = load_config(EvalConfig, CONFIG, [*OVERRIDES, f"output_dir={out}"])
    args = first_run["args"]
    models = resolve_models(cfg, args[1].split(","))
    benchmarks = resolve_benchmarks(cfg, args[3].split(","))
    calls: list = []
    monkeypatch.setattr(eval_runner, "generate_on_ray", replay(calls, first_run["out"]))

    partial = out / "samples" / "b" / "sums.jsonl"
    partial.write_text(partial.read_text().splitlines(keepends=True)[0])  # as if cut off
    result = eval_runner.run_eval(cfg, models, benchmarks)
    assert calls == [[("b", ["sums"])]]
    assert result.computed == [("b", "sums")] and len(result.reused) == 3
    assert read_samples(out, "b", "sums") == read_samples(first_run["out"], "b", "sums")

    calls.clear()
    weighted = replace(cfg, reward=replace(cfg.reward, format_weight=0.5))  # changes every total reward
    result = eval_runner.run_eval(weighted, models, benchmarks)
    assert calls == [[(m, list(BENCHMARKS)) for m in MODELS]] and result.reused == []
    for s in read_samples(out, "a", "colours"):
        assert s["reward"]["total"] == pytest.approx(0.5 * s["reward"]["accuracy"] + 0.5 * s["reward"]["format"])


def test_engine_gets_the_decoding_and_engine_settings():
    from vllm.sampling_params import SamplingType

    from tiny_r1v.rollout.engine import RolloutEngine

    sampled = load_config(
        EvalConfig,
        CONFIG,
        [
            "decoding.temperature=0.7",
            "decoding.n=3",
            "decoding.seed=5",
            "engine.max_response_length=77",
            "prompt.max_prompt_length=3000",
            "dtype=float32",
            "engine.kv_cache_memory_mb=64",
        ],
    )
    model = engine_model(sampled, "/models/x")
    assert (model.path, model.dtype, model.trust_remote_code) == ("/models/x", torch.float32, False)
    params = RolloutEngine(None, sampling(sampled)).sampling
    assert (params.n, params.temperature, params.max_tokens) == (3, 0.7, 77)
    assert params.sampling_type != SamplingType.GREEDY
    greedy = RolloutEngine(None, sampling(load_config(EvalConfig, CONFIG))).sampling
    assert (greedy.n, greedy.sampling_type) == (1, SamplingType.GREEDY)
