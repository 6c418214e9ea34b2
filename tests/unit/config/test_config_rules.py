"""Config loading: defaults <- YAML <- overrides, type checks, every validation rule, resolution."""

import ast
import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from tiny_r1v.config import ConfigError, LipoConfig, TrainConfig, load_config, to_dict
from tiny_r1v.config import train as train_schema

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# The two keys without defaults.
REQUIRED = ["data.train_files=[train.jsonl]", "model.path=tiny-model"]


def load(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, None, [*REQUIRED, *overrides])


def write_yaml(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_validate():
    cfg = load()
    assert cfg.data.train_files == ("train.jsonl",)
    assert cfg.model.path == "tiny-model"
    assert cfg.rollout == train_schema.RolloutConfig()
    assert cfg.learner.betas == (0.9, 0.999)
    assert cfg.algorithm.adv_estimator == "lipo"
    assert cfg.trainer.loggers == ("console", "jsonl")


def test_required_keys_are_named():
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None)
    assert [key for key, _ in err.value.errors] == ["data.train_files", "model.path"]
    assert str(err.value).startswith("data.train_files: required")


def test_quickstart_loads():
    cfg = load_config(TrainConfig, QUICKSTART)
    assert cfg.model.path == "outputs/quickstart-assets/warm-model"
    assert cfg.data.task == "ocr" and cfg.algorithm.lipo.xi == 0.05
    assert cfg.rollout.n == 4
    assert cfg.rollout.max_response_length == 32
    assert cfg.learner.num_workers == 2
    assert cfg.rollout.num_workers == 1
    assert cfg.trainer.device == "cpu"
    assert cfg.algorithm.lipo.l_max == 32  # resolved from the response limit


# That the quickstart (like every config under configs/) lists every key: tests/test_configs.py.


@pytest.mark.parametrize(
    "override, attr, expected",
    [
        ("rollout.n=8", ("rollout", "n"), 8),
        ("rollout.temperature=0.7", ("rollout", "temperature"), 0.7),
        ("rollout.temperature=2", ("rollout", "temperature"), 2.0),  # int widened to float
        ("learner.lr=1e-5", ("learner", "lr"), 1e-5),  # YAML 1.1 would read a string
        ("learner.lr=3.0e6", ("learner", "lr"), 3.0e6),
        ("data.shuffle=false", ("data", "shuffle"), False),
        ("model.path=/models/qwen", ("model", "path"), "/models/qwen"),
        ("data.val_files=[a.jsonl,b.parquet]", ("data", "val_files"), ("a.jsonl", "b.parquet")),
        ("learner.betas=[0.8,0.95]", ("learner", "betas"), (0.8, 0.95)),
        ("data.prompt_format=answer_tags", ("data", "prompt_format"), "answer_tags"),
        ("data.image_position=last", ("data", "image_position"), "last"),
        ("trainer.loggers=[tensorboard]", ("trainer", "loggers"), ("tensorboard",)),
        ("trainer.loggers=[]", ("trainer", "loggers"), ()),
        ("algorithm.lipo.eta=0.5", ("algorithm", "lipo", "eta"), 0.5),
        ("algorithm.lipo.xi=0.1", ("algorithm", "lipo", "xi"), 0.1),
        ("algorithm.kl_coef=0", ("algorithm", "kl_coef"), 0.0),
    ],
)
def test_override_applies(override, attr, expected):
    value = load(override)
    for name in attr:
        value = getattr(value, name)
    assert value == expected
    assert type(value) is type(expected)


def test_null_override_resets_optional_field(tmp_path):
    path = write_yaml(tmp_path, {"algorithm": {"lipo": {"l_max": 100}}})
    cfg = load_config(TrainConfig, path, [*REQUIRED, "algorithm.lipo.l_max=null"])
    assert cfg.algorithm.lipo.l_max == cfg.rollout.max_response_length


def test_override_beats_file(tmp_path):
    path = write_yaml(tmp_path, {"rollout": {"n": 6, "temperature": 0.5}})
    cfg = load_config(TrainConfig, path, [*REQUIRED, "rollout.n=3"])
    assert (cfg.rollout.n, cfg.rollout.temperature) == (3, 0.5)


