"""The shipped YAML files under configs/: every training config loads and validates and lists every
schema key (the files document the schema); the expert configs carry SPEC §2's reference settings.
"""

from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from tiny_r1v.config import TrainConfig, load_config, to_dict

CONFIG_DIR = ROOT / "configs"
EXPERTS = ("math", "chart", "ocr")


def _read(path: Path) -> dict:
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict), f"{path.name}: top level must be a mapping"
    return raw


def _is_training_config(path: Path) -> bool:
    """A training config has a `rollout` section; other configs (e.g. a merge's) do not."""
    return "rollout" in (yaml.safe_load(path.read_text()) or {})


ALL_CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
TRAINING_CONFIGS = [path for path in ALL_CONFIGS if _is_training_config(path)]
EXPERT_CONFIGS = [CONFIG_DIR / f"{name}.yaml" for name in EXPERTS]


def _leaf_keys(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _schema_keys() -> set[str]:
    """Every leaf key of TrainConfig, required ones included."""
    cfg = load_config(TrainConfig, None, ["data.train_files=[t.jsonl]", "model.path=m"])
    return set(_leaf_keys(to_dict(cfg)))


def test_known_training_configs_are_detected():
    names = {path.stem for path in TRAINING_CONFIGS}
    assert {"quickstart", *EXPERTS} <= names


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_training_config_validates(path):
    cfg = load_config(TrainConfig, path)
    assert isinstance(cfg, TrainConfig)
    assert cfg.algorithm.lipo.xi is not None and cfg.algorithm.lipo.l_max is not None


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_training_config_lists_every_key(path):
    """The configs document the schema, so each sets every key explicitly (and no other)."""
    assert set(_leaf_keys(_read(path))) == _schema_keys()


REFERENCE = [
    # SPEC §2 "Reference RL settings"
    (("rollout", "temperature"), 1.0),
    (("rollout", "max_response_length"), 2048),
    (("learner", "lr"), 1e-6),
    (("learner", "weight_decay"), 0.01),
    (("learner", "max_grad_norm"), 1.0),
    (("trainer", "rollout_batch_size"), 512),
    (("learner", "global_batch_size"), 128),
    (("data", "min_pixels"), 262144),
    (("data", "max_pixels"), 1048576),
    # SPEC §2 policy objective
    (("algorithm", "adv_estimator"), "lipo"),
    (("algorithm", "clip_ratio_low"), 0.2),
    (("algorithm", "clip_ratio_high"), 0.3),
    (("algorithm", "kl_coef"), 0.01),
    (("algorithm", "kl_penalty"), "low_var_kl"),
    (("algorithm", "loss_agg_mode"), "token-mean"),
    # SPEC §2 LIPO defaults
    (("algorithm", "lipo", "q_min"), 0.5),
    (("algorithm", "lipo", "delta_len"), 1),
    (("algorithm", "lipo", "eta"), 0.2),
    (("algorithm", "lipo", "l_max"), 2048),
    (("algorithm", "lipo", "penalize_worse_shorter"), False),
    (("algorithm", "lipo", "l_opt_over"), "all"),
    (("algorithm", "lipo", "kappa"), 0.5),
    (("algorithm", "lipo", "scale_by_weight"), False),
    # SPEC §1 defaults
    (("data", "prompt_format"), "boxed"),
    (("reward", "format_weight"), 0.1),
    # the GPU run these files describe
    (("model", "path"), "/models/Qwen2.5-VL-3B-Instruct"),
    (("model", "dtype"), "bfloat16"),
    (("model", "attn_implementation"), "auto"),
    (("trainer", "device"), "cuda"),
    # rollouts of the next step overlap the update, corrected by truncated importance weights
    (("trainer", "max_staleness"), 1),
    (("algorithm", "tis_cap"), 2.0),
]


@pytest.mark.parametrize("attr, expected", REFERENCE, ids=[".".join(a) for a, _ in REFERENCE])
@pytest.mark.parametrize("path", EXPERT_CONFIGS, ids=lambda p: p.stem)
def test_expert_reference_setting(path, attr, expected):
    value = load_config(TrainConfig, path)
    for name in attr:
        value = getattr(value, name)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("path", EXPERT_CONFIGS, ids=lambda p: p.stem)
def test_expert_group_size_in_spec_range(path):
    assert 5 <= load_config(TrainConfig, path).rollout.n <= 8


@pytest.mark.parametrize("path", EXPERT_CONFIGS, ids=lambda p: p.stem)
def test_expert_task_and_xi(path):
    """`xi` is left to the task default: 0.05 for OCR's continuous reward, 0.0 for binary ones."""
    assert _read(path)["algorithm"]["lipo"]["xi"] is None
    cfg = load_config(TrainConfig, path)
    assert cfg.data.task == path.stem
    assert cfg.algorithm.lipo.xi == (0.05 if path.stem == "ocr" else 0.0)


def test_experts_differ_only_in_task_data_and_name():
    def without_task(raw: dict) -> dict:
        for key in ("train_files", "val_files", "task"):
            del raw["data"][key]
        del raw["trainer"]["experiment_name"]
        return raw

    math, *others = (without_task(_read(path)) for path in EXPERT_CONFIGS)
    for other in others:
        assert other == math


def test_expert_placement_fits_one_8_gpu_node():
    """The placement the expert files' headers assume: rollout and learner GPUs add up to 8."""
    for path in EXPERT_CONFIGS:
        cfg = load_config(TrainConfig, path)
        rollout_gpus = cfg.rollout.num_workers * cfg.rollout.tensor_parallel_size
        assert rollout_gpus + cfg.learner.num_workers == 8, path.name
