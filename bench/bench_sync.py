"""Weight sync cost: learner weights into a rollout worker's vLLM engine, per GB, vs a memory copy.

    python bench/bench_sync.py [--hidden 1024] [--layers 8] [--repeats 5] [--bucket-mb 1024]

Builds a random Qwen2.5-VL checkpoint of the given size (the tiny model's tokenizer and vision
tower, a wider and deeper language model), then measures, each as the median of ``--repeats``:

- plain copy: ``torch`` clone of every tensor of the state dict in this process (the floor);
- object store: the state dict through Ray's object store into a task that only touches it, as
  a dict of torch tensors (pickled) and as byte arrays (``PackedWeights``, read in place);
- sync, object store: pack, ``RolloutWorker.load_weights`` (object store + vLLM's in-place reload);
- transfer engine, transport only: this process broadcasts the state dict (gloo, buckets of
  ``--bucket-mb``) to an actor that receives it through the same engine and drops it;
- sync, transfer engine: the same broadcast into ``RolloutWorker.receive_weights`` (vLLM's
  ``update_weights`` + the in-place reload), as ``rollout.weight_sync: transfer_engine`` runs.

The goal on CPU is sync <= 2x the plain copy per GB. The FSDP gather on the learners is not
part of this figure; the training metrics report it inside ``time/sync``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

from tiny_r1v.config import load_config
from tiny_r1v.config.train import TrainConfig
from tiny_r1v.models.tiny import build_tiny_model
from tiny_r1v.rollout.transfer import GLOO_BACKEND, WeightSender, bucket_bytes, register_gloo_engine, update_info
from tiny_r1v.trainer.actors import RolloutWorker
from tiny_r1v.trainer.ports import free_port
from tiny_r1v.trainer.weights import PackedWeights

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def build_model(directory: Path, hidden: int, layers: int) -> dict[str, torch.Tensor]:
    """A random checkpoint in ``directory``; returns its state dict."""
    build_tiny_model(directory, seed=0)
    config = AutoConfig.from_pretrained(directory)
    text = config.text_config
    text.hidden_size, text.num_hidden_layers, text.intermediate_size = hidden, layers, 4 * hidden
    text.num_attention_heads, text.num_key_value_heads = hidden // 64, max(1, hidden // 256)
    text.layer_types = ["full_attention"] * layers
    config.vision_config.out_hidden_size = hidden
    model = Qwen2_5_VLForConditionalGeneration(config)
    for file in directory.glob("model*.safetensors"):
        file.unlink()
    model.save_pretrained(directory)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@ray.remote
def touch(weights: dict[str, torch.Tensor] | PackedWeights) -> int:
    tensors = weights.tensors() if isinstance(weights, PackedWeights) else weights
    return sum(t.numel() for t in tensors.values())


@ray.remote
class Receiver:
    """The receiving end of the gloo transfer engine, loading into nothing."""

    def join(self, address: str, port: int, world_size: int) -> None:
        from vllm.config.parallel import ParallelConfig
        from vllm.config.weight_transfer import WeightTransferConfig
        from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

        register_gloo_engine()
        config = WeightTransferConfig(backend=GLOO_BACKEND)
        self.engine = WeightTransferEngineFactory.create_engine(config, ParallelConfig(), torch.nn.Identity())
        meet = {"master_address": address, "master_port": port, "rank_offset": 1, "world_size": world_size}
        self.engine.init_transfer_engine(self.engine.parse_init_info(meet))

    def receive(self, info: dict) -> None:
        self.engine.receive_weights(self.engine.parse_update_info(info), lambda weights: None)


def joined(member_joins, sender: WeightSender) -> None:
    """Form a transfer group of `sender` (rank 0) and one member, which `member_joins(address,
    port, world_size)` starts joining."""
    address, port = free_port()
    ref = member_joins(address, port, 2)
    sender.join(address, port, 2)
    ray.get(ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bucket-mb", type=float, default=1024.0, help="transfer-engine bucket size")
    args = parser.parse_args()
    bucket = bucket_bytes(args.bucket_mb)
    directory = Path(tempfile.mkdtemp()) / "model"
    try:
        weights = build_model(directory, args.hidden, args.layers)
        gigabytes = sum(t.numel() * t.element_size() for t in weights.values()) / 1e9
        cfg = load_config(TrainConfig, QUICKSTART, [f"model.path={directory}", "rollout.weight_sync=transfer_engine"])
        info = update_info([(name, t.dtype, tuple(t.shape)) for name, t in weights.items()], bucket)

        copy = median_seconds(lambda: [t.clone() for t in weights.values()], args.repeats)
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        worker = ray.remote(RolloutWorker).remote(cfg)
        ray.get(worker.weight_version.remote())
        version = iter(range(1, 10_000))
        pickled = median_seconds(lambda: ray.get(touch.remote(ray.put(weights))), args.repeats)
        transfer = median_seconds(lambda: ray.get(touch.remote(ray.put(PackedWeights.pack(weights)))), args.repeats)
        sync = median_seconds(
            lambda: ray.get(worker.load_weights.remote(ray.put(PackedWeights.pack(weights)), next(version))),
            args.repeats,
        )

        def broadcast(call) -> None:
            ref = call()
            sender.send(iter(weights.items()))
            ray.get(ref)

        receiver = Receiver.remote()
        sender = WeightSender(GLOO_BACKEND, bucket)
        joined(lambda address, port, world: receiver.join.remote(address, port, world), sender)
        transport = median_seconds(lambda: broadcast(lambda: receiver.receive.remote(info)), args.repeats)
        sender = WeightSender(GLOO_BACKEND, bucket)
        joined(lambda address, port, world: worker.join_transfer.remote(address, port, 1, world), sender)
        engine_sync = median_seconds(
            lambda: broadcast(lambda: worker.receive_weights.remote(info, next(version))), args.repeats
        )
        ray.shutdown()
    finally:
        shutil.rmtree(directory.parent, ignore_errors=True)

    print(f"{gigabytes:.3f} GB of float32 weights, median of {args.repeats}, buckets of {args.bucket_mb} MiB")
    print(f"{'path':42s} {'seconds':>8s} {'s/GB':>8s} {'vs copy':>8s}")
    for name, seconds in (
        ("plain copy (torch clone)", copy),
        ("object store, torch state dict", pickled),
        ("object store, byte arrays (PackedWeights)", transfer),
        ("sync, object store (pack + store + reload)", sync),
        ("transfer engine, transport only (gloo)", transport),
        ("sync, transfer engine (broadcast + reload)", engine_sync),
    ):
        print(f"{name:42s} {seconds:8.3f} {seconds / gigabytes:8.3f} {seconds / copy:8.2f}")


if __name__ == "__main__":
    main()