def test_to_dict_round_trips(tmp_path):
    cfg = load_config(TrainConfig, QUICKSTART, ["algorithm.lipo.kappa=0.25", "data.task=ocr"])
    plain = to_dict(cfg)
    assert json.loads(json.dumps(plain)) == plain  # plain types only, no tuples
    assert load_config(TrainConfig, write_yaml(tmp_path, plain)) == cfg


def test_frozen():
    cfg = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rollout.n = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rollout = cfg.rollout  # type: ignore[misc]


def test_resolution_xi_and_l_max():
    math = load("rollout.max_response_length=300")
    assert math.algorithm.lipo.xi == 0.0
    assert math.algorithm.lipo.l_max == 300
    ocr = load("data.task=ocr")
    assert ocr.algorithm.lipo.xi == 0.05
    assert ocr.algorithm.lipo.l_max == 2048
    explicit = load("data.task=ocr", "algorithm.lipo.xi=0.2", "algorithm.lipo.l_max=99")
    assert (explicit.algorithm.lipo.xi, explicit.algorithm.lipo.l_max) == (0.2, 99)
    mixed = load("data.task=mixed")
    assert (mixed.algorithm.lipo.xi, mixed.data.row_task, ocr.data.row_task) == (0.05, None, "ocr")


def test_mixture_xi_default_holds_only_where_binary_rewards_cannot_fall_within_it():
    # total = (1 - w) * accuracy + w * format: binary tasks' gaps are multiples of min(w, 1 - w)
    for w in (0.05, 0.95, 0.0):
        with pytest.raises(ConfigError, match=r"^algorithm\.lipo\.xi: a mixture's default"):
            load("data.task=mixed", f"reward.format_weight={w}")
    assert load("data.task=mixed", "reward.format_weight=0.0", "algorithm.lipo.xi=0.0").algorithm.lipo.xi == 0.0


def test_direct_construction_validates_and_resolves():
    cfg = TrainConfig(
        data=train_schema.DataConfig(train_files=["t.jsonl"], task="ocr"),
        model=train_schema.ModelConfig(path="m"),
    )
    assert cfg.algorithm.lipo == LipoConfig()  # unresolved until validated
    resolved = cfg.validate()
    assert (resolved.algorithm.lipo.xi, resolved.algorithm.lipo.l_max) == (0.05, 2048)
    bad = dataclasses.replace(cfg, rollout=train_schema.RolloutConfig(n=1))
    with pytest.raises(ConfigError, match=r"^rollout\.n: group size must be >= 2, got 1$"):
        bad.validate()


