"""Merges of tiny Qwen2.5-VL checkpoints end to end: every method writes a sharded checkpoint that
loads in transformers (and, for AMM, in vLLM's CPU backend) and follows the treatment policy;
bad inputs stop the merge before anything is written, naming the tensor and the expert.

The base is the tiny model re-saved with tied word embeddings (no `lm_head.weight`) in two
shards; the experts perturb it, except that `chart` left the vision tower untouched (a zero
task vector there). They are saved as training runs, in different shardings.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import ray
import torch
from helpers import fill_checkpoint
from huggingface_hub import save_torch_state_dict
from PIL import Image
from safetensors.torch import load_file, save_file

from tiny_r1v.config import load_config
from tiny_r1v.merge import METHODS, PROVENANCE, REPORT, MergeConfig, MergeError, merge
from tiny_r1v.merge.safetensors_io import INDEX, MODEL_FILES, CheckpointReader
from tiny_r1v.merge.sources import resolve

EXPERTS = ("math", "chart", "ocr")
FAST = ["wudi.steps=5", "amm.steps=5", "shard_size_mb=2", "device=cpu"]


@dataclass(frozen=True)
class Inputs:
    base: Path
    runs: Path
    base_state: dict[str, torch.Tensor]
    expert_states: dict[str, dict[str, torch.Tensor]]

    def config(self, output: Path, *overrides: str) -> MergeConfig:
        experts = ", ".join(f"{{name: {name}, path: {self.runs / name}}}" for name in EXPERTS)
        return load_config(
            MergeConfig, None, [f"base={self.base}", f"experts=[{experts}]", f"output={output}", *FAST, *overrides]
        )


def save_model(state: dict[str, torch.Tensor], like: Path, out: Path, shard_bytes: int | None) -> Path:
    """A model directory: `like`'s non-weight files and `state`, one file or sharded with an index."""
    shutil.copytree(like, out, ignore=shutil.ignore_patterns("*.safetensors", INDEX))
    if shard_bytes is None:
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    else:
        save_torch_state_dict(state, out, max_shard_size=shard_bytes)
    return out


