"""Bad input to `launch/amm.py` is refused before Ray starts (exit status 2), naming the culprit,
and changes nothing that exists: outputs onto or around inputs, one checkpoint twice, damaged
shards, a model without weights, a changed input under an interrupted merge, unknown names."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import yaml
from helpers import fill_checkpoint, launcher, snapshot

from tiny_r1v.config import load_config
from tiny_r1v.merge import MergeConfig, MergeError, merge
from tiny_r1v.merge.journal import JOURNAL
from tiny_r1v.merge.runner import check, staging_path
from tiny_r1v.merge.sources import resolve
from tiny_r1v.merge.synthetic import lm_shapes, write_checkpoint

SHAPES = lm_shapes(layers=2, hidden=64, intermediate=128, kv_dim=32)  # float32: about 0.4 MB
STEP = "checkpoints/step-000030"


def amm_main(argv: list[str]) -> int:
    return launcher("amm").main(argv)


@pytest.fixture
def root(tmp_path) -> Path:
    """base/ (model), runA/ (a training run with one complete checkpoint, its metrics), other/
    (model), and amm.yaml naming the base and both experts."""
    write_checkpoint(tmp_path / "base", SHAPES)
    step = fill_checkpoint(tmp_path / "runA" / STEP)
    write_checkpoint(step / "model", SHAPES, expert=0)
    (step / "trainer_state.json").write_text(json.dumps({"step": 30, "weight_version": 30, "order": {}}))
    (tmp_path / "runA" / "metrics.jsonl").write_text('{"step": 30}\n')
    write_checkpoint(tmp_path / "other", SHAPES, expert=1)
    experts = [{"name": "runA", "path": str(tmp_path / "runA")}, {"name": "other", "path": str(tmp_path / "other")}]
    config = {"base": str(tmp_path / "base"), "experts": experts, "device": "cpu", "method": "task_arithmetic"}
    (tmp_path / "amm.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def refused(root: Path, capsys, *argv: str) -> str:
    """Run launch/amm.py's main; assert it refuses (2) and changes nothing; its message."""
    before = snapshot(root)
    assert amm_main(["--config", str(root / "amm.yaml"), *argv]) == 2
    assert snapshot(root) == before
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_overwrite_onto_an_experts_run_directory_is_refused(root, capsys):
    err = refused(root, capsys, "--experts", "runA,other", "--out", str(root / "runA"), "overwrite=true")
    assert f"output {root / 'runA'} is the directory of expert 'runA'" in err


def test_output_inside_an_input_is_refused_with_or_without_overwrite(root, capsys):
    for extra in ([], ["overwrite=true"]):
        err = refused(root, capsys, "--experts", "runA,other", "--out", str(root / "runA" / "merged"), *extra)
        assert f"output {root / 'runA' / 'merged'} lies inside the directory of expert 'runA' ({root / 'runA'})" in err


def test_output_holding_an_input_is_refused(root, capsys):
    err = refused(root, capsys, "--experts", "runA,other", "--out", str(root), "overwrite=true")
    assert f"output {root} contains the directory of the base ({root / 'base'})" in err


def test_overwrite_replaces_only_a_previous_merge(root, capsys):
    (root / "notes").mkdir()
    (root / "notes" / "thesis.tex").write_text("years of work")
    err = refused(root, capsys, "--experts", "runA,other", "--out", str(root / "notes"), "overwrite=true")
    assert f"output {root / 'notes'} holds thesis.tex, not a previous merge's output" in err


def test_one_checkpoint_under_two_names_is_refused(root, capsys):
    model = root / "runA" / STEP / "model"
    err = refused(root, capsys, "--experts", f"runA,{model}", "--out", str(root / "out"))
    assert f"experts 'runA' and '{model}' are the same checkpoint ({model})" in err


