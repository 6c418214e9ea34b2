"""`launch/lipo.py` as users run it: bad input stops before Ray starts; `ray job submit` trains."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def launch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "launch" / "lipo.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


def write_data(directory: Path, rows: list[dict]) -> Path:
    (directory / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (56, 56), (200, 30, 30)).save(directory / "images" / "red.png")
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


GOOD_ROW = {"question": "What colour?", "answer": "red", "task": "vqa", "images": ["images/red.png"]}


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
    data = write_data(tmp_path, [GOOD_ROW, {**GOOD_ROW, "answer": ""}])
    result = launch(f"model.path={tiny_model_dir}", f"data.train_files=[{data}]", "data.task=vqa")
    assert result.returncode == 2
    assert f"{data}, row 2" in result.stderr and "answer" in result.stderr
    assert "Started a local Ray instance" not in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_dashboard(port: int, timeout: float) -> None:
    """Block until the head's job server answers (it starts after `ray start` returns)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


@pytest.mark.vllm
def test_runs_as_a_ray_job_on_a_started_cluster(tiny_model_dir, tmp_path):
    data = write_data(tmp_path / "data", [GOOD_ROW, {**GOOD_ROW, "answer": "blue"}])
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    config["model"]["path"] = str(tiny_model_dir)
    config["data"].update(train_files=[str(data)], task="vqa")
    config["rollout"].update(n=2, max_response_length=8)
    config["learner"].update(global_batch_size=2, micro_batch_size=2)
    config["trainer"].update(rollout_batch_size=2, total_steps=1, output_dir=str(tmp_path / "out"))
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(config))

    # The venv's python runs the job; token auth is off on this throwaway local head.
    path = f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": path, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = _free_port(), _free_port()
    # Its own temp dir: `ray start` records its address in <temp>/ray_current_cluster, which a
    # later plain `ray.init()` on this machine would otherwise try to join after we stop it.
    # Short (unix socket paths are limited to ~107 bytes), so not under pytest's tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--port={gcs}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        _wait_for_dashboard(dashboard, timeout=180)
        submit = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
             "--", "python", str(ROOT / "launch" / "lipo.py"), "--config", str(config_path)],
            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
        )
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert "succeeded" in submit.stdout
        rows = (tmp_path / "out" / "quickstart" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(row)["step"] for row in rows] == [1]
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
