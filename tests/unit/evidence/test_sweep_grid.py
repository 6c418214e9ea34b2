"""The sweep's schema, grid, run directories, "finished" rule and grid loop, without Ray (the
runs are stand-ins that write metrics rows); the launcher's checks before Ray starts."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, launcher

from tiny_r1v.config import ConfigError
from tiny_r1v.config.loader import to_dict
from tiny_r1v.config.train import TrainConfig
from tiny_r1v.evidence import sweep, sweep_eval
from tiny_r1v.evidence.base import BaseConfig
from tiny_r1v.trainer.checkpoint import ExistingRunError

SHIPPED = ROOT / "configs" / "sweep.yaml"


def small(tmp_path: Path, **extra) -> sweep.SweepConfig:
    config = {
        "base_config": str(ROOT / "configs" / "quickstart.yaml"),
        "output_dir": str(tmp_path / "out"),
        "overrides": ["trainer.total_steps=2"],
        "seeds": [1, 2],
        "methods": [
            {"name": "lipo", "overrides": ["algorithm.adv_estimator=lipo"]},
            {"name": "grpo", "overrides": ["algorithm.adv_estimator=grpo"]},
        ],
        "tasks": [{"name": "t", "task": "ocr", "train_files": ["a.jsonl"], "val_files": ["b.jsonl"]}],
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(config))
    return sweep.load_sweep(path)


def test_shipped_sweep_is_every_method_on_ocr_and_lipo_grpo_on_chart_and_math():
    cfg = sweep.load_sweep(SHIPPED)  # validates although the model and data are not built here
    runs = sweep.plan(cfg)
    assert len(runs) == len(set(runs)) == 8 * 3 + 2 * 2 * 3
    assert Counter(r.task for r in runs) == {"ocr": 24, "chart": 6, "math": 6}
    assert {r.method for r in runs if r.task != "ocr"} == {"lipo", "grpo"}
    assert {r.seed for r in runs} == {1, 2, 3}
    dr = sweep.train_config(cfg, sweep.Run("ocr", "dr_grpo", 2))
    assert (dr.algorithm.adv_estimator, dr.algorithm.loss_agg_mode) == ("dr_grpo", "seq-mean-token-sum-norm")
    assert (dr.data.seed, dr.rollout.seed, dr.trainer.seed, dr.data.task) == (2, 2, 2, "ocr")
    assert dr.model.path == "outputs/evidence/warm-model"
    assert dr.data.image_position == BaseConfig().image_position  # prompted as the base learnt to read
    assert Path(dr.trainer.output_dir) / dr.trainer.experiment_name == Path("outputs/sweep/ocr/dr_grpo/seed-2")


def test_shipped_sweep_documents_every_key():
    text = SHIPPED.read_text()
    for key in (
        "base_config",
        "output_dir",
        "reference_method",
        "order",
        "eval_samples",
        "overrides",
        "seeds",
        "methods",
    ):
        line = next(line for line in text.splitlines() if line.startswith(f"{key}:"))
        assert "#" in line or key in ("overrides", "methods"), key
    for key in ("tasks", "grid", "name", "train_files", "val_files", "seeds"):
        assert f"{key}:" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"grid": [{"tasks": ["t"], "methods": ["ppo"]}]}, "grid[0]: unknown method 'ppo'"),
        ({"grid": [{"tasks": ["x"], "seeds": [9]}]}, "grid[0]: unknown task 'x', seed 9"),
        ({"overrides": ["data.seed=3"]}, "the sweep sets data.seed"),
        ({"methods": [{"name": "a", "overrides": ["trainer.output_dir=x"]}]}, "methods[0].overrides"),
        ({"methods": [{"name": "a"}, {"name": "a"}]}, "repeated: a"),
        ({"methods": [{"name": "a/b"}]}, "not a plain name"),
        ({"seeds": [1, 1]}, "seeds: must be unique"),
        ({"reference_method": "dapo"}, "'dapo' is not a method"),
        ({"tasks": [{"name": "t", "task": "ocr", "train_files": ["a"], "val_files": []}]}, "tasks[0].val_files"),
        ({"methods": [{"name": "base"}], "reference_method": "base"}, "'base' names the base model's row"),
        ({"eval_samples": -1}, "eval_samples: must be >= 0"),
    ],
)
def test_rules(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        small(tmp_path, **extra)


def test_a_bad_training_override_names_the_run(tmp_path):
    bad = {"name": "bad", "overrides": ["algorithm.adv_estimator=dr_grpo"]}
    cfg = small(tmp_path, methods=[bad], reference_method="bad")
    with pytest.raises(ConfigError, match=r"t/bad/seed-1: algorithm.loss_agg_mode"):
        sweep.train_config(cfg, sweep.plan(cfg)[0])


def test_grid_blocks_and_order(tmp_path):
    cfg = small(tmp_path, grid=[{"tasks": ["t"], "methods": ["grpo"], "seeds": [2]}, {"tasks": ["t"]}])
    assert [(r.method, r.seed) for r in sweep.plan(cfg)] == [("grpo", 2), ("lipo", 1), ("grpo", 1), ("lipo", 2)]
    cfg = small(tmp_path, order="task-method-seed")
    assert [(r.method, r.seed) for r in sweep.plan(cfg)] == [("lipo", 1), ("lipo", 2), ("grpo", 1), ("grpo", 2)]


def write_rows(directory: Path, rows: list[dict], tail: str = "") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


VAL = {"val/samples": 4, "val/reward/accuracy": 0.5, "val/length/mean": 9.0, "val/length/clip_frac": 0.0}


def test_finished_needs_the_final_steps_training_and_validation_rows(tmp_path):
    assert not sweep.finished(tmp_path / "none", 2)
    write_rows(tmp_path, [{"step": 0, **VAL}, {"step": 1, "reward/mean": 1.0}, {"step": 2, "reward/mean": 1.0}])
    assert not sweep.finished(tmp_path, 2)  # the final validation is missing
    write_rows(tmp_path, [{"step": 2, "reward/mean": 1.0}, {"step": 2, **VAL}], tail='{"step": 3, "rew')
    assert sweep.finished(tmp_path, 2)  # a line cut short is ignored
    assert not sweep.finished(tmp_path, 3)


def fake_run(fail: set[int]):
    """A stand-in for a training run: writes a finished run's rows, or raises for a seed in `fail`."""
    calls = []

    def run_one(cfg: TrainConfig) -> None:
        calls.append((cfg.algorithm.adv_estimator, cfg.trainer.seed))
        if cfg.trainer.seed in fail:
            raise RuntimeError(f"seed {cfg.trainer.seed} broke")
        steps = cfg.trainer.total_steps
        directory = Path(cfg.trainer.output_dir) / cfg.trainer.experiment_name
        write_rows(directory, [{"step": steps, "reward/mean": 1.0}, {"step": steps, **VAL}])

    return run_one, calls


