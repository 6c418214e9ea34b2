"""Run start-up: the driver's port lookup against a whole actor graph's start.

    python bench/bench_start.py [--model DIR] [--repeats 5] [--graphs 3]

Without --model it builds the tiny test model. On a local Ray instance, each figure is the median
of its repeats (the two lookups take turns within each repeat):

- port lookup: the Ray task a run's driver sends to the learners' first bundle for a free port
  (`tiny_r1v.trainer.ports.free_port`), each time in a fresh worker, as every run start does;
- baseline: the same lookup in a fresh worker that first imports `tiny_r1v.trainer.actors`, the
  module the lookup lived in before (torch, transformers and what they import);
- actor graph: `ActorGraph` on the quickstart config, from its creation until its learners,
  rollout worker and scorer answer and through its shutdown (lookup included; ``--graphs`` times).

The lookup runs before any actor exists, so what it saves comes off every run's start.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ray

from tiny_r1v.config import load_config
from tiny_r1v.config.train import TrainConfig
from tiny_r1v.models.tiny import build_tiny_model
from tiny_r1v.trainer.actors import ActorGraph
from tiny_r1v.trainer.ports import free_port

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def lookup_after_import(module: str) -> tuple[str, int]:
    """The port lookup in a worker that has imported `module` first."""
    importlib.import_module(module)
    return free_port()


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def graph_start(cfg: TrainConfig) -> None:
    graph = ActorGraph(cfg, None)
    ray.get([actor.__ray_ready__.remote() for actor in (*graph.learners, *graph.rollouts, graph.scorer)])
    graph.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--graphs", type=int, default=3)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp())
    model = args.model or build_tiny_model(out / "tiny", seed=0)
    cfg = load_config(TrainConfig, QUICKSTART, [f"model.path={model}", f"trainer.output_dir={out / 'runs'}"])

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    # max_calls=1: the worker exits after the task, so each call imports its module afresh.
    lookup = ray.remote(num_cpus=0, max_calls=1)(lookup_after_import)
    paths = {
        "port lookup (tiny_r1v.trainer.ports)": "tiny_r1v.trainer.ports",
        "baseline: after tiny_r1v.trainer.actors": "tiny_r1v.trainer.actors",
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, module in paths.items():
            times[name].append(seconds(lambda module=module: ray.get(lookup.remote(module))))
    graph = [seconds(lambda: graph_start(cfg)) for _ in range(args.graphs)]
    ray.shutdown()

    baseline = statistics.median(times["baseline: after tiny_r1v.trainer.actors"])
    print(f"median of {args.repeats} (lookups), {args.graphs} (actor graph)")
    print(f"{'path':42s} {'seconds':>8s} {'vs baseline':>12s}")
    for name, values in times.items():
        print(f"{name:42s} {statistics.median(values):8.2f} {statistics.median(values) / baseline:12.3f}")
    print(f"{'actor graph: start, ready, shut down':42s} {statistics.median(graph):8.2f}")


if __name__ == "__main__":
    main()
