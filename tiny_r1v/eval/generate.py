"""One model's engine: renders benchmark prompts as training does and generates responses.

`ModelEvaluator` is a plain class; the runner places one per model in a Ray actor. It reuses the
rollout engine (`tiny_r1v.rollout.engine`) and the training prompt (`tiny_r1v.data.build_messages`
through the model's own chat template), and decodes responses the way the reward scorer does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from tiny_r1v.config.train import DataConfig, ModelConfig, RolloutConfig, TrainConfig, TrainerConfig
from tiny_r1v.data import Example, build_messages
from tiny_r1v.eval.config import EvalConfig
from tiny_r1v.protocol import Prompt

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


def engine_config(cfg: EvalConfig, model_dir: str) -> TrainConfig:
    """The settings `build_llm` and `RolloutEngine` read, carried in the training schema.

    Never validated: greedy decoding (temperature 0, one sample) breaks training's rules on
    purpose, and there are no training files.
    """
    return TrainConfig(
        data=DataConfig(train_files=(), **asdict(cfg.prompt)),
        model=ModelConfig(path=model_dir, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code),
        rollout=RolloutConfig(
            **asdict(cfg.engine),
            n=cfg.decoding.n,
            temperature=cfg.decoding.temperature,
            top_p=cfg.decoding.top_p,
            seed=cfg.decoding.seed,
        ),
        trainer=TrainerConfig(device=cfg.device),
    )


class ModelEvaluator:
    """Generates a benchmark's responses with one model.

    Args:
        llm: an engine already built for `model_dir` with `engine_config`'s settings (tests
            share one); None builds it.
    """

    def __init__(self, cfg: EvalConfig, model_dir: str, llm: LLM | None = None) -> None:
        from transformers import AutoProcessor

        from tiny_r1v.rollout.engine import RolloutEngine, build_llm

        train_cfg = engine_config(cfg, model_dir)
        self.cfg = cfg
        self.engine = RolloutEngine(llm if llm is not None else build_llm(train_cfg), train_cfg)
        # The model's own processor: its chat template and tokenizer are part of the checkpoint.
        self.processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)

    def generate(self, examples: Sequence[Example]) -> list[Generation]:
        """k responses per example, grouped in example order."""
        prompts = [
            Prompt(
                uid=example.uid,
                text=self.processor.apply_chat_template(
                    build_messages(example, self.cfg.prompt.prompt_format), add_generation_prompt=True, tokenize=False
                ),
                images=tuple(example.load_images()),
            )
            for example in examples
        ]
        # One call per benchmark, so prompt i samples with the same seeds whichever model runs it.
        completions = self.engine.generate(prompts, seed=self.cfg.decoding.seed)
        texts = self.processor.tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True)
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
