"""Evaluation (SPEC §4): every model on every benchmark with the same prompt and decoding,
scored by the training reward functions; accuracy and generated tokens side by side.

`config` (schema), `inputs` (models and benchmarks, checked up front), `generate` (one model's
engine), `metrics` (per-sample records and the table's figures, pure), `report` (Markdown, CSV,
JSON, plot), `cache` (per-sample files reused across runs), `runner` (the driver on Ray).
"""

from tiny_r1v.eval.config import BenchmarkSpec, DecodingConfig, EvalConfig
from tiny_r1v.eval.inputs import EvalError

__all__ = ["BenchmarkSpec", "DecodingConfig", "EvalConfig", "EvalError"]
