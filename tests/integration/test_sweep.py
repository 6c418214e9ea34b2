"""The sweep runner through the real actor graph on CPU: lipo and grpo × 1 seed × 2 steps on the
tiny model; a grid interrupted after its first run, then a run that fails after its first step,
then the grid again: the finished run untouched, the failed one resumed from its checkpoint; the
sampled held-out evaluation (reused when run again) and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import RED_ROW, ROOT, launcher, snapshot, write_red_dataset

from tiny_r1v.config import TrainConfig, load_config
from tiny_r1v.evidence import sweep, sweep_eval
from tiny_r1v.evidence.sweep_report import REPORT_FILES, write_report

pytestmark = pytest.mark.vllm


def write_sweep(tmp: Path, model_dir: Path) -> Path:
    data = write_red_dataset(tmp / "data", [RED_ROW] * 4)
    overrides = [
        f"model.path={model_dir}",
        "rollout.n=2",
        "rollout.max_response_length=12",
        "learner.num_workers=1",  # two ranks are tested in test_actor_graph
        "learner.global_batch_size=2",
        "learner.micro_batch_size=2",
        "learner.lr=1e-3",
        "trainer.rollout_batch_size=4",
        "trainer.total_steps=2",
        "trainer.save_freq=1",
        "trainer.save_limit=1",
        "trainer.val_freq=1",
        "trainer.val_before_train=true",
        "trainer.loggers=[jsonl]",
    ]
    config = {
        "base_config": str(ROOT / "configs" / "quickstart.yaml"),
        "output_dir": str(tmp / "sweep"),
        "overrides": overrides,
        "seeds": [1],
        "eval_samples": 2,
        "methods": [
            {"name": "lipo", "overrides": ["algorithm.adv_estimator=lipo"]},
            {"name": "grpo", "overrides": ["algorithm.adv_estimator=grpo"]},
        ],
        "tasks": [{"name": "red", "task": "vqa", "train_files": [str(data)], "val_files": [str(data)]}],
    }
    path = tmp / "sweep.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


class Interrupted(Exception):
    """Stands for the sweep process dying between two runs."""


class Crash(Exception):
    """Stands for a run failing after its first step."""


def test_interrupted_grid_resumes_without_repeating_a_run_and_reaches_the_report(ray_local, tiny_model_dir, tmp_path):
    cfg = sweep.load_sweep(write_sweep(tmp_path, tiny_model_dir))
    first, second = sweep.plan(cfg)
    assert (first.method, second.method) == ("lipo", "grpo")
    first_dir, second_dir = sweep.run_dir(cfg, first), sweep.run_dir(cfg, second)
    assert first_dir == tmp_path / "sweep" / "red" / "lipo" / "seed-1"

    def stop_after_first(run: sweep.Run, outcome: sweep.Outcome) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        sweep.run_grid(cfg, on_run_end=stop_after_first)
    assert sweep.finished(first_dir, 2) and not second_dir.exists()
    digest = snapshot(first_dir / "metrics.jsonl")

    def crash_after_step_1(driver, step: int, metrics: dict) -> None:
        if step == 1:
            raise Crash("the run died")

    outcomes = sweep.run_grid(cfg, run_one=lambda train: sweep.run_training(train, crash_after_step_1))
    assert outcomes == {first: "skipped", second: "failed"}
    assert "Crash: the run died" in (second_dir / sweep.ERROR_FILE).read_text()
    assert (second_dir / "checkpoints" / "step-000001").is_dir()
    failed = {r.method: r for r in sweep.collect(cfg)}["grpo"]
    assert failed.status == "failed" and "the run died" in failed.error

    assert sweep.run_grid(cfg) == {first: "skipped", second: "finished"}
    assert snapshot(first_dir / "metrics.jsonl") == digest  # the finished run was not repeated
    rows = sweep.metrics_rows(second_dir)
    assert [r["step"] for r in rows if "reward/mean" in r] == [1, 2]  # resumed at step 1, once each
    assert [r["step"] for r in rows if "val/samples" in r] == [0, 1, 2]
    assert not (second_dir / sweep.ERROR_FILE).exists()
    # Each run is a normal training run: its config and checkpoints where launch/lipo.py expects them.
    saved = load_config(TrainConfig, second_dir / "config.yaml")
    assert (saved.algorithm.adv_estimator, saved.data.seed, saved.rollout.seed) == ("grpo", 1, 1)

    result = sweep_eval.evaluate(cfg)["red"]
    models = ["base", "lipo.seed-1", "grpo.seed-1"]
    assert sorted(result.computed) == sorted((m, "red") for m in models) and not result.reused
    # Sampled as the rollouts sample: 2 samples of each of the 4 held-out prompts per model.
    assert all(len(records) == 8 for records in result.records.values())
    assert len({tuple(r.response for r in records) for records in result.records.values()}) > 1
    assert sorted(sweep_eval.evaluate(cfg)["red"].reused) == sorted(result.computed)  # nothing generated again

    records = sweep_eval.with_sampled(cfg, sweep.collect(cfg))
    assert [(r.method, r.status) for r in records] == [("base", "finished"), ("lipo", "finished"), ("grpo", "finished")]
    assert all(r.sampled is not None and r.sampled["mean_tokens"] > 0 for r in records)
    paths = write_report(sweep.report_dir(cfg), records, cfg.reference_method)
    assert [p.name for p in paths] == [*REPORT_FILES, "accuracy-vs-tokens-sampled.png", "curves-red.png"]
    payload = json.loads((sweep.report_dir(cfg) / "sweep.json").read_text())
    rows = [(row["method"], row["seeds"], row["sampled_runs"]) for row in payload["rows"]]
    assert rows == [("base", 1, 1), ("lipo", 1, 1), ("grpo", 1, 1)]
    assert payload["runs"][2]["equal_accuracy"] != "never"  # grpo reaches its own final accuracy
    # The launcher's report-only mode reads the same runs (no Ray needed).
    assert launcher("sweep").main(["--config", str(tmp_path / "sweep.yaml"), "--report-only"]) == 0
