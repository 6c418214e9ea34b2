"""Evaluation's pure parts: aggregation, table formats, naming, scheduling, cache files, config."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from tiny_r1v.config import ConfigError, load_config, to_dict
from tiny_r1v.eval import EvalConfig, EvalError, cache
from tiny_r1v.eval.inputs import benchmark_names, fingerprint, resolve_models, serving_digest, split_items
from tiny_r1v.eval.metrics import AVERAGE, SampleRecord, Summary, average, summarize, table
from tiny_r1v.eval.report import csv_text, json_payload, markdown, plot
from tiny_r1v.eval.runner import parallel_slots

CONFIG = ROOT / "configs" / "eval.yaml"


def record(
    tokens: int,
    accuracy: float,
    fmt: float = 1.0,
    finish: str = "stop",
    model: str = "m",
    benchmark: str = "b",
    uid: str = "x",
) -> SampleRecord:
    return SampleRecord(
        model=model,
        benchmark=benchmark,
        id=uid,
        sample=0,
        task="ocr",
        prompt="p",
        response="r",
        answer="a",
        tokens=tokens,
        finish_reason=finish,
        reward={"accuracy": accuracy, "format": fmt, "total": 0.9 * accuracy + 0.1 * fmt},
        correct=accuracy == 1.0,
    )


# ------------------------------------------------------------------ aggregation


def test_summarize_counts_by_hand():
    # Three prompts: x answered on its second sample, y never (0.5 is not an exact answer), z at once.
    rows = [
        record(10, 0.0, uid="x"),
        record(20, 1.0, fmt=0.0, uid="x"),
        record(40, 0.5, finish="length", uid="y"),
        record(30, 1.0, uid="z"),
    ]
    s = summarize("m", "b", rows)
    assert s == Summary(
        model="m",
        benchmark="b",
        samples=4,
        accuracy=2.5 / 4,
        pass_at_k=2 / 3,
        format=0.75,
        mean_tokens=25.0,
        median_tokens=25.0,
        truncated=0.25,
    )


def test_summarize_odd_median_and_empty():
    assert summarize("m", "b", [record(7, 0), record(1, 0), record(100, 0)]).median_tokens == 7.0
    with pytest.raises(ValueError, match="no records for model 'm' on benchmark 'b'"):
        summarize("m", "b", [])


def test_average_is_unweighted_over_benchmarks():
    small = summarize("m", "s", [record(10, 1.0)])
    large = summarize("m", "l", [record(30, 0.0, finish="length")] * 3)
    avg = average("m", [small, large])
    assert avg == Summary(
        model="m",
        benchmark=AVERAGE,
        samples=4,
        accuracy=0.5,
        pass_at_k=0.5,
        format=1.0,
        mean_tokens=20.0,
        median_tokens=20.0,
        truncated=0.5,
    )


def test_table_orders_models_then_benchmarks_then_average():
    records = {
        ("a", "x"): [record(1, 1.0)],
        ("a", "y"): [record(3, 0.0)],
        ("b", "x"): [record(5, 0.0)],
        ("b", "y"): [record(7, 1.0)],
    }
    rows = table(records, ["b", "a"], ["y", "x"])
    assert [(r.model, r.benchmark) for r in rows] == [
        ("b", "y"),
        ("b", "x"),
        ("b", AVERAGE),
        ("a", "y"),
        ("a", "x"),
        ("a", AVERAGE),
    ]
    assert rows[2].mean_tokens == 6.0 and rows[5].accuracy == 0.5


# ------------------------------------------------------------------ formats

ROWS = [
    Summary("base", "math", 2, 0.5, 1.0, 1.0, 12.5, 12.5, 0.0),
    Summary("base", AVERAGE, 2, 0.5, 1.0, 1.0, 12.5, 12.5, 0.0),
    Summary("lipo", "math", 2, 0.75, 0.5, 0.5, 8.0, 7.0, 0.5),
    Summary("lipo", AVERAGE, 2, 0.75, 0.5, 0.5, 8.0, 7.0, 0.5),
]


def test_markdown_exact():
    assert markdown(ROWS, "Decoding: greedy.") == (
        "# Evaluation\n\nDecoding: greedy.\n\nAccuracy (%) / mean generated tokens:\n\n"
        "| model | math | average |\n"
        "|---|---:|---:|\n"
        "| base | 50.0 / 12.5 | 50.0 / 12.5 |\n"
        "| lipo | 75.0 / 8.0 | 75.0 / 8.0 |\n\n"
        "| model | benchmark | samples | accuracy (%) | pass@k (%) | format (%) | mean tokens | median tokens "
        "| truncated (%) |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
        "| base | math | 2 | 50.0 | 100.0 | 100.0 | 12.5 | 12.5 | 0.0 |\n"
        "| base | average | 2 | 50.0 | 100.0 | 100.0 | 12.5 | 12.5 | 0.0 |\n"
        "| lipo | math | 2 | 75.0 | 50.0 | 50.0 | 8.0 | 7.0 | 50.0 |\n"
        "| lipo | average | 2 | 75.0 | 50.0 | 50.0 | 8.0 | 7.0 | 50.0 |\n"
    )


def test_csv_and_json_round_trip_the_rows():
    parsed = list(csv.DictReader(io.StringIO(csv_text(ROWS))))
    assert [
        Summary(
            r["model"],
            r["benchmark"],
            int(r["samples"]),
            *(float(r[k]) for k in ("accuracy", "pass_at_k", "format", "mean_tokens", "median_tokens", "truncated")),
        )
        for r in parsed
    ] == ROWS
    payload = json.loads(json.dumps(json_payload(ROWS, {"seed": 1})))
    assert payload["settings"] == {"seed": 1}
    assert [Summary(**row) for row in payload["rows"]] == ROWS


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "plot.png"
    plot(ROWS, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ naming, scheduling


def test_split_items():
    assert split_items(" a=x, b ,,c=y ") == ["a=x", "b", "c=y"]
    assert split_items("") == []


def test_benchmark_names_disambiguate_shared_stems():
    paths = [Path("/d/mathvista/test.jsonl"), Path("/d/chartqa/test.jsonl"), Path("/d/ocr.jsonl")]
    assert benchmark_names(paths, [None, None, None]) == ["mathvista-test", "chartqa-test", "ocr"]
    assert benchmark_names(paths, ["mv", None, None]) == ["mv", "chartqa-test", "ocr"]  # the stem is still shared
    with pytest.raises(EvalError, match="benchmark name 'ocr' is given twice"):
        benchmark_names(paths, [None, "ocr", None])


@pytest.mark.parametrize(
    ("max_parallel", "gpu", "gpus", "tp", "models", "expected"),
    [
        (None, False, 0, 1, 5, 1),  # CPU: one engine, all cores
        (3, False, 0, 1, 5, 3),  # asked for
        (3, False, 0, 1, 2, 2),  # never more than the models
        (None, True, 8, 1, 5, 5),
        (None, True, 8, 2, 5, 4),  # tensor parallel engines take 2 GPUs each
        (None, True, 8, 4, 5, 2),
        (2, True, 8, 1, 5, 2),
        (None, True, 1, 2, 3, 1),  # too few GPUs: one at a time (Ray waits for them)
    ],
)
def test_parallel_slots(max_parallel, gpu, gpus, tp, models, expected):
    assert parallel_slots(max_parallel, gpu, gpus, tp, models) == expected


# ------------------------------------------------------------------ cache files


def test_cache_reuses_only_complete_files_with_the_same_key(tmp_path):
    path = cache.samples_path(tmp_path, "m", "b")
    records = [record(3, 1.0, uid="1"), record(4, 0.0, uid="2")]
    key = cache.cache_key({"decoding": {"seed": 1}})
    assert cache.load(path, key, 2) is None
    cache.save(path, key, {"decoding": {"seed": 1}}, records)
    assert path == tmp_path / "samples" / "m" / "b.jsonl"
    assert cache.load(path, key, 2) == records
    assert cache.load(path, cache.cache_key({"decoding": {"seed": 2}}), 2) is None  # other settings
    assert cache.load(path, key, 3) is None  # a row more in the benchmark
    path.write_text(path.read_text().splitlines(keepends=True)[0])  # a partial file
    assert cache.load(path, key, 2) is None
    path.write_text("not json\n{}\n")
    assert cache.load(path, key, 2) is None


def test_cache_key_is_canonical():
    assert cache.cache_key({"a": 1, "b": {"c": 2, "d": 3}}) == cache.cache_key({"b": {"d": 3, "c": 2}, "a": 1})
    assert cache.cache_key({"a": 1}) != cache.cache_key({"a": 2})


def test_saving_again_replaces_the_meta_last(tmp_path):
    path = cache.samples_path(tmp_path, "m", "b")
    cache.save(path, "old", {}, [record(1, 0.0)])
    cache.save(path, "new", {}, [record(2, 1.0)])
    assert cache.load(path, "old", 1) is None and cache.load(path, "new", 1) == [record(2, 1.0)]
    assert sorted(p.name for p in path.parent.iterdir()) == ["b.jsonl", "b.meta.json"]  # no temp files left


# ------------------------------------------------------------------ config and model names


def test_shipped_config_validates_and_lists_every_key():
    raw = yaml.safe_load(CONFIG.read_text())
    cfg = load_config(EvalConfig, CONFIG)
    assert to_dict(cfg) == raw  # the file documents the schema: every key set, no other


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("decoding.n=4", "decoding.n: greedy decoding (temperature 0) gives 4 identical samples"),
        ("decoding.temperature=-1", "decoding.temperature: must be >= 0"),
        ("engine.max_response_length=0", "engine.max_response_length: must be > 0"),
        ("prompt.max_pixels=10000000", "prompt.max_pixels: an image of 10000000 pixels takes"),
        ("max_parallel=0", "max_parallel: must be >= 1"),
        ("models=[{name: a, path: x}, {name: a, path: y}]", "models[1].name: duplicate name 'a'"),
        ("models=[{name: 'a/b', path: x}]", "models[0].name: must be a non-empty label"),
    ],
)
def test_bad_config_is_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(EvalConfig, CONFIG, [override])


def test_sampled_decoding_allows_k_samples():
    cfg = load_config(EvalConfig, CONFIG, ["decoding.temperature=0.6", "decoding.n=4"])
    assert cfg.decoding.n == 4 and not cfg.decoding.greedy


def test_model_items(tmp_path, tiny_model_dir):
    cfg = load_config(EvalConfig, None, [f"models=[{{name: known, path: {tiny_model_dir}}}]"])
    run = tmp_path / "myrun"
    (run / "checkpoints" / "step-000004.tmp").mkdir(parents=True)  # incomplete: never evaluated
    with pytest.raises(EvalError, match=f"model 'myrun': {run} is neither a model directory"):
        resolve_models(cfg, [str(run)])
    with pytest.raises(EvalError, match="model 'gone': no such directory"):
        resolve_models(cfg, [f"gone={tmp_path / 'gone'}"])
    with pytest.raises(EvalError, match="model name 'known' is given twice"):
        resolve_models(cfg, ["known", f"known={tiny_model_dir}"])
    [known, named] = resolve_models(cfg, ["known", f"other={tiny_model_dir}"])
    assert (known.name, named.name) == ("known", "other")
    assert known.model_dir == named.model_dir == tiny_model_dir.resolve()
    assert known.fingerprint == named.fingerprint
    assert [m.name for m in resolve_models(cfg, [])] == ["known"]


def test_fingerprint_follows_the_files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"0" * 8)
    first = fingerprint(model)
    assert fingerprint(model) == first
    (model / "model.safetensors").write_bytes(b"0" * 9)  # rewritten weights
    assert fingerprint(model) != first


def test_serving_digest_ignores_weights_and_labels_but_not_what_vllm_reads(tmp_path, tiny_model_dir):
    import shutil

    def copy(name: str) -> Path:
        return Path(shutil.copytree(tiny_model_dir, tmp_path / name))

    first = serving_digest(tiny_model_dir)
    other = copy("other-weights")
    (other / "model.safetensors").write_bytes(b"0" * 8)  # not read here: only the serving files
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(
        json.dumps({**config, "_name_or_path": "/elsewhere", "transformers_version": "9"})
    )
    assert serving_digest(other) == first
    wider = copy("wider")
    (wider / "config.json").write_text(json.dumps({**config, "hidden_size": config.get("hidden_size", 0) + 8}))
    template = copy("template")
    (template / "tokenizer_config.json").write_text((template / "tokenizer_config.json").read_text() + " ")
    dtype = copy("dtype")
    (dtype / "config.json").write_text(json.dumps({**config, "torch_dtype": "bfloat16", "dtype": "bfloat16"}))
    assert len({first, serving_digest(wider), serving_digest(template), serving_digest(dtype)}) == 4


def test_like_training_is_greedy_or_samples_as_the_rollouts_do(tmp_path):
    from tiny_r1v.config.train import TrainConfig
    from tiny_r1v.eval.config import like_training

    train = load_config(
        TrainConfig, ROOT / "configs" / "quickstart.yaml", ["rollout.temperature=0.7", "rollout.top_p=0.9"]
    )
    greedy = like_training(train, tmp_path)
    assert greedy.decoding.greedy and greedy.decoding.n == 1
    assert greedy.engine.max_response_length == train.rollout.max_response_length
    assert greedy.prompt.image_position == train.data.image_position and greedy.reward == train.reward
    sampled = like_training(train, tmp_path, samples=3).decoding
    assert (sampled.temperature, sampled.top_p, sampled.n) == (0.7, 0.9, 3)