RULES = [
    # data
    ("data.train_files=[]", "data.train_files: must list at least one file"),
    ("data.max_prompt_length=0", "data.max_prompt_length: must be > 0, got 0"),
    ("data.min_pixels=0", "data.min_pixels: must be > 0, got 0"),
    ("data.min_pixels=2000000", "data.min_pixels: must be <= max_pixels (1048576), got 2000000"),
    ("data.max_prompt_length=1000", "data.max_pixels: an image of 1048576 pixels takes 1337 tokens"),
    # model
    ("model.path=''", "model.path: must not be empty"),
    # rollout
    ("rollout.n=1", "rollout.n: group size must be >= 2, got 1"),
    ("rollout.temperature=0", "rollout.temperature: must be > 0, got 0.0"),
    ("rollout.top_p=0", "rollout.top_p: must be in (0, 1], got 0.0"),
    ("rollout.top_p=1.5", "rollout.top_p: must be in (0, 1], got 1.5"),
    ("rollout.max_response_length=0", "rollout.max_response_length: must be > 0, got 0"),
    ("rollout.num_workers=0", "rollout.num_workers: must be > 0, got 0"),
    ("rollout.tensor_parallel_size=0", "rollout.tensor_parallel_size: must be > 0, got 0"),
    (
        "rollout.tensor_parallel_size=2",
        "rollout.tensor_parallel_size: rollout engines with tensor parallelism are not built yet",
    ),
    ("rollout.gpu_memory_utilization=0", "rollout.gpu_memory_utilization: must be in (0, 1], got 0.0"),
    ("rollout.gpu_memory_utilization=1.1", "rollout.gpu_memory_utilization: must be in (0, 1]"),
    # reward
    ("reward.format_weight=-0.1", "reward.format_weight: must be in [0, 1], got -0.1"),
    ("reward.format_weight=1.5", "reward.format_weight: must be in [0, 1], got 1.5"),
    ("reward.timeout_s=0", "reward.timeout_s: must be > 0, got 0.0"),
    ("reward.num_workers=0", "reward.num_workers: must be > 0, got 0"),
    # algorithm
    ("algorithm.kl_coef=-0.01", "algorithm.kl_coef: must be >= 0, got -0.01"),
    ("algorithm.clip_ratio_low=0", "algorithm.clip_ratio_low: must be in (0, 1), got 0.0"),
    ("algorithm.clip_ratio_low=1", "algorithm.clip_ratio_low: must be in (0, 1), got 1.0"),
    ("algorithm.clip_ratio_high=0", "algorithm.clip_ratio_high: must be > 0, got 0.0"),
    ("algorithm.tis_cap=0.5", "algorithm.tis_cap: must be >= 1, got 0.5"),
    # algorithm.lipo
    ("algorithm.lipo.xi=-0.1", "algorithm.lipo.xi: must be in [0, 1], got -0.1"),
    ("algorithm.lipo.xi=1.5", "algorithm.lipo.xi: must be in [0, 1], got 1.5"),
    ("algorithm.lipo.q_min=1.5", "algorithm.lipo.q_min: must be in [0, 1], got 1.5"),
    ("algorithm.lipo.delta_len=-1", "algorithm.lipo.delta_len: must be >= 0, got -1"),
    ("algorithm.lipo.eta=-0.1", "algorithm.lipo.eta: must be >= 0, got -0.1"),
    ("algorithm.lipo.l_max=0", "algorithm.lipo.l_max: must be >= 1, got 0"),
    ("algorithm.lipo.kappa=0", "algorithm.lipo.kappa: must be > 0, got 0.0"),
    # learner
    ("learner.num_workers=0", "learner.num_workers: must be > 0, got 0"),
    ("learner.lr=0", "learner.lr: must be > 0, got 0.0"),
    ("learner.weight_decay=-0.1", "learner.weight_decay: must be >= 0, got -0.1"),
    ("learner.betas=[0.9,1.0]", "learner.betas: must be in [0, 1), got 1.0"),
    ("learner.max_grad_norm=0", "learner.max_grad_norm: must be > 0, got 0.0"),
    ("learner.global_batch_size=0", "learner.global_batch_size: must be > 0, got 0"),
    ("learner.micro_batch_size=0", "learner.micro_batch_size: must be > 0, got 0"),
    ("learner.ppo_epochs=0", "learner.ppo_epochs: must be > 0, got 0"),
    ("learner.max_tokens_per_micro_batch=0", "learner.max_tokens_per_micro_batch: must be > 0, got 0"),
    ("learner.logprob_chunk_tokens=0", "learner.logprob_chunk_tokens: must be > 0, got 0"),
    ("learner.lr_warmup_steps=-1", "learner.lr_warmup_steps: must be >= 0, got -1"),
    ("learner.min_lr_ratio=1.5", "learner.min_lr_ratio: must be in [0, 1], got 1.5"),
    # trainer
    ("trainer.rollout_batch_size=0", "trainer.rollout_batch_size: must be > 0, got 0"),
    ("trainer.total_steps=0", "trainer.total_steps: must be > 0, got 0"),
    ("trainer.save_freq=-1", "trainer.save_freq: must be >= 0, got -1"),
    ("trainer.save_limit=0", "trainer.save_limit: must be > 0, got 0"),
    ("trainer.max_staleness=-1", "trainer.max_staleness: must be >= 0, got -1"),
    ("trainer.output_dir=''", "trainer.output_dir: must not be empty"),
    ("trainer.experiment_name=''", "trainer.experiment_name: must not be empty"),
    # cross-section
    (
        "trainer.rollout_batch_size=100",
        "trainer.rollout_batch_size: must be a multiple of learner.global_batch_size (128), got 100",
    ),
    ("learner.micro_batch_size=3", "learner.global_batch_size: samples per step"),
    (
        "learner.max_tokens_per_micro_batch=8192 learner.num_workers=3",
        "learner.global_batch_size: samples per step (global_batch_size * rollout.n = 640) must be a "
        "multiple of num_workers (3)",
    ),
    (
        "learner.lr_warmup_steps=120",
        "learner.lr_warmup_steps: must be below trainer.total_steps (120) for the run to reach its peak lr, got 120",
    ),
    (
        "model.attn_implementation=flash_attention_2 trainer.device=cpu",
        "model.attn_implementation: flash_attention_2 needs CUDA",
    ),
]