def test_grid_skips_finished_runs_records_failures_and_goes_on(tmp_path):
    cfg = small(tmp_path)
    run_one, calls = fake_run(fail={1})
    outcomes = sweep.run_grid(cfg, run_one)
    assert list(outcomes.values()) == ["failed", "failed", "finished", "finished"]
    assert len(calls) == 4
    broken = sweep.run_dir(cfg, sweep.Run("t", "lipo", 1))
    assert "RuntimeError: seed 1 broke" in (broken / sweep.ERROR_FILE).read_text()
    assert [r.status for r in sweep.collect(cfg)] == ["failed", "failed", "finished", "finished"]
    # Again, with the failure gone: only the failed runs run, and their error files go.
    run_one, calls = fake_run(fail=set())
    assert list(sweep.run_grid(cfg, run_one).values()) == ["finished", "finished", "skipped", "skipped"]
    assert calls == [("lipo", 1), ("grpo", 1)]
    assert not (broken / sweep.ERROR_FILE).exists()


def test_a_run_that_returns_unfinished_is_a_failure(tmp_path):
    cfg = small(tmp_path, seeds=[1], methods=[{"name": "grpo", "overrides": ["algorithm.adv_estimator=grpo"]}])
    assert list(sweep.run_grid(cfg, lambda train: None).values()) == ["failed"]
    assert "lacks its final rows" in sweep.collect(cfg)[0].error


