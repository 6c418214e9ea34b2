"""Hostile inputs to the entry points: each is refused with exit status 2 (or an exception, for
the library-level `ScoreRequest`), a message naming the file, row or key, and nothing on disk
changed. The launchers run in-process with Ray made unimportable, so a case that got past the
checks fails loudly instead of starting a cluster."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import RED_ROW as ROW
from helpers import ROOT, fill_checkpoint, launcher, snapshot, stand_in_model, write_red_dataset
from PIL import Image

from tiny_r1v.data import convert
from tiny_r1v.eval import runner as eval_runner
from tiny_r1v.rewards import ScoreRequest

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def _load_launcher(name: str) -> Callable[[list[str]], int]:
    return launcher(name).main


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import ray` fails, and evaluation itself raises: bad input must stop before either."""

    def run_eval(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("bad input reached the evaluation")

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setattr(eval_runner, "run_eval", run_eval)


def _params(cases: list[tuple[Any, ...]]) -> list[Any]:
    """Cases written as (id, *values) as pytest parameters."""
    return [pytest.param(*values, id=case_id) for case_id, *values in cases]


def _refused(run: Callable[[], int | None], capsys: pytest.CaptureFixture[str], *roots: Path) -> str:
    """Run an entry point that must exit with status 2 and leave `roots` unchanged; its stderr."""
    before = snapshot(*roots)
    try:
        status = run()
    except SystemExit as exit_:  # argparse and the converter exit instead of returning
        status = exit_.code
    assert status == 2
    assert snapshot(*roots) == before
    return capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# launch/lipo.py: the config file and overrides


RefuseTraining = Callable[..., str]


@pytest.fixture
def refuse_training(
    no_ray: None, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> RefuseTraining:
    """`refuse_training(train, config=QUICKSTART, *overrides)`: run launch/lipo.py on a valid
    model and vqa data `train`, expect a refusal that leaves tmp_path as it was and writes no
    output directory; its stderr."""
    lipo = _load_launcher("lipo")

    def refuse(train: Path, config: Path = QUICKSTART, *overrides: str) -> str:
        args = [
            "--config",
            str(config),
            f"model.path={tiny_model_dir}",
            f"data.train_files=[{train}]",
            "data.val_files=[]",
            "data.task=vqa",
            f"trainer.output_dir={tmp_path / 'out'}",
            *overrides,
        ]
        err = _refused(lambda: lipo(args), capsys, tmp_path)
        assert not (tmp_path / "out").exists()
        return err

    return refuse


OVERRIDE_CASES = [
    ("unknown key", "rollout.nn=3", "rollout.nn: unknown key, did you mean 'n'?"),
    ("unknown section", "rolout.n=3", "rolout: unknown key, did you mean 'rollout'?"),
    ("wrong type", "rollout.n=two", "rollout.n: expected int, got str 'two'"),
    ("bool for an int", "rollout.n=true", "rollout.n: expected int, got bool True"),
    ("string list item", "learner.betas=[0.9, x]", "learner.betas[1]: expected float, got str 'x'"),
    ("nan", "learner.lr=.nan", "learner.lr: must be a finite number, got nan"),
    ("inf", "learner.lr=.inf", "learner.lr: must be a finite number, got inf"),
    ("overflow to inf", "rollout.temperature=1e999", "rollout.temperature: must be a finite number, got inf"),
    ("-inf in a tuple", "learner.betas=[0.9, -.inf]", "learner.betas[1]: must be a finite number, got -inf"),
    ("broken rule", "rollout.n=1", "rollout.n: group size must be >= 2, got 1"),
    ("negative rate", "learner.lr=-1e-6", "learner.lr: must be > 0"),
    (
        "not a choice",
        "algorithm.adv_estimator=ppo",
        "algorithm.adv_estimator: must be one of ['grpo', 'dr_grpo', 'lipo',",
    ),
    ("malformed override", "rollout.n", "override 'rollout.n': malformed, expected key.sub=value"),
    ("unparsable value", "data.val_files=[a,", "data.val_files: cannot parse override value '[a,': line 1"),
    ("through a scalar", "rollout.n.x=1", "rollout.n: expected a mapping, got int 4"),
]


@pytest.mark.parametrize(("override", "message"), _params(OVERRIDE_CASES))
def test_lipo_refuses_bad_overrides(
    refuse_training: RefuseTraining, tmp_path: Path, override: str, message: str
) -> None:
    err = refuse_training(write_red_dataset(tmp_path / "data", [ROW]), QUICKSTART, override)
    assert f"{QUICKSTART}: " in err and message in err


CONFIG_FILE_CASES = [
    (
        "YAML syntax error",
        b"rollout:\n  n: 4\n   top_p: 1.0\n",
        "invalid YAML: line 3, column 9: mapping values are not allowed here",
    ),
    (
        "unclosed flow sequence",
        b"data:\n  train_files: [a.jsonl\n",
        "invalid YAML: line 3, column 1: expected ',' or ']', but got '<stream end>'",
    ),
    ("tab indentation", b"rollout:\n\tn: 4\n", "invalid YAML: line 2, column 1: found character '\\t'"),
    ("NUL byte", b"rollout: {n: 4}\x00\n", "invalid YAML: character 16: unacceptable character #x0000"),
    ("not UTF-8", "model: {path: caf\xe9}\n".encode("latin-1"), "cannot read: 'utf-8' codec can't decode"),
    ("top level a list", b"- rollout\n- n\n", "top level must be a mapping, got list"),
    ("section a scalar", b"rollout: 4\n", "rollout: expected a mapping, got int 4"),
    ("unknown key in file", b"rollout:\n  groups: 4\n", "rollout.groups: unknown key"),
    ("nan in file", b"learner:\n  weight_decay: .NaN\n", "learner.weight_decay: must be a finite number, got nan"),
]


@pytest.mark.parametrize(("content", "message"), _params(CONFIG_FILE_CASES))
def test_lipo_refuses_bad_config_files(
    refuse_training: RefuseTraining, tmp_path: Path, content: bytes, message: str
) -> None:
    config = tmp_path / "run.yaml"
    config.write_bytes(content)
    err = refuse_training(write_red_dataset(tmp_path / "data", [ROW]), config)
    assert f"{config}: {message}" in err
    assert err.count(str(config)) == 1 and "<unicode string>" not in err


def test_lipo_names_a_missing_config_file_once(
    no_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "nope.yaml"
    err = _refused(lambda: _load_launcher("lipo")(["--config", str(config)]), capsys, tmp_path)
    assert err.strip() == f"{config}: config file not found"


# ---------------------------------------------------------------------------------------------
# launch/lipo.py: an earlier run in the run directory (fresh start and --resume)


def _earlier_run(run: Path, state: str | None) -> None:
    """An earlier run's metrics and, with `state`, one checkpoint (step 2) with that state file."""
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\n')
    if state is not None:
        step = run / "checkpoints" / "step-000002"
        stand_in_model(fill_checkpoint(step) / "model")
        (step / "trainer_state.json").write_text(state)


_STATE = json.dumps({"step": 2, "weight_version": 2, "order": {"rollout.n": 99, "learner.num_workers": 1}})


@pytest.mark.parametrize(
    "resume, state, message",
    _params(
        [
            ("fresh run over metrics", False, None, r"metrics\.jsonl\): pass --resume"),
            ("fresh run over a checkpoint", False, _STATE, r"step-000002.*pass --resume"),
            ("resume with metrics only", True, None, r"metrics\.jsonl\): nothing complete to resume"),
            (
                "resume a corrupt state",
                True,
                '{"step": 2',
                r"nothing complete.*step-000002: trainer_state\.json does not",
            ),
            (
                "resume another data order",
                True,
                _STATE,
                r"step-000002: saved under other settings \(.*rollout\.n 99 -> 4",
            ),
        ]
    ),
)
def test_lipo_never_writes_over_an_earlier_run(
    no_ray: None,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    resume: bool,
    state: str | None,
    message: str,
) -> None:
    _earlier_run(tmp_path / "out" / "x", state)
    args = [
        "--config",
        str(QUICKSTART),
        f"model.path={tiny_model_dir}",
        f"data.train_files=[{write_red_dataset(tmp_path / 'data', [ROW])}]",
        "data.val_files=[]",
        "data.task=vqa",
        f"trainer.output_dir={tmp_path / 'out'}",
        "trainer.experiment_name=x",
        "learner.num_workers=1",
        *(["--resume"] if resume else []),
    ]
    err = _refused(lambda: _load_launcher("lipo")(args), capsys, tmp_path)
    assert re.search(message, err, flags=re.S), err


# ---------------------------------------------------------------------------------------------
# launch/lipo.py: dataset rows (the loader is shared with evaluation)


def _deep(depth: int) -> str:
    return '{"question": ' + "[" * depth + "]" * depth + "}"


# (case id, rows of train.jsonl (row 1 is good), location named after the file, problem text)
ROW_CASES: list[tuple[str, list[dict[str, Any] | str], str, str]] = [
    (
        "missing column",
        [ROW, {k: v for k, v in ROW.items() if k != "answer"}],
        "row 2, column 'answer'",
        "missing",
    ),
    ("unknown column", [ROW, {**ROW, "anwser": "red"}], "row 2, column 'anwser'", "unknown column"),
    (
        "null question",
        [ROW, {**ROW, "question": None}],
        "row 2, column 'question'",
        "expected str, got NoneType",
    ),
    ("blank answer", [ROW, {**ROW, "answer": " \t"}], "row 2, column 'answer'", "must not be empty"),
    (
        "absolute image path",
        [ROW, {**ROW, "images": ["/etc/hostname"]}],
        "row 2, column 'images[0]'",
        "relative",
    ),
    ("image path with ..", [ROW, {**ROW, "images": ["../secret.png"]}], "row 2, column 'images[0]'", "inside"),
    ("missing image", [ROW, {**ROW, "images": ["images/gone.png"]}], "row 2, column 'images[0]'", "not found"),
    (
        "not an image",
        [ROW, {**ROW, "images": ["train.jsonl"]}],
        "row 2, column 'images[0]'",
        "not a known image",
    ),
    (
        "image entry a number",
        [ROW, {**ROW, "images": [3]}],
        "row 2, column 'images[0]'",
        "expected a relative path",
    ),
    ("bad base64", [ROW, {**ROW, "images": [{"bytes": "%%%"}]}], "row 2, column 'images[0]'", "invalid base64"),
    ("deep nesting", [ROW, _deep(200_000)], "row 2", "invalid JSON: nested too deeply to parse"),
    ("invalid JSON", [ROW, '{"question": "x"'], "row 2", "invalid JSON"),
    ("not an object", [ROW, '"a string"'], "row 2", "expected a JSON object, got str"),
    ("duplicate ids", [{**ROW, "id": "q"}, {**ROW, "id": "q"}], "row 2, column 'id'", "duplicate id 'q'"),
    ("other task", [ROW, {**ROW, "task": "math"}], "row 2, column 'task'", "differs from the configured 'vqa'"),
    ("unknown task", [ROW, {**ROW, "task": "poetry"}], "row 2, column 'task'", "unknown task 'poetry'"),
]


@pytest.mark.parametrize(("rows", "location", "problem"), _params(ROW_CASES))
def test_lipo_refuses_bad_rows(
    refuse_training: RefuseTraining, tmp_path: Path, rows: list[dict[str, Any] | str], location: str, problem: str
) -> None:
    train = write_red_dataset(tmp_path / "data", rows)
    (line,) = [line for line in refuse_training(train).splitlines() if f"{train}, {location}: " in line]
    assert problem in line


def test_lipo_refuses_an_image_symlink_out_of_the_dataset(refuse_training: RefuseTraining, tmp_path: Path) -> None:
    train = write_red_dataset(tmp_path / "data", [ROW, {**ROW, "images": ["images/link.png"]}])
    Image.new("RGB", (56, 56)).save(tmp_path / "private.png")
    (tmp_path / "data" / "images" / "link.png").symlink_to(tmp_path / "private.png")
    err = refuse_training(train)
    assert f"{train}, row 2, column 'images[0]': path 'images/link.png' leads to {tmp_path / 'private.png'}" in err


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("empty.jsonl", "", "contains no rows"),
        ("blank.jsonl", "\n \n", "contains no rows"),
        ("gone.jsonl", None, "no such file"),
        ("rows.csv", "a,b\n", "unsupported file type '.csv'"),
    ],
)
def test_lipo_refuses_bad_data_files(
    refuse_training: RefuseTraining, tmp_path: Path, name: str, content: str | None, problem: str
) -> None:
    train = tmp_path / name
    if content is not None:
        train.write_text(content)
    assert f"{train}: {problem}" in refuse_training(train)


# ---------------------------------------------------------------------------------------------
# python -m tiny_r1v.data.convert


def _chart_parquet(path: Path, colours: list[tuple[int, int, int]]) -> Path:
    images = []
    for colour in colours:
        buffer = io.BytesIO()
        Image.new("RGB", (56, 56), colour).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "image": pa.array(images, type=image_type),
            "query": [f"Question {i}?" for i in range(len(colours))],
            "label": [str(i) for i in range(len(colours))],
        }
    )
    pq.write_table(table, path)
    return path