@pytest.mark.parametrize("overrides, message", RULES, ids=[r[0] for r in RULES])
def test_rule_rejects(overrides, message):
    with pytest.raises(ConfigError) as err:
        load(*overrides.split(" "))
    assert str(err.value).startswith(message)
    assert len(err.value.errors) == 1


def test_a_token_budget_frees_the_samples_from_micro_batch_size():
    # 640 samples per step are no multiple of micro_batch_size 3, but a token budget cuts them freely.
    cfg = load("learner.micro_batch_size=3", "learner.max_tokens_per_micro_batch=8192")
    assert cfg.learner.max_tokens_per_micro_batch == 8192


TYPE_ERRORS = [
    ("rollout.temperature=hot", "rollout.temperature: expected float, got str 'hot'"),
    ("rollout.n=true", "rollout.n: expected int, got bool True"),
    ("rollout.n=2.0", "rollout.n: expected int, got float 2.0"),
    ("rollout.temperature=true", "rollout.temperature: expected float, got bool True"),
    ("data.shuffle=1", "data.shuffle: expected bool, got int 1"),
    ("model.trust_remote_code=0", "model.trust_remote_code: expected bool, got int 0"),
    ("model.path=null", "model.path: expected str, got null"),
    ("model.path=3", "model.path: expected str, got int 3"),
    (
        "data.prompt_format=xml",
        "data.prompt_format: must be one of ['boxed', 'answer_tags'], got 'xml'",
    ),
    ("data.image_position=middle", "data.image_position: must be one of ['first', 'last'], got 'middle'"),
    ("model.dtype=fp16", "model.dtype: must be one of ['auto', 'bfloat16', 'float32'], got 'fp16'"),
    ("learner.lr_schedule=linear", "learner.lr_schedule: must be one of ['constant', 'cosine'], got 'linear'"),
    (
        "trainer.loggers=[console,wandb]",
        "trainer.loggers[1]: must be one of ['console', 'jsonl', 'tensorboard'], got 'wandb'",
    ),
    ("data.train_files=a.jsonl", "data.train_files: expected tuple[str, ...], got str 'a.jsonl'"),
    ("data.train_files=[a.jsonl,7]", "data.train_files[1]: expected str, got int 7"),
    ("learner.betas=[0.9]", "learner.betas: expected 2 items, got 1"),
    ("learner.betas=[0.9,x]", "learner.betas[1]: expected float, got str 'x'"),
    ("algorithm.lipo.xi=small", "algorithm.lipo.xi: expected float, got str 'small'"),
    ("algorithm.lipo.l_max=1.5", "algorithm.lipo.l_max: expected int, got float 1.5"),
    ("rollout=3", "rollout: expected a mapping, got int 3"),
    ("algorithm.lipo=null", "algorithm.lipo: expected a mapping, got null"),
]


@pytest.mark.parametrize("override, message", TYPE_ERRORS, ids=[t[0] for t in TYPE_ERRORS])
def test_type_check_rejects(override, message):
    with pytest.raises(ConfigError) as err:
        load(override)
    assert str(err.value) == message


def test_all_structural_errors_reported_together():
    with pytest.raises(ConfigError) as err:
        load("rollout.n=x", "trainer.seed=y", "reward.bogus=1")
    assert {key for key, _ in err.value.errors} == {"rollout.n", "trainer.seed", "reward.bogus"}
    assert isinstance(err.value, ValueError)


def test_unknown_key_in_override_suggests_closest():
    with pytest.raises(ConfigError) as err:
        load("trainer.sav_freq=3")
    message = str(err.value)
    assert message.startswith("trainer.sav_freq: unknown key, did you mean 'save_freq'?")
    assert "known: rollout_batch_size, total_steps" in message


def test_unknown_section_in_override():
    with pytest.raises(ConfigError, match=r"^rollouts: unknown key, did you mean 'rollout'\?"):
        load("rollouts.n=3")


def test_unknown_key_without_close_match():
    with pytest.raises(ConfigError, match=r"^trainer\.foo: unknown key \(known: "):
        load("trainer.foo=1")


def test_unknown_key_in_file(tmp_path):
    path = write_yaml(tmp_path, {"algorithm": {"lipo": {"etta": 0.1}}})
    with pytest.raises(ConfigError, match=r"^algorithm\.lipo\.etta: unknown key, did you mean 'eta'\?"):
        load_config(TrainConfig, path, REQUIRED)


