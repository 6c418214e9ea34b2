"""Rollout overhead: the same prompts through bare vLLM, our RolloutEngine, and the Ray actor.

    python bench/bench_rollout.py [--model DIR] [--prompts 16] [--n 4] [--max-tokens 64] [--repeats 5]

Without --model it builds the tiny test model. All three paths share one engine configuration
and sample with the same seeds, so they generate the same tokens; the figure is generated tokens
per second (median over repeats) and its ratio to bare vLLM measured in this same run. Goal:
ours >= 0.95 of bare.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import ray
from PIL import Image
from transformers import AutoProcessor
from vllm import SamplingParams

from tiny_r1v.config import load_config
from tiny_r1v.config.train import TrainConfig
from tiny_r1v.models.tiny import build_tiny_model
from tiny_r1v.protocol import Prompt
from tiny_r1v.rollout.engine import RolloutEngine, build_llm
from tiny_r1v.trainer.actors import RolloutWorker

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def make_prompts(model: Path, count: int) -> list[Prompt]:
    processor = AutoProcessor.from_pretrained(model)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}],
        add_generation_prompt=True,
    )
    return [Prompt(f"p{i}", text, (Image.new("RGB", (56 + 28 * (i % 3), 56), (40 * (i % 6), 90, 160)),)) for i in range(count)]


def timed(fn, repeats: int) -> tuple[float, int]:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up, and its token count."""
    tokens = fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = args.model or build_tiny_model(Path(tempfile.mkdtemp()) / "tiny", seed=0)
    cfg = load_config(
        TrainConfig,
        QUICKSTART,
        [f"model.path={model}", f"rollout.n={args.n}", f"rollout.max_response_length={args.max_tokens}"],
    )
    prompts = make_prompts(model, args.prompts)
    seed = 1234

    llm = build_llm(cfg)
    engine = RolloutEngine(llm, cfg)
    requests = [{"prompt": p.text, "multi_modal_data": {"image": list(p.images)}} for p in prompts]
    # Bare vLLM with exactly the sampling our engine asks for (log-probs of the sampled tokens).
    bare_params = []
    for i in range(len(prompts)):
        params = engine.sampling.clone()
        params.seed = seed + i
        bare_params.append(params)
    assert isinstance(bare_params[0], SamplingParams)

    def bare() -> int:
        outputs = llm.generate(requests, bare_params, use_tqdm=False)
        return sum(len(s.token_ids) for o in outputs for s in o.outputs)

    def ours() -> int:
        return sum(len(c.token_ids) for c in engine.generate(prompts, seed=seed))

    results = {"bare vLLM": timed(bare, args.repeats), "RolloutEngine": timed(ours, args.repeats)}
    llm.llm_engine.engine_core.shutdown()
    del llm, engine

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    worker = ray.remote(RolloutWorker).remote(cfg, str(model), 0)

    def actor() -> int:
        return sum(len(c.token_ids) for c in ray.get(worker.generate.remote(prompts, seed)))

    results["RolloutWorker (Ray actor)"] = timed(actor, args.repeats)
    ray.shutdown()

    base_seconds, base_tokens = results["bare vLLM"]
    print(f"{args.prompts} prompts x {args.n} samples, <= {args.max_tokens} tokens, median of {args.repeats}")
    print(f"{'path':28s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>8s} {'vs bare':>8s}")
    for name, (seconds, tokens) in results.items():
        ratio = (tokens / seconds) / (base_tokens / base_seconds)
        print(f"{name:28s} {tokens:7d} {seconds:8.3f} {tokens / seconds:8.1f} {ratio:8.3f}")


if __name__ == "__main__":
    main()
