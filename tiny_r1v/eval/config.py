"""Schema of an evaluation run (SPEC §4), loaded with `tiny_r1v.config.load_config`.

The prompt, engine and reward sections are the training config's own types, so a benchmark is
prompted, generated and scored exactly as training data is. Decoding is the one place evaluation
differs from training: greedy by default, and a single sample per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from tiny_r1v.config.loader import require, section
from tiny_r1v.config.model_ref import ModelRef, require_label
from tiny_r1v.config.train import EngineConfig, PromptConfig, RewardConfig, TrainConfig


@dataclass(frozen=True)
class BenchmarkSpec:
    path: str
    """Dataset file in the format of `tiny_r1v.data` (JSONL or Parquet); each row's task picks its reward."""
    name: str | None = None
    """Label in tables and file names; null: the file's stem (made unique with its directory)."""

    def validate(self) -> None:
        require(self.path != "", "path", "must not be empty")
        if self.name is not None:
            require_label(self.name)


@dataclass(frozen=True)
class DecodingConfig:
    temperature: float = 0.0
    """Sampling temperature; 0 is greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]; ignored when greedy."""
    n: int = 1
    """Samples per prompt (k); accuracy is then the mean over all k. Must be 1 when greedy."""
    seed: int = 1
    """Sampling seed: sample k of prompt i of a benchmark draws with (seed + i) * n + k, for every
    model alike."""

    def validate(self) -> None:
        require(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.n >= 1, "n", f"must be >= 1, got {self.n}")
        require(
            self.temperature > 0 or self.n == 1,
            "n",
            f"greedy decoding (temperature 0) gives {self.n} identical samples; use n 1 or temperature > 0",
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class EvalConfig:
    models: tuple[ModelRef, ...] = ()
    """Known models; `--models` picks some by name (or gives `name=DIR` instead). Empty: `--models` is required."""
    benchmarks: tuple[BenchmarkSpec, ...] = ()
    """Known benchmarks; `--benchmarks` picks some by name (or gives files instead)."""
    output_dir: str = "outputs/eval"
    """Where the tables, the plot and the per-sample outputs (the cache) go."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the engines run; auto = cuda when available."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Engine dtype; auto = bfloat16 on GPU, float32 on CPU (as in training)."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model directories."""
    max_parallel: int | None = None
    """Most models evaluated at once (one engine each); null: as many as the GPUs hold
    (GPUs // engine.tensor_parallel_size), one on CPU."""
    verbose: bool = False
    """Print the engines' output and Ray's and vLLM's INFO lines on the console; otherwise they go
    to `<output_dir>/logs/` (`launch/eval.py --verbose` or TINY_R1V_VERBOSE=1 set it)."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """Prompt construction: the training config's `data` settings of the same names."""
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    """Decoding, the same for every model."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """vLLM engine size and generation limit: the training config's `rollout` settings of the same names."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Scoring: the training config's `reward` section (`format_weight` enters the total reward only)."""

    def validate(self) -> EvalConfig:
        require(self.output_dir != "", "output_dir", "must not be empty")
        if self.max_parallel is not None:
            require(self.max_parallel >= 1, "max_parallel", f"must be >= 1, got {self.max_parallel}")
        for key, specs in (("models", self.models), ("benchmarks", self.benchmarks)):
            names = [spec.name for spec in specs]
            for i, spec in enumerate(specs):
                with section(f"{key}[{i}]"):
                    spec.validate()
                require(
                    spec.name is None or spec.name not in names[:i], f"{key}[{i}].name", f"duplicate name {spec.name!r}"
                )
        for name in ("prompt", "decoding", "engine", "reward"):
            with section(name):
                getattr(self, name).validate()
        return self


def like_training(train: TrainConfig, output_dir: str | Path, samples: int = 0) -> EvalConfig:
    """An evaluation of models trained with ``train``: its device, dtype, prompts, engine and
    rewards; greedy when ``samples`` is 0, else ``samples`` per prompt drawn as the rollouts draw
    (their temperature and top_p)."""
    rollout = train.rollout
    decoding = DecodingConfig(temperature=rollout.temperature, top_p=rollout.top_p, n=samples) if samples else None
    return EvalConfig(
        output_dir=str(output_dir),
        device=train.trainer.device,
        dtype=train.model.dtype,
        prompt=PromptConfig(**{f.name: getattr(train.data, f.name) for f in fields(PromptConfig)}),
        decoding=decoding or DecodingConfig(),
        engine=EngineConfig(**{f.name: getattr(rollout, f.name) for f in fields(EngineConfig)}),
        reward=train.reward,
    ).validate()