@pytest.fixture
def chart_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """(a Parquet export, a dataset already converted from it into tmp_path/out)."""
    source = _chart_parquet(tmp_path / "chart.parquet", [(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    convert.main(["chartqa", "--out", str(tmp_path / "out"), "--input", str(source)])
    return source, tmp_path / "out"


def test_convert_refuses_to_replace_an_existing_split(
    chart_dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = chart_dataset
    argv = ["chartqa", "--out", str(out), "--input", str(source), "--limit", "1"]
    err = _refused(lambda: convert.main(argv), capsys, tmp_path)
    assert f"error: {out / 'train.jsonl'}: exists; pass --overwrite to replace it" in err


def test_convert_refuses_to_replace_an_image_with_other_bytes(
    chart_dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out = chart_dataset
    other = _chart_parquet(tmp_path / "other.parquet", [(9, 9, 9)])
    (out / "train.jsonl").rename(tmp_path / "kept.jsonl")  # only the images are left in out/
    argv = ["chartqa", "--out", str(out), "--input", str(other)]
    err = _refused(lambda: convert.main(argv), capsys, tmp_path)
    assert err == f"error: {out / 'images' / 'chartqa-train-0-0.png'}: exists; pass --overwrite to replace it\n"


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_convert_never_writes_over_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overwrite: list[str]
) -> None:
    (tmp_path / "out").mkdir()
    source = _chart_parquet(tmp_path / "out" / "train.jsonl", [(1, 2, 3)])
    argv = ["chartqa", "--out", str(tmp_path / "out"), "--input", str(source), *overwrite]
    err = _refused(lambda: convert.main(argv), capsys, tmp_path)
    assert f"error: {source}: is an input of this conversion" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--limit", "0"], "--limit: must be >= 1, got 0"),
        (["--limit", "-3"], "--limit: must be >= 1, got -3"),
        (["--limit", "ten"], "--limit: invalid _positive_int value: 'ten'"),
        (["--split", "validation"], "--split: invalid choice: 'validation'"),
        (["--seed", "1.5"], "--seed: invalid int value: '1.5'"),
    ],
)
def test_convert_refuses_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    source = _chart_parquet(tmp_path / "chart.parquet", [(1, 2, 3)])
    argv = ["chartqa", "--out", str(tmp_path / "out"), "--input", str(source), *options]
    err = _refused(lambda: convert.main(argv), capsys, tmp_path)
    assert message in err
    assert not (tmp_path / "out").exists()


def test_convert_refuses_an_output_directory_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _chart_parquet(tmp_path / "chart.parquet", [(1, 2, 3)])
    (tmp_path / "out").write_text("a file, not a directory\n")
    argv = ["chartqa", "--out", str(tmp_path / "out"), "--input", str(source)]
    err = _refused(lambda: convert.main(argv), capsys, tmp_path)
    assert f"error: {tmp_path / 'out'}: output directory exists as a file" in err


# ---------------------------------------------------------------------------------------------
# launch/eval.py


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    return write_red_dataset(tmp_path / "bench", [ROW], name="bench.jsonl")


EVAL_CASES: list[tuple[str, Callable[[Path, Path, Path], list[str]], str]] = [
    ("unknown model name", lambda m, b, t: ["--models", "nosuch", "--benchmarks", str(b)],
     "model 'nosuch': "),
    ("duplicate model names", lambda m, b, t: ["--models", f"a={m},a={m}", "--benchmarks", str(b)],
     "model name 'a' is given twice"),
    ("duplicate benchmark names", lambda m, b, t: ["--models", str(m), "--benchmarks", f"x={b},x={b}"],
     "benchmark name 'x' is given twice"),
    ("missing benchmark file", lambda m, b, t: ["--models", str(m), "--benchmarks", str(t / "gone.jsonl")],
     "benchmark 'gone': no such file "),
    ("nan in the eval config", lambda m, b, t: ["--models", str(m), "--benchmarks", str(b), "decoding.top_p=.nan"],
     "decoding.top_p: must be a finite number, got nan"),
    ("unknown eval key", lambda m, b, t: ["--models", str(m), "--benchmarks", str(b), "decoding.beams=2"],
     "decoding.beams: unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), _params(EVAL_CASES))
def test_eval_refuses_bad_input(
    no_ray: None,
    tiny_model_dir: Path,
    bench: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: Callable[[Path, Path, Path], list[str]],
    message: str,
) -> None:
    main = _load_launcher("eval")
    args = [*argv(tiny_model_dir, bench, tmp_path), "--out", str(tmp_path / "out")]
    err = _refused(lambda: main(args), capsys, tmp_path)
    assert message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (
            {**ROW, "images": ["../../etc/hostname"]},
            "column 'images[0]': path '../../etc/hostname' must be relative",
        ),
        ({**ROW, "answer": 7}, "column 'answer': expected str, got int"),
        (_deep(100_000), "invalid JSON: nested too deeply to parse"),
    ],
)
def test_eval_refuses_bad_benchmark_rows(
    no_ray: None,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    row: dict[str, Any] | str,
    problem: str,
) -> None:
    path = write_red_dataset(tmp_path / "bench", [ROW, row], name="hard.jsonl")
    args = ["--models", str(tiny_model_dir), "--benchmarks", str(path), "--out", str(tmp_path / "out")]
    err = _refused(lambda: _load_launcher("eval")(args), capsys, tmp_path)
    assert f"benchmark 'hard': {path}, row 2" in err and problem in err


# ---------------------------------------------------------------------------------------------
# rewards: a bad request fails in the caller, before any worker runs it


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"task": "geometry"}, ValueError, "unknown task 'geometry'"),
        ({"response": None}, TypeError, "response must be a str, got NoneType"),
        ({"response": b"\\boxed{1}"}, TypeError, "response must be a str, got bytes"),
        ({"ground_truth": 1.0}, TypeError, "ground_truth must be a str, got float"),
        ({"prompt_format": "xml"}, ValueError, "unknown prompt_format 'xml'"),
        ({"format_weight": -0.1}, ValueError, r"format_weight must be in \[0, 1\], got -0.1"),
        ({"format_weight": float("inf")}, ValueError, r"format_weight must be in \[0, 1\], got inf"),
        ({"format_weight": float("nan")}, ValueError, r"format_weight must be in \[0, 1\], got nan"),
        ({"format_weight": None}, TypeError, "format_weight must be a number, got NoneType"),
    ],
)
def test_score_request_refuses_bad_values(fields: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=f"^{message}"):
        ScoreRequest(**{"task": "math", "response": r"\boxed{1}", "ground_truth": "1", **fields})
