"""What is evaluated: command-line items -> model directories and loaded benchmarks, checked up front.

A `--models` item is a name from the config's `models`, `name=DIR`, or a bare `DIR` (named after
the directory). DIR is a model directory or a training run directory, as the merge accepts them
(`tiny_r1v.trainer.checkpoint.resolve_model_dir`). A `--benchmarks` item is a config name, `name=FILE` or a
bare `FILE`. Everything here runs before Ray or an engine starts, so bad input stops the run at
once with a message naming the model, the file or the row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tiny_r1v.config import ConfigError, ModelRef
from tiny_r1v.data import DatasetError, Example, load_examples
from tiny_r1v.eval.config import BenchmarkSpec, EvalConfig
from tiny_r1v.trainer.checkpoint import CheckpointError, resolve_model_dir


class EvalError(ValueError):
    """Inputs that cannot be evaluated; the message names the model, benchmark file or row."""


@dataclass(frozen=True)
class ModelSource:
    name: str
    """Label in tables and file names."""
    model_dir: Path
    """Absolute model directory (an actor's working directory is not the driver's)."""
    fingerprint: str
    """Identity of the directory's contents as files (see `fingerprint`)."""
    serving: str
    """What an engine serving it depends on besides its weights (see `serving_digest`)."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    """Label in tables and file names."""
    path: Path
    """Absolute path of the dataset file."""
    examples: tuple[Example, ...]
    """The validated rows, in file order."""
    digest: str
    """Hash of the file's bytes and its image files' sizes and times (see `benchmark_digest`)."""


def split_items(text: str) -> list[str]:
    """`a=x,b,c=y` -> ['a=x', 'b', 'c=y'] (empty items dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _named(item: str) -> tuple[str | None, str]:
    name, sep, rest = item.partition("=")
    return (name.strip(), rest.strip()) if sep else (None, item)


def fingerprint(directory: Path) -> str:
    """sha256 over the directory's resolved path and each file's relative path, size and mtime.

    Hashing the weights themselves would cost tens of seconds per 3B checkpoint on every run;
    checkpoints are written once and renamed into place, so path + size + time change whenever
    the contents do.
    """
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    stats = [(str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps([str(directory.resolve()), stats]).encode()).hexdigest()


SERVING_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
"""The files of a model directory that vLLM and the processor read, apart from the weights."""

# Labels in config.json that say where and by which version it was written, not what it serves.
_CONFIG_LABELS = ("_name_or_path", "transformers_version")


def serving_digest(directory: Path) -> str:
    """sha256 over `SERVING_FILES` (config.json without its labels): two model directories with
    equal digests are served by the same engine, the weights aside, so one engine can evaluate
    both, loading the second's weights in place."""
    digest = hashlib.sha256()
    for name in SERVING_FILES:
        path = directory / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if name == "config.json":
            config = {k: v for k, v in json.loads(data).items() if k not in _CONFIG_LABELS}
            data = json.dumps(config, sort_keys=True).encode()
        digest.update(f"{name}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()


def benchmark_digest(path: Path, examples: Sequence[Example]) -> str:
    """sha256 over the file's bytes and each image file's path, size and mtime (embedded images
    are in the bytes already)."""
    digest = hashlib.sha256(path.read_bytes())
    images = sorted({ref for example in examples for ref in example.images if isinstance(ref, Path)})
    stats = [(str(ref), ref.stat().st_size, ref.stat().st_mtime_ns) for ref in images]
    digest.update(json.dumps(stats).encode())
    return digest.hexdigest()


def resolve_models(cfg: EvalConfig, items: Sequence[str]) -> list[ModelSource]:
    """The models to evaluate: `items`, or every model of the config when empty."""
    known = {spec.name: spec for spec in cfg.models}
    specs = [known[item] if item in known else _model_spec(item) for item in items] or list(cfg.models)
    if not specs:
        raise EvalError("no models: give --models name=DIR,... or list them in the config's `models`")
    _check_unique("model", [spec.name for spec in specs])
    sources = []
    for spec in specs:
        try:
            directory = resolve_model_dir(Path(spec.path), spec.step, f"model {spec.name!r}")
        except CheckpointError as err:
            raise EvalError(str(err)) from None
        sources.append(ModelSource(spec.name, directory, fingerprint(directory), serving_digest(directory)))
    return sources


def _model_spec(item: str) -> ModelRef:
    name, path = _named(item)
    if name is None:
        # A run directory names its run; `.../step-N/model` would be named "model": give name=DIR.
        name = Path(path).resolve().name
    spec = ModelRef(name=name, path=path)
    _validate_label(spec, f"model item {item!r}")
    return spec


def resolve_benchmarks(cfg: EvalConfig, items: Sequence[str]) -> list[Benchmark]:
    """The benchmarks to run, every row loaded and validated (images decoded)."""
    known = {spec.name: spec for spec in cfg.benchmarks if spec.name is not None}
    specs = [known[item] if item in known else _benchmark_spec(item) for item in items] or list(cfg.benchmarks)
    if not specs:
        raise EvalError("no benchmarks: give --benchmarks FILE,... or list them in the config's `benchmarks`")
    names = benchmark_names([Path(spec.path) for spec in specs], [spec.name for spec in specs])
    benchmarks = []
    for spec, name in zip(specs, names, strict=True):
        path = Path(spec.path).absolute()
        if not path.is_file():
            raise EvalError(f"benchmark {name!r}: no such file {path}")
        try:
            # Ids are unique per file only: benchmarks are loaded one by one, never merged.
            examples = load_examples(path, min_pixels=cfg.prompt.min_pixels, max_pixels=cfg.prompt.max_pixels)
        except DatasetError as err:
            raise EvalError(f"benchmark {name!r}: {err}") from None
        limit = cfg.engine.max_images_per_prompt
        for example in examples:
            # vLLM would reject the prompt mid-run, after the engines started.
            if len(example.images) > limit:
                raise EvalError(
                    f"benchmark {name!r}: example {example.uid!r} has {len(example.images)} images, "
                    f"more than engine.max_images_per_prompt ({limit})"
                )
        benchmarks.append(Benchmark(name, path, tuple(examples), benchmark_digest(path, examples)))
    return benchmarks


def _benchmark_spec(item: str) -> BenchmarkSpec:
    name, path = _named(item)
    spec = BenchmarkSpec(path=path, name=name)
    _validate_label(spec, f"benchmark item {item!r}")
    return spec


def benchmark_names(paths: Sequence[Path], given: Sequence[str | None]) -> list[str]:
    """Given names, else file stems; stems shared by several files (converters write `test.jsonl`
    into each benchmark's directory) become `<directory>-<stem>`."""
    stems = [path.stem for path in paths]
    names = [
        name if name is not None else (f"{path.parent.name}-{path.stem}" if stems.count(path.stem) > 1 else path.stem)
        for path, name in zip(paths, given, strict=True)
    ]
    _check_unique("benchmark", names)
    return names


def _check_unique(kind: str, names: Sequence[str]) -> None:
    for name in names:
        if names.count(name) > 1:
            raise EvalError(f"{kind} name {name!r} is given twice; name them apart with name=PATH")


def _validate_label(spec: ModelRef | BenchmarkSpec, where: str) -> None:
    try:
        spec.validate()
    except ConfigError as err:
        raise EvalError(f"{where}: {err}") from None
