"""`bench/gpu_check.py --dry-run` runs its whole code path on CPU as a bare GPU node would run it:
with Ray, vLLM, verl, flash-attn and Pillow unimportable, and writes every report section."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT

# Each blocked name raises ImportError on import, as on a node where it is not installed.
BARE_NODE = """
import runpy, sys
for name in ("ray", "vllm", "verl", "flash_attn", "PIL"):
    sys.modules[name] = None
sys.argv = ["bench/gpu_check.py", "--dry-run", "--out", sys.argv[1]]
runpy.run_path("bench/gpu_check.py", run_name="__main__")
"""


def test_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "tmp"
    subprocess.run([sys.executable, "-c", BARE_NODE, str(out)], cwd=ROOT, check=True, timeout=300)
    report = json.loads((out / "gpu_check.json").read_text())
    for section in ("environment", "workload", "learner", "projection", "step", "merge", "merge_agreement"):
        assert section in report, section
    assert report["dry_run"] and report["environment"]["verl"].startswith("shim")
    learner = report["learner"]
    assert learner["configured_layout"] == "packed"  # configs/math.yaml: learner.padding_free
    assert set(learner["layouts"]) == {"packed", "padded"}
    for run in learner["layouts"].values():
        assert set(run["memory"]) >= {"logprob", "forward_backward", "optimizer_step"}
        # On CPU there are no allocator statistics: null, never a made-up figure.
        assert all(row["peak_allocated_gb"] is None for row in run["memory"].values())
        assert all(seconds > 0 for seconds in run["seconds"]["per_phase_median"].values())
        assert run["throughput"]["forward_backward_tokens_per_s"] > 0
    packed, padded = learner["layouts"]["packed"], learner["layouts"]["padded"]
    # The same samples: as many real tokens, padding only in the padded rows.
    assert packed["tokens"] == padded["tokens"] == packed["token_slots"] < padded["token_slots"]
    assert packed["padding_share"] == 0 < padded["padding_share"]
    assert report["projection"]["per_rank_gb"] is None
    step = report["step"]
    assert step["learner_ranks"] == 4 and step["rollout"]["workload"]["engines"] == 4  # configs/math.yaml
    for row in step["rows"].values():
        assert row["pipelined"]["step_s"] <= row["strict"]["step_s"]
        assert row["phases_s"]["learner"] == step["learner_s"] > 0
    merge = report["merge"]
    assert merge["per_shape"] and all(v >= 0 for v in merge["projected_whole_merge"].values())
    assert report["merge_agreement"]["max_abs_diff"] is None
    text = (out / "gpu_check.md").read_text()
    assert text.startswith("# GPU check") and "## Step projection" in text
