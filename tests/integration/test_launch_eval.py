"""`launch/eval.py`: bad input stops with exit status 2, naming it, before Ray or an engine starts."""

from __future__ import annotations

import subprocess
import sys

import helpers
import pytest
from helpers import RED_ROW, ROOT, write_red_dataset

from tiny_r1v.eval import runner as eval_runner

CONFIG = ROOT / "configs" / "eval.yaml"


@pytest.fixture
def launcher(monkeypatch):
    """launch/eval.py's main(), with evaluation itself (Ray, engines) made to fail if reached."""

    def run_eval(*args, **kwargs):
        raise AssertionError("bad input reached the evaluation")

    monkeypatch.setattr(eval_runner, "run_eval", run_eval)
    return helpers.launcher("eval").main


def test_missing_model_directory_fails_before_ray(tmp_path, tiny_model_dir):
    bench = write_red_dataset(tmp_path, [RED_ROW])
    missing = tmp_path / "no-such-model"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch" / "eval.py"),
            "--models",
            f"base={tiny_model_dir},lost={missing}",
            "--benchmarks",
            str(bench),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert f"model 'lost': no such directory {missing}" in result.stderr
    assert "Started a local Ray instance" not in result.stderr and not (tmp_path / "out").exists()


def test_missing_benchmark_file_is_named(launcher, tmp_path, tiny_model_dir, capsys):
    missing = tmp_path / "gone.jsonl"
    assert launcher(["--models", f"base={tiny_model_dir}", "--benchmarks", str(missing)]) == 2
    assert f"benchmark 'gone': no such file {missing}" in capsys.readouterr().err


def test_malformed_row_names_file_and_row(launcher, tmp_path, tiny_model_dir, capsys):
    good = write_red_dataset(tmp_path / "a", [RED_ROW])
    bad = write_red_dataset(tmp_path / "b", [RED_ROW, {**RED_ROW, "answer": " "}, {**RED_ROW, "task": "poetry"}])
    assert launcher(["--models", f"base={tiny_model_dir}", "--benchmarks", f"good={good},bad={bad}"]) == 2
    err = capsys.readouterr().err
    assert f"benchmark 'bad': {bad}, row 2, column 'answer': must not be empty" in err
    assert f"{bad}, row 3, column 'task': unknown task 'poetry'" in err


def test_run_directory_without_a_complete_checkpoint_is_named(launcher, tmp_path, capsys):
    bench = write_red_dataset(tmp_path, [RED_ROW])
    (tmp_path / "run" / "checkpoints" / "step-000002.tmp" / "model").mkdir(parents=True)
    assert launcher(["--models", str(tmp_path / "run"), "--benchmarks", str(bench)]) == 2
    assert "model 'run': " in capsys.readouterr().err


def test_bad_config_value_is_named(launcher, tmp_path, tiny_model_dir, capsys):
    bench = write_red_dataset(tmp_path, [RED_ROW])
    assert launcher(["--models", f"base={tiny_model_dir}", "--benchmarks", str(bench), "decoding.top_p=0"]) == 2
    assert "decoding.top_p: must be in (0, 1], got 0" in capsys.readouterr().err


def test_no_models_anywhere_is_named(launcher, tmp_path, capsys):
    bench = write_red_dataset(tmp_path, [RED_ROW])
    assert launcher(["--benchmarks", str(bench), "models=[]"]) == 2
    assert "no models: give --models" in capsys.readouterr().err


def test_more_images_than_the_engine_takes_is_named(launcher, tmp_path, tiny_model_dir, capsys):
    bench = write_red_dataset(
        tmp_path, [RED_ROW, {**RED_ROW, "id": "pair", "images": ["images/red.png"] * 2}], name="bench.jsonl"
    )
    assert launcher(["--models", f"base={tiny_model_dir}", "--benchmarks", str(bench)]) == 2
    assert (
        "benchmark 'bench': example 'pair' has 2 images, more than engine.max_images_per_prompt (1)"
        in capsys.readouterr().err
    )
