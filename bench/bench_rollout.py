"""Rollout overhead: the same prompts through bare vLLM, our RolloutEngine, and the Ray actor.

    python bench/bench_rollout.py [--model DIR] [--prompts 16] [--n 4] [--max-tokens 64] [--repeats 5]

Without --model it builds the tiny test model. All three paths share one engine configuration
and sample with the same seeds, so they generate the same tokens; the figure is generated tokens
per second (median over repeats) and its ratio to bare vLLM measured in this same run (the paths
take turns within each repeat). Goal:
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
from tiny_r1v.rollout.engine import RolloutEngine
from tiny_r1v.rollout.sampling import sample_seed
from tiny_r1v.trainer.actors import RolloutWorker, build_rollout_llm, rollout_sampling

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def make_prompts(model: Path, count: int) -> list[Prompt]:
    processor = AutoProcessor.from_pretrained(model)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}],
        add_generation_prompt=True,
    )
    images = [Image.new("RGB", (56 + 28 * (i % 3), 56), (40 * (i % 6), 90, 160)) for i in range(count)]
    return [Prompt(f"p{i}", text, (image,)) for i, image in enumerate(images)]


def interleaved(paths: dict, repeats: int) -> dict[str, tuple[float, int]]:
    """Median seconds per path and its token count; one warm-up each, then the paths take
    turns in every repeat so that load drifting on a noisy machine hits them alike."""
    tokens = {name: fn() for name, fn in paths.items()}
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: (statistics.median(seconds[name]), tokens[name]) for name in paths}


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

    llm = build_rollout_llm(cfg)
    engine = RolloutEngine(llm, rollout_sampling(cfg))
    requests = [{"prompt": p.text, "multi_modal_data": {"image": list(p.images)}} for p in prompts]
    # Bare vLLM with exactly the sampling our engine asks for (log-probs of the sampled tokens).
    bare_params = []
    for i in range(len(prompts)):
        params = engine.sampling.clone()
        params.seed = sample_seed(seed, i, args.n)
        bare_params.append(params)
    assert isinstance(bare_params[0], SamplingParams)

    def bare() -> int:
        outputs = llm.generate(requests, bare_params, use_tqdm=False)
        return sum(len(s.token_ids) for o in outputs for s in o.outputs)

    def ours() -> int:
        return sum(len(c.token_ids) for c in engine.generate(prompts, seed=seed))

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    worker = ray.remote(RolloutWorker).remote(cfg)

    def actor() -> int:
        return sum(len(c.token_ids) for c in ray.get(worker.generate.remote(prompts, seed, 0)).completions)

    results = interleaved({"bare vLLM": bare, "RolloutEngine": ours, "RolloutWorker (Ray actor)": actor}, args.repeats)
    ray.shutdown()
    llm.llm_engine.engine_core.shutdown()

    base_seconds, base_tokens = results["bare vLLM"]
    print(f"{args.prompts} prompts x {args.n} samples, <= {args.max_tokens} tokens, median of {args.repeats}")
    print(f"{'path':28s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>8s} {'vs bare':>8s}")
    for name, (seconds, tokens) in results.items():
        ratio = (tokens / seconds) / (base_tokens / base_seconds)
        print(f"{name:28s} {tokens:7d} {seconds:8.3f} {tokens / seconds:8.1f} {ratio:8.3f}")


if __name__ == "__main__":
    main()
