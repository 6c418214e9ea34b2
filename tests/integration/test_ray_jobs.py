"""Both entry points under `ray job submit` against a head started with `ray start --head`, as on
a cluster: the LIPO job trains a step, the AMM job merges in an actor of the job."""

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
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import RED_ROW, ROOT, write_red_dataset

from tiny_r1v.merge import PROVENANCE
from tiny_r1v.merge.synthetic import lm_shapes, write_checkpoint

VENV_BIN = Path(sys.executable).parent


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


def _head_logs(temp_dir: str) -> str:
    """The end of the head's own logs: why its job server stopped answering, when it did."""
    logs = Path(temp_dir) / "session_latest" / "logs"
    names = ("ray_process_exit.log", "dashboard.err", "dashboard.log", "dashboard_JobHead.log")
    return "".join(f"\n--- {logs / n}:\n{(logs / n).read_text()[-1500:]}" for n in names if (logs / n).is_file())


@pytest.fixture(scope="module")
def submit() -> Iterator:
    """A started head; yields `submit(*entry_point_args)` -> the finished `ray job submit`."""
    # The venv's python runs the jobs; token auth is off on this throwaway local head.
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
    }
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard, agent, agent_grpc, runtime_env, metrics = (_free_port() for _ in range(6))
    # Its own temp dir: `ray start` records its address in <temp>/ray_current_cluster, which a
    # later plain `ray.init()` on this machine would otherwise try to join after we stop it.
    # Short (unix socket paths are limited to ~107 bytes), so not under pytest's tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head = subprocess.Popen(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--temp-dir={temp_dir}",
            f"--port={gcs}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            # Free ports for the node's agents too: the defaults (52365 for the agent that runs jobs)
            # may be held by the session's own Ray instance, and a head whose agent cannot bind
            # answers every submission with "No available agent".
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--metrics-export-port={metrics}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def run(*args: str) -> subprocess.CompletedProcess:
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 120
        while True:
            result = subprocess.run(
                [str(VENV_BIN / "ray"), "job", "submit", "--address", address, "--", "python", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                cwd=ROOT,
            )
            # The job server answers before the head's agent that runs jobs has registered.
            if "No available agent to submit job" not in result.stderr or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + _head_logs(temp_dir)
        assert "succeeded" in result.stdout
        return result

    try:
        _wait_for_dashboard(dashboard, timeout=180)
        yield run
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.vllm
def test_lipo_trains_as_a_ray_job(submit, tiny_model_dir, tmp_path):
    data = write_red_dataset(tmp_path / "data", [RED_ROW, {**RED_ROW, "answer": "blue"}])
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    config["model"]["path"] = str(tiny_model_dir)
    config["data"].update(train_files=[str(data)], val_files=[str(data)], task="vqa")
    config["rollout"].update(n=2, max_response_length=8)
    config["learner"].update(num_workers=1, global_batch_size=2, micro_batch_size=2)  # 2 ranks: test_actor_graph
    config["trainer"].update(rollout_batch_size=2, total_steps=1, output_dir=str(tmp_path / "out"))
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(config))

    submit(str(ROOT / "launch" / "lipo.py"), "--config", str(config_path))
    rows = [json.loads(row) for row in (tmp_path / "out" / "quickstart" / "metrics.jsonl").read_text().splitlines()]
    # Validation of the start weights (step 0), then the step and its validation.
    assert [row["step"] for row in rows] == [0, 1, 1]
    assert "reward/mean" in rows[1] and rows[0]["val/samples"] == rows[2]["val/samples"] == 2


def test_amm_merges_as_a_ray_job(submit, tmp_path):
    shapes = lm_shapes(layers=1, hidden=64, intermediate=128, kv_dim=32)
    base = write_checkpoint(tmp_path / "base", shapes)
    experts = [str(write_checkpoint(tmp_path / name, shapes, expert=k)) for k, name in enumerate(("math", "ocr"))]
    out = tmp_path / "merged"
    result = submit(
        str(ROOT / "launch" / "amm.py"),
        "--experts",
        ",".join(experts),
        "--out",
        str(out),
        f"base={base}",
        "experts=[]",
        "amm.steps=3",
        "device=cpu",
        "hash_inputs=false",
    )
    assert "merged math, ocr into" in result.stdout
    provenance = json.loads((out / PROVENANCE).read_text())
    assert provenance["method"] == "amm" and provenance["tensors"]["merge"] == 7
