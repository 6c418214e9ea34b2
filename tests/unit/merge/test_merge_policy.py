"""The treatment policy (SPEC §3) on real Qwen2.5-VL tensor names, in both key layouts, and the
merge config and expert resolution."""

from __future__ import annotations

import pytest
import yaml
from helpers import ROOT, fill_checkpoint, stand_in_model
from safetensors import safe_open

from tiny_r1v.config import ConfigError, load_config, to_dict
from tiny_r1v.merge import RULES, MergeConfig, MergeError, assign
from tiny_r1v.merge.policy import Rule
from tiny_r1v.merge.sources import resolve

CONFIG = ROOT / "configs" / "amm.yaml"


@pytest.fixture(scope="module")
def saved_shapes(tiny_model_dir) -> dict[str, tuple[int, ...]]:
    """The tiny model's tensors as transformers 5.9 saves them (`model.*`, `visual.*`)."""
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}


def live_layout(name: str) -> str:
    """The same tensor under the live module names (`model.language_model.*`, `model.visual.*`)."""
    if name.startswith("visual."):
        return "model." + name
    return name.replace("model.", "model.language_model.", 1) if name.startswith("model.") else name


def expected_treatment(name: str, vision: str) -> str:
    if "visual." in name:
        linear = name.endswith(".weight") and any(p in name for p in ("qkv", "attn.proj", "_proj", "merger.mlp"))
        return {"mean": "mean", "base": "base", "merge": "merge" if linear else "mean"}[vision]
    linear = name.endswith("_proj.weight")
    return "merge" if linear else "mean"


@pytest.mark.parametrize("vision", ["mean", "merge", "base"])
@pytest.mark.parametrize("layout", ["saved", "live"])
def test_every_qwen25_vl_tensor_gets_its_spec_treatment(saved_shapes, layout, vision):
    shapes = saved_shapes if layout == "saved" else {live_layout(n): s for n, s in saved_shapes.items()}
    assignments = assign(shapes, vision, tied=False)
    assert set(assignments) == set(shapes)
    for name, assignment in assignments.items():
        assert assignment.treatment == expected_treatment(name, vision), name
    assert assignments[next(n for n in shapes if n.endswith("embed_tokens.weight"))].treatment == "mean"
    assert assignments[next(n for n in shapes if "patch_embed" in n)].treatment in ("mean", "base")  # 5-D


def test_both_layouts_use_the_same_rules(saved_shapes):
    saved = assign(saved_shapes, "mean", tied=False)
    live = assign({live_layout(n): s for n, s in saved_shapes.items()}, "mean", tied=False)
    assert {live_layout(n): a for n, a in saved.items()} == live


def test_tied_head_is_merged_as_the_embedding(saved_shapes):
    assignments = assign(saved_shapes, "mean", tied=True)
    assert assignments["lm_head.weight"].treatment == "tied"
    assert assignments["lm_head.weight"].tied_to == "model.embed_tokens.weight"
    assert assignments["model.embed_tokens.weight"].treatment == "mean"


def test_unmatched_and_ambiguous_names_are_named():
    shapes = {
        "model.layers.0.mlp.up_proj.weight": (4, 2),
        "model.layers.0.mlp.experts.weight": (4, 2),
        "visual.blocks.0.mlp.up_proj.weight": (4,),
    }
    with pytest.raises(MergeError) as err:
        assign(shapes, "mean", tied=False)
    assert "'model.layers.0.mlp.experts.weight' matches no rule" in str(err.value)
    assert "'visual.blocks.0.mlp.up_proj.weight' (rule vision.linear) is a linear weight but has shape [4]" in str(
        err.value
    )
    overlapping = (*RULES, Rule("catch-all", r".*", "language", "other"))
    with pytest.raises(MergeError, match=r"'model.layers.0.mlp.up_proj.weight' matches rules lm.linear, catch-all"):
        assign({"model.layers.0.mlp.up_proj.weight": (4, 2)}, "mean", tied=False, rules=overlapping)


def test_shipped_config_validates_and_lists_every_key():
    cfg = load_config(MergeConfig, CONFIG)
    assert [e.name for e in cfg.experts] == ["math", "chart", "ocr"] and cfg.method == "amm"
    assert (cfg.amm.steps, cfg.amm.lr, cfg.amm.rank, cfg.amm.lam, cfg.amm.temperature) == (300, 1e-5, 16, 1.0, 1.0)
    assert (cfg.task_arithmetic.lam, cfg.ties.density) == (0.3, 0.2)

    def keys(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from keys(value, f"{prefix}{key}.")
            elif key != "experts":
                yield prefix + key

    assert set(keys(yaml.safe_load(CONFIG.read_text()))) == set(keys(to_dict(cfg)))


@pytest.mark.parametrize(
    "override, message",
    [
        ("method=slerp", "method: must be one of"),
        ("amm.alpha=mean", "amm.alpha: must be one of"),
        ("ties.density=0", "ties.density: must be in (0, 1]"),
        ("experts=[{name: a, path: x}, {name: a, path: y}]", "experts[1].name: duplicate name 'a'"),
    ],
)
def test_bad_merge_config_names_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(MergeConfig, CONFIG, [override])
    assert message in str(err.value)


def test_expert_names_resolve_to_run_checkpoints_and_paths_work(tmp_path):
    def config(step: int | None = None) -> MergeConfig:
        expert = f"{{name: math, path: {tmp_path / 'runs/math'}, step: {'null' if step is None else step}}}"
        return load_config(MergeConfig, None, [f"base={base}", f"experts=[{expert}]"])

    base = stand_in_model(tmp_path / "base")
    checkpoints = tmp_path / "runs" / "math" / "checkpoints"
    for step in (1, 2, 3):
        stand_in_model(fill_checkpoint(checkpoints / f"step-{step:06d}") / "model")
        if step < 3:  # step 3 is incomplete: no trainer state yet
            (checkpoints / f"step-{step:06d}" / "trainer_state.json").write_text("{}")
    other = stand_in_model(tmp_path / "elsewhere" / "ocr")

    found_base, (math, ocr) = resolve(config(), ["math", str(other)])
    assert found_base.model_dir == base and (math.name, ocr.name) == ("math", "ocr")
    assert math.model_dir == checkpoints / "step-000002" / "model" and ocr.model_dir == other
    assert resolve(config(step=1), [])[1][0].model_dir == checkpoints / "step-000001" / "model"
    with pytest.raises(MergeError, match="expert 'chart' is neither a name in the config"):
        resolve(config(), ["chart"])
    with pytest.raises(MergeError, match="complete checkpoint step 3"):
        resolve(config(step=3), [])
