"""`launch/lipo.py` as users run it: bad input stops before Ray starts (`ray job submit`: test_ray_jobs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import RED_ROW, ROOT, write_red_dataset

VENV_BIN = Path(sys.executable).parent


def launch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "launch" / "lipo.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_bad_config_value_stops_before_anything_starts(tiny_model_dir):
    result = launch(f"model.path={tiny_model_dir}", "rollout.n=1")
    assert result.returncode == 2
    assert "rollout.n: group size must be >= 2, got 1" in result.stderr
    assert "Started a local Ray instance" not in result.stderr


def test_missing_model_directory_is_named(tmp_path):
    result = launch(f"model.path={tmp_path / 'nowhere'}")
    assert result.returncode == 2
    assert "model.path: no model directory" in result.stderr


def test_bad_dataset_row_names_file_and_row(tiny_model_dir, tmp_path):
    data = write_red_dataset(tmp_path, [RED_ROW, {**RED_ROW, "answer": ""}])
    result = launch(f"model.path={tiny_model_dir}", f"data.train_files=[{data}]", "data.task=vqa")
    assert result.returncode == 2
    assert f"{data}, row 2" in result.stderr and "answer" in result.stderr
    assert "Started a local Ray instance" not in result.stderr


def test_bad_validation_row_names_file_and_row(tiny_model_dir, tmp_path):
    train = write_red_dataset(tmp_path / "train", [RED_ROW])
    val = write_red_dataset(tmp_path / "val", [RED_ROW, {**RED_ROW, "answer": ""}])
    result = launch(
        f"model.path={tiny_model_dir}", f"data.train_files=[{train}]", f"data.val_files=[{val}]", "data.task=vqa"
    )
    assert result.returncode == 2
    assert f"{val}, row 2" in result.stderr and "answer" in result.stderr
    assert "Started a local Ray instance" not in result.stderr


def test_a_new_run_over_an_earlier_runs_checkpoints_stops_before_anything_starts(tiny_model_dir, tmp_path):
    data = write_red_dataset(tmp_path / "data", [RED_ROW])
    (tmp_path / "out" / "old" / "checkpoints" / "step-000004").mkdir(parents=True)
    result = launch(
        f"model.path={tiny_model_dir}",
        f"data.train_files=[{data}]",
        "data.val_files=[]",
        "data.task=vqa",
        f"trainer.output_dir={tmp_path / 'out'}",
        "trainer.experiment_name=old",
    )
    assert result.returncode == 2
    assert "step-000004" in result.stderr and "pass --resume" in result.stderr
    assert "Started a local Ray instance" not in result.stderr
