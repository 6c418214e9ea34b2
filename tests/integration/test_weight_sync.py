"""Weight transport through Ray's object store (`tiny_r1v.trainer.weights`)."""

from __future__ import annotations

import torch

from tiny_r1v.trainer.weights import PackedWeights, WeightSync, sync_metrics


def test_packed_weights_read_through_the_object_store_without_copies(ray_local):
    import ray

    state = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "h": torch.ones(2, dtype=torch.bfloat16)}
    received = ray.get(ray.put(PackedWeights.pack(state)))
    # Views of the store's shared memory, not copies.
    assert not any(array.flags.writeable for array in received.arrays)
    assert all(torch.equal(received.tensors()[k], v) for k, v in state.items())


def test_a_rollout_worker_lost_during_weight_sync_does_not_stop_the_run(ray_local):
    import os

    import ray

    @ray.remote
    class Learner:
        def packed_weights(self) -> PackedWeights:
            return PackedWeights.pack({"w": torch.ones(2)})

    @ray.remote(max_restarts=0)
    class Rollout:
        def __init__(self, dies: bool) -> None:
            self.dies, self.version = dies, 0

        def load_weights(self, weights: PackedWeights, version: int) -> dict[str, float]:
            if self.dies:
                os._exit(1)
            self.version = version
            return {"bytes": float(weights.nbytes), "seconds": 0.5}

        def weight_version(self) -> int:
            return self.version

    # The driver's sync alone, on stand-ins for the learner and rollout actors.
    rollouts = [Rollout.remote(True), Rollout.remote(False)]
    sync = WeightSync([Learner.remote()], rollouts)
    assert sync_metrics(sync.collect(sync.advance())) == {"sync/bytes": 8.0, "sync/load_seconds": 0.5}
    assert sync.version == 1 and ray.get(rollouts[1].weight_version.remote()) == 1
    # The next rollout finds the lost worker (restarted by Ray) behind and loads these weights.
    assert ray.get(sync.current()).tensors()["w"].tolist() == [1.0, 1.0]
