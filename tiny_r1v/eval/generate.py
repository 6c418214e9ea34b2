"""One model's engine: renders benchmark prompts as training does and generates responses.

`ModelEvaluator` is a plain class; the runner places one per model in a Ray actor. It reuses the
rollout engine (`tiny_r1v.rollout.engine`), the training prompt (`tiny_r1v.data.render_prompt`,
through the model's own chat template) and the scorer's decoding (`tiny_r1v.rewards.completions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tiny_r1v.console import quiet_actor
from tiny_r1v.data import Example, render_prompt
from tiny_r1v.eval.config import EvalConfig
from tiny_r1v.rewards.completions import decode
from tiny_r1v.rollout.sampling import EngineModel, SamplingSpec

if TYPE_CHECKING:
    from vllm import LLM


@dataclass(frozen=True)
class Generation:
    """One response, before scoring."""

    id: str
    """The example's id."""
    sample: int
    """Index among the prompt's k samples."""
    prompt: str
    response: str
    tokens: int
    finish_reason: str


def engine_model(cfg: EvalConfig, model_dir: str) -> EngineModel:
    """A model directory as every evaluation engine serves it (the config's device and dtype)."""
    return EngineModel.resolve(model_dir, cfg.dtype, cfg.device, cfg.trust_remote_code)


def sampling(cfg: EvalConfig) -> SamplingSpec:
    """The decoding every model is evaluated with."""
    d = cfg.decoding
    return SamplingSpec(n=d.n, temperature=d.temperature, top_p=d.top_p, max_tokens=cfg.engine.max_response_length)


def build_eval_llm(cfg: EvalConfig, model_dir: str) -> LLM:
    """The vLLM engine an evaluation actor runs for `model_dir` (tests build the same one)."""
    from tiny_r1v.rollout.engine import build_llm

    return build_llm(engine_model(cfg, model_dir), cfg.engine, cfg.prompt, cfg.decoding.seed)


class ModelEvaluator:
    """Generates a benchmark's responses with one model.

    Args:
        llm: an engine already built for `model_dir` by `build_eval_llm` (tests share one); None
            builds it.
    """

    def __init__(self, cfg: EvalConfig, model_dir: str, llm: LLM | None = None) -> None:
        quiet_actor(Path(cfg.output_dir) / "logs", "engine", cfg.verbose)  # before vLLM's import prints
        from tiny_r1v.rollout.engine import RolloutEngine

        self.cfg = cfg
        self.engine = RolloutEngine(llm if llm is not None else build_eval_llm(cfg, model_dir), sampling(cfg))
        self._serve(model_dir)

    def _serve(self, model_dir: str) -> None:
        from transformers import AutoProcessor

        self.model_dir = model_dir
        # The model's own processor: its chat template and tokenizer are part of the checkpoint.
        self.processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=self.cfg.trust_remote_code)

    def generate(self, examples: Sequence[Example], model_dir: str | None = None) -> list[Generation]:
        """k responses per example, grouped in example order, from `model_dir` (None: the current
        model). Another model is loaded into this engine in place first: only for one the engine
        serves alike (equal `tiny_r1v.eval.inputs.serving_digest`)."""
        if model_dir is not None and model_dir != self.model_dir:
            self.engine.load_model_dir(model_dir)
            self._serve(model_dir)
        fmt, position = self.cfg.prompt.prompt_format, self.cfg.prompt.image_position
        prompts = [render_prompt(self.processor, e, fmt, e.uid, position) for e in examples]
        # One call per benchmark, so prompt i samples with the same seeds whichever model runs it.
        completions = self.engine.generate(prompts, seed=self.cfg.decoding.seed)
        texts = decode(self.processor.tokenizer, completions)
        text_of = {prompt.uid: prompt.text for prompt in prompts}
        k = self.cfg.decoding.n
        return [
            Generation(
                id=completion.uid,
                sample=index % k,
                prompt=text_of[completion.uid],
                response=text,
                tokens=len(completion.token_ids),
                finish_reason=completion.finish_reason,
            )
            for index, (completion, text) in enumerate(zip(completions, texts, strict=True))
        ]