def test_truncated_header_is_named(root, capsys):
    shard = next((root / "other").glob("*.safetensors"))
    header_size = struct.unpack("<Q", shard.read_bytes()[:8])[0]
    with open(shard, "r+b") as f:
        f.truncate(8 + header_size // 2)
    err = refused(root, capsys, "--experts", "runA,other", "--out", str(root / "out"))
    assert f"{shard}: truncated safetensors file" in err


def test_unparsable_header_is_named(root, capsys):
    shard = next((root / "other").glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[8:12] = b"{{{{"
    shard.write_bytes(bytes(data))
    err = refused(root, capsys, "--experts", "runA,other", "--out", str(root / "out"))
    assert f"{shard}: unreadable safetensors header (JSONDecodeError" in err


def test_truncated_shard_data_is_found_before_the_merge_naming_file_and_tensor(root, capsys):
    shard = next((root / "other").glob("*.safetensors"))
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 4)
    err = refused(root, capsys, "--experts", "runA,other", "--out", str(root / "out"))
    assert f"{shard}: truncated: tensor 'model.norm.weight' ends at byte" in err


def test_config_without_weights_is_named(root, capsys):
    for shard in (root / "other").glob("*.safetensors"):
        shard.unlink()
    (root / "other" / "model.safetensors.index.json").unlink()
    err = refused(root, capsys, "--experts", "runA,other", "--out", str(root / "out"))
    assert f"expert 'other': model directory {root / 'other'} is incomplete: no weights" in err


def test_unknown_method_and_expert_are_named(root, capsys):
    assert "method: must be one of ['amm', 'task_arithmetic'" in refused(root, capsys, "--method", "slerp")
    assert "expert 'physics' is neither a name in the config" in refused(root, capsys, "--experts", "physics")


class Interrupt(BaseException):
    """Stands for a kill: anything but a MergeError leaves the temporary directory."""


def interrupted_merge(root: Path, *overrides: str) -> Path:
    """A merge of runA and other into root/out stopped after three tensors; its temporary dir."""
    cfg = load_config(MergeConfig, root / "amm.yaml", [f"output={root / 'out'}", "shard_size_mb=1", *overrides])

    class StopAfterThree:
        def __init__(self, **_: object) -> None:
            self.count = 0

        def update(self, n: int) -> None:
            self.count += n
            if self.count >= 3:
                raise Interrupt

        def close(self) -> None: ...

    with pytest.raises(Interrupt):
        merge(cfg, *resolve(cfg, ["runA", "other"]), progress=StopAfterThree)
    tmp = staging_path(root / "out")
    assert (tmp / JOURNAL).is_file()
    return tmp


@pytest.mark.parametrize("hashed", [True, False])
def test_a_changed_input_under_an_interrupted_merge_is_named(root, capsys, hashed):
    tmp = interrupted_merge(root, f"hash_inputs={str(hashed).lower()}")
    shard = next((root / "other").glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor: same size
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    err = refused(
        root,
        capsys,
        "--experts",
        "runA,other",
        "--out",
        str(root / "out"),
        "shard_size_mb=1",
        f"hash_inputs={str(hashed).lower()}",
    )
    changed = "sha256" if hashed else "mtime_ns"
    assert (
        f"{tmp} holds an interrupted merge of other inputs or settings (inputs.other.files.{shard.name}.{changed}:"
        in err
    )
    assert f"to start over, remove {tmp} or pass restart=true" in err


def test_a_changed_setting_under_an_interrupted_merge_is_named(root, capsys):
    tmp = interrupted_merge(root)
    err = refused(root, capsys, "--experts", "runA,other", "--out", str(root / "out"), "shard_size_mb=1", "method=ties")
    assert (
        f"{tmp} holds an interrupted merge of other inputs or settings (settings.method: task_arithmetic -> ties)"
        in err
    )


def test_the_launchers_check_takes_the_journals_device(root):
    """The merge that wrote the journal may have run on a GPU node this launcher does not have:
    the launcher checks everything else and leaves the device to the merge."""
    tmp = interrupted_merge(root)
    head, *shards = (tmp / JOURNAL).read_bytes().split(b"\n")
    record = json.loads(head)
    record["key"]["settings"]["device"] = "cuda"
    (tmp / JOURNAL).write_bytes(b"\n".join([json.dumps(record).encode(), *shards]))
    cfg = load_config(MergeConfig, root / "amm.yaml", [f"output={root / 'out'}", "shard_size_mb=1"])
    check(cfg, *resolve(cfg, ["runA", "other"]))  # no refusal
    changed = load_config(MergeConfig, root / "amm.yaml", [f"output={root / 'out'}", "shard_size_mb=1", "method=ties"])
    with pytest.raises(MergeError, match=r"settings\.method: task_arithmetic -> ties"):
        check(changed, *resolve(changed, ["runA", "other"]))


def test_a_directory_at_the_aside_path_that_is_no_merge_output_is_refused(root, capsys):
    aside = root / "out.merge-old"
    aside.mkdir()
    (aside / "notes.txt").write_text("mine")
    err = refused(root, capsys, "--experts", "runA,other", "--out", str(root / "out"))
    assert f"{aside} exists and is not a previous merge's output" in err