def test_launcher_names_missing_inputs_before_ray_starts(tmp_path, capsys):
    small(tmp_path, overrides=["trainer.total_steps=2", f"model.path={tmp_path / 'no-model'}"])
    assert launcher("sweep").main(["--config", str(tmp_path / "sweep.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"no model directory at {tmp_path / 'no-model'}" in err
    assert "data.train_files: no file a.jsonl" in err and "data.val_files: no file b.jsonl" in err


def test_a_run_made_by_another_grid_stops_the_sweep_naming_the_keys(tmp_path, capsys):
    cfg = small(tmp_path, seeds=[1])
    run = sweep.plan(cfg)[0]
    planned = [sweep.train_config(cfg, r) for r in sweep.plan(cfg)]
    stored = to_dict(planned[0])
    del stored["data"]["image_position"]  # a key the code added later, at its default: no change
    stored["trainer"]["verbose"] = True  # ignored: changes no result
    directory = sweep.run_dir(cfg, run)
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(stored))
    assert sweep.changed_runs(planned) == []
    stored["data"]["image_position"] = "last"
    stored["model"]["path"] = "elsewhere"
    (directory / "config.yaml").write_text(yaml.safe_dump(stored))
    (line,) = sweep.changed_runs(planned)
    assert f"{directory / 'config.yaml'}: made by another grid" in line
    assert "data.image_position 'last' -> 'first'" in line and "model.path 'elsewhere' -> " in line
    assert launcher("sweep").main(["--config", str(tmp_path / "sweep.yaml"), "--report-only"]) == 2
    assert "use another output_dir" in capsys.readouterr().err
    (directory / "config.yaml").write_text("data: {image_position: sideways}\n")
    assert "cannot be read as a training config" in sweep.changed_runs(planned)[0]


def test_a_run_cut_short_before_its_first_checkpoint_starts_over(tmp_path):
    order = {"dataset_size": 4}
    write_rows(tmp_path / "run", [{"step": 0, **VAL}])
    assert sweep.start_of(tmp_path / "run", order) is None  # step 0
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert (tmp_path / "run" / "metrics.jsonl.abandoned-1").is_file()
    assert sweep.start_of(tmp_path / "empty", order) is None
    # An incomplete checkpoint is left for a person to judge: the run fails, saying why.
    write_rows(tmp_path / "run", [{"step": 0, **VAL}])
    (tmp_path / "run" / "checkpoints" / "step-000001").mkdir(parents=True)
    with pytest.raises(ExistingRunError, match="nothing complete to resume from"):
        sweep.start_of(tmp_path / "run", order)


def test_a_missing_base_config_is_named(tmp_path):
    cfg = small(tmp_path, base_config=str(tmp_path / "nope.yaml"))  # the sweep config itself loads
    with pytest.raises(ConfigError, match=r"base_config: no training config file at .*nope.yaml"):
        sweep.train_config(cfg, sweep.plan(cfg)[0])


def test_sampled_figures_and_the_base_row_join_the_records(tmp_path):
    cfg = small(tmp_path, seeds=[1])
    lipo, grpo = sweep.plan(cfg)
    start = {"step": 0, **VAL}
    end = [{"step": 1, "reward/mean": 1.0}, {"step": 2, "reward/mean": 1.0, **VAL}]
    write_rows(sweep.run_dir(cfg, lipo), [start, *end])
    figures = {"accuracy": 0.25, "mean_tokens": 40.0, "truncated": 0.5}
    rows = [
        {"model": "base", "benchmark": "average", "accuracy": 0.5, "mean_tokens": 60.0, "truncated": 0.0},
        {"model": "lipo.seed-1", "benchmark": "t", "accuracy": 0.0, "mean_tokens": 0.0, "truncated": 0.0},
        {"model": "lipo.seed-1", "benchmark": "average", **figures},
    ]
    results = sweep_eval.eval_dir(cfg, "t") / "results.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"settings": {}, "rows": rows}))

    records = sweep_eval.with_sampled(cfg, sweep.collect(cfg))
    assert [(r.method, r.status) for r in records] == [
        ("base", "finished"),
        ("lipo", "finished"),
        ("grpo", "not started"),
    ]
    assert records[0].rows == (start,)  # the base's greedy figures: a finished run's step-0 validation
    assert records[0].sampled == {"accuracy": 0.5, "mean_tokens": 60.0, "truncated": 0.0}
    assert records[1].sampled == figures and records[2].sampled is None
    # With the sampled evaluation off, no old figure is read; the base row keeps its greedy figures.
    off = sweep_eval.with_sampled(replace(cfg, eval_samples=0), sweep.collect(cfg))
    assert [r.sampled for r in off] == [None] * 3 and off[0].rows == (start,)