@pytest.fixture(scope="module")
def inputs(tiny_model_dir, tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("merge_inputs")
    state = load_file(tiny_model_dir / "model.safetensors")
    del state["lm_head.weight"]
    total = sum(t.numel() * t.element_size() for t in state.values())
    base = save_model(state, tiny_model_dir, root / "base", shard_bytes=total * 6 // 10)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    assert len(CheckpointReader(base, "base").weight_files) == 2
    experts = {}
    for k, (name, shard_bytes) in enumerate(zip(EXPERTS, (total // 3, total * 6 // 10, None), strict=True)):
        g = torch.Generator().manual_seed(k)
        experts[name] = {
            tensor: value
            if name == "chart" and tensor.startswith("visual.")
            else value + 2e-3 * torch.randn(value.shape, generator=g)
            for tensor, value in state.items()
        }
        step = root / "runs" / name / "checkpoints" / "step-000002"
        save_model(experts[name], base, step / "model", shard_bytes)
        (fill_checkpoint(step) / "trainer_state.json").write_text("{}")
    return Inputs(base, root / "runs", state, experts)


@pytest.fixture(scope="module", params=sorted(METHODS))
def merged(request, inputs, tmp_path_factory) -> tuple[str, Path, dict]:
    method = request.param
    cfg = inputs.config(tmp_path_factory.mktemp(method) / "out", f"method={method}")
    provenance = merge(cfg, *resolve(cfg, EXPERTS))
    return method, Path(cfg.output), provenance


def test_output_layout_report_and_provenance(merged, inputs):
    method, out, provenance = merged
    index = json.loads((out / INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and shards[-1] == f"model-{len(shards):05d}-of-{len(shards):05d}.safetensors"
    assert set(CheckpointReader(out, "out").tensors) == set(index["weight_map"]) == set(inputs.base_state)
    copied = {p.name for p in inputs.base.iterdir() if p.name in MODEL_FILES}
    assert {"config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"} <= copied
    assert all((out / name).read_bytes() == (inputs.base / name).read_bytes() for name in copied)
    assert not list(out.parent.glob("*.merge-tmp"))

    report = json.loads((out / REPORT).read_text())
    assert [entry["name"] for entry in report] == list(CheckpointReader(inputs.base, "base").tensors)
    assert provenance == json.loads((out / PROVENANCE).read_text())
    assert provenance["method"] == method and provenance["tied_word_embeddings"] is True
    assert provenance["parameters"] == json.loads(json.dumps(provenance["config"][method]))
    assert [entry["name"] for entry in provenance["inputs"]] == ["base", *EXPERTS]
    assert all(len(entry["sha256"]) == 64 and entry["files"] for entry in provenance["inputs"])
    assert {"check", "hash", "merge", "read", "compute", "write_wait", "finish", "total"} <= set(provenance["seconds"])
    assert provenance["memory_mb"]["peak_rss"] > 0
    assert provenance["bytes"]["written"] == sum(t.numel() * 4 for t in inputs.base_state.values())


def test_loads_in_transformers_and_follows_the_policy(merged, inputs):
    from transformers import Qwen2_5_VLForConditionalGeneration

    method, out, _ = merged
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied

    result = {name: CheckpointReader(out, "out").read(name) for name in inputs.base_state}
    treatments = {entry["name"]: entry for entry in json.loads((out / REPORT).read_text())}
    for name, w0 in inputs.base_state.items():
        entry = treatments[name]
        taus = [state[name] - w0 for state in inputs.expert_states.values() if not torch.equal(state[name], w0)]
        assert entry["experts"] == [e for e in EXPERTS if not torch.equal(inputs.expert_states[e][name], w0)]
        if entry["treatment"] == "mean":  # the same float32 operations: equal to the bit
            assert torch.equal(result[name], w0 + torch.stack(taus).mean(0)), name
        elif method == "task_arithmetic":
            assert torch.equal(result[name], w0 + 0.3 * torch.stack(taus).sum(0)), name
        else:
            assert entry["treatment"] == "merge" and not torch.equal(result[name], w0)
    assert {e["treatment"] for e in treatments.values()} == {"merge", "mean"}
    assert all(e["experts"] == ["math", "ocr"] for n, e in treatments.items() if n.startswith("visual."))


def test_vision_switch_keeps_the_base_tower(inputs, tmp_path):
    cfg = inputs.config(tmp_path / "out", "method=task_arithmetic", "vision=base", "hash_inputs=false")
    merge(cfg, *resolve(cfg, EXPERTS))
    reader = CheckpointReader(tmp_path / "out", "out")
    for name, w0 in inputs.base_state.items():
        assert torch.equal(reader.read(name), w0) == name.startswith("visual."), name


def bad_expert(inputs: Inputs, out: Path, edit) -> Path:
    state = dict(inputs.expert_states["ocr"])
    edit(state)
    return save_model(state, inputs.base, out, shard_bytes=None)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("model.norm.weight"), "expert 'bad' lacks tensor 'model.norm.weight'"),
        (
            lambda s: s.update({"visual.extra.weight": torch.ones(2)}),
            "expert 'bad' has tensor 'visual.extra.weight', which the base lacks",
        ),
        (
            lambda s: s.update({"model.layers.1.self_attn.q_proj.bias": torch.ones(127)}),
            "tensor 'model.layers.1.self_attn.q_proj.bias': expert 'bad' has shape [127], the base [128]",
        ),
        (
            lambda s: s.update({"visual.merger.ln_q.weight": torch.ones(128, dtype=torch.float16)}),
            "tensor 'visual.merger.ln_q.weight': expert 'bad' has dtype torch.float16, the base torch.float32",
        ),
    ],
    ids=["missing", "extra", "shape", "dtype"],
)
def test_mismatched_expert_stops_before_writing(inputs, tmp_path, edit, message):
    bad = bad_expert(inputs, tmp_path / "bad", edit)
    cfg = inputs.config(tmp_path / "out")
    with pytest.raises(MergeError) as err:
        merge(cfg, *resolve(cfg, ["math", str(bad)]))
    assert message in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no output, no temporary directory


def test_unmatched_tensor_name_stops_before_writing(inputs, tmp_path):
    extra = {"model.layers.0.mlp.experts.weight": torch.ones(2, 2)}
    base = save_model({**inputs.base_state, **extra}, inputs.base, tmp_path / "base", shard_bytes=None)
    expert = bad_expert(inputs, tmp_path / "expert", lambda s: s.update(extra))
    cfg = load_config(MergeConfig, None, [f"base={base}", f"output={tmp_path / 'out'}", *FAST])
    with pytest.raises(MergeError, match=r"'model.layers.0.mlp.experts.weight' matches no rule"):
        merge(cfg, *resolve(cfg, [str(expert)]))
    assert not (tmp_path / "out").exists()


def test_non_finite_result_stops_the_merge_and_leaves_nothing(inputs, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight"
    bad = bad_expert(inputs, tmp_path / "bad", lambda s: s.update({name: torch.full_like(s[name], float("inf"))}))
    cfg = inputs.config(tmp_path / "out", "method=task_arithmetic")
    with pytest.raises(MergeError, match=f"tensor '{name}' \\(merge, task_arithmetic\\): .*NaN or inf"):
        merge(cfg, *resolve(cfg, ["math", str(bad)]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_existing_output_is_kept_unless_overwrite(inputs, tmp_path):
    (tmp_path / "out").mkdir()
    cfg = inputs.config(tmp_path / "out", "method=task_arithmetic")
    with pytest.raises(MergeError, match="exists"):
        merge(cfg, *resolve(cfg, EXPERTS))
    cfg = inputs.config(tmp_path / "out", "method=task_arithmetic", "overwrite=true")
    merge(cfg, *resolve(cfg, EXPERTS))
    assert (tmp_path / "out" / INDEX).is_file()


@pytest.mark.vllm
@pytest.mark.parametrize("merged", ["amm"], indirect=True)  # one vLLM load is enough
def test_amm_merge_loads_and_generates_in_vllm(merged, tiny_config, ray_local):
    _, out, _ = merged
    from transformers import AutoProcessor

    from tiny_r1v.protocol import Prompt
    from tiny_r1v.trainer.actors import RolloutWorker

    processor = AutoProcessor.from_pretrained(out)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
        add_generation_prompt=True,
    )
    # In an actor: the session's vLLM engine holds vLLM's in-process state in this process.
    worker = ray.remote(RolloutWorker).remote(replace(tiny_config, model=replace(tiny_config.model, path=str(out))))
    try:
        generation = ray.get(worker.generate.remote([Prompt("x", text, (Image.new("RGB", (56, 56)),))], 0, 0))
        completions = generation.completions
    finally:
        ray.kill(worker)
    assert len(completions) == tiny_config.rollout.n and all(c.token_ids for c in completions)