def test_rule_violation_in_file(tmp_path):
    path = write_yaml(
        tmp_path,
        {"data": {"train_files": ["t.jsonl"]}, "model": {"path": "m"}, "algorithm": {"lipo": {"eta": -0.1}}},
    )
    with pytest.raises(ConfigError, match=r"^algorithm\.lipo\.eta: must be >= 0, got -0\.1$"):
        load_config(TrainConfig, path)


def test_type_error_in_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  train_files: [t.jsonl]\n  shuffle: 1\nmodel:\n  path: m\n")
    with pytest.raises(ConfigError, match=r"^data\.shuffle: expected bool, got int 1$"):
        load_config(TrainConfig, path)


@pytest.mark.parametrize("override", ["rollout.n", "rollout.n:3", "=3", "rollout..n=3", "rollout.=3"])
def test_malformed_override(override):
    with pytest.raises(ConfigError) as err:
        load(override)
    assert str(err.value).startswith(f"override {override!r}: malformed")


def test_unparsable_override_value():
    with pytest.raises(ConfigError, match=r"^data\.val_files: cannot parse override value"):
        load("data.val_files=[a,")


def test_override_through_scalar_is_rejected(tmp_path):
    path = write_yaml(tmp_path, {"rollout": 3})
    with pytest.raises(ConfigError, match=r"^rollout: expected a mapping, got int 3$"):
        load_config(TrainConfig, path, [*REQUIRED, "rollout.n=4"])


# Problems of the file as a whole: the message is relative to the file, which the caller names.


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"^config file not found$"):
        load_config(TrainConfig, missing, REQUIRED)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "rollout: [n: 3\n",
            "invalid YAML: line 2, column 1: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence at line 1, column 10)",
        ),
        (
            "rollout:\n  n: 3\n   temperature: 1\n",
            "invalid YAML: line 3, column 15: mapping values are not allowed here",
        ),
        (
            "model:\n  path: m\x00\n",
            "invalid YAML: character 17: unacceptable character #x0000 (special characters are not allowed)",
        ),
    ],
)
def test_invalid_yaml_file_gives_line_and_column_once(tmp_path, text, message):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, path, REQUIRED)
    assert str(err.value) == message


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model:\n  path: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"^cannot read: 'utf-8' codec can't decode byte 0xe9"):
        load_config(TrainConfig, path, REQUIRED)


def test_file_must_be_a_mapping(tmp_path):
    path = write_yaml(tmp_path, [1, 2])
    with pytest.raises(ConfigError, match=r"^top level must be a mapping, got list \[1, 2\]$"):
        load_config(TrainConfig, path, REQUIRED)


@pytest.mark.parametrize(
    "override, key",
    [
        ("learner.lr=.inf", "learner.lr"),
        ("learner.lr=-.inf", "learner.lr"),
        ("learner.lr=.nan", "learner.lr"),
        ("learner.lr=1e400", "learner.lr"),  # overflows to inf
        ("learner.lr=1" + "0" * 400, "learner.lr"),  # an int too large for a float
        ("learner.betas=[0.9, .nan]", "learner.betas[1]"),
        ("algorithm.lipo.xi=.inf", "algorithm.lipo.xi"),  # optional: `float | None`
        ("rollout.top_p=.nan", "rollout.top_p"),
    ],
)
def test_non_finite_floats_are_refused_at_type_check(override, key):
    with pytest.raises(ConfigError) as err:
        load(override)
    assert [k for k, _ in err.value.errors] == [key]
    assert "must be a finite number" in str(err.value)


def test_non_finite_float_in_file_is_named_with_the_other_type_errors(tmp_path):
    path = tmp_path / "inf.yaml"
    path.write_text("learner:\n  lr: .inf\n  max_grad_norm: .nan\nrollout:\n  n: two\n")
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, path, REQUIRED)
    assert [key for key, _ in err.value.errors] == ["rollout.n", "learner.lr", "learner.max_grad_norm"]


def test_empty_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert load_config(TrainConfig, path, REQUIRED) == load()


def test_every_field_has_a_docstring():
    tree = ast.parse(inspect.getsource(train_schema))
    for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        body = cls.body
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                documented = (
                    isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)
                )
                assert documented, f"{cls.name}.{stmt.target.id} has no docstring"
