"""Everything decided before a byte is written: inputs agree, every tensor has a treatment,
the output shards are laid out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tiny_r1v.merge.errors import MergeError
from tiny_r1v.merge.policy import Assignment, assign
from tiny_r1v.merge.safetensors_io import CheckpointReader, TensorInfo, plan_shards

# Lines of a mismatch report shown before "... and N more".
_MAX_PROBLEMS = 20


@dataclass(frozen=True)
class PlanItem:
    name: str
    info: TensorInfo
    """The base's tensor (the experts' agree with it in shape and dtype)."""
    assignment: Assignment


@dataclass(frozen=True)
class MergePlan:
    items: list[PlanItem]
    """Every base tensor in the base's file order (read order, and write order of those written)."""
    shards: list[list[str]]
    """Output shards: tensor names, consecutive in `items`; tied tensors are not written."""
    tied: bool
    """The base ties the output head to the input embedding."""


def check_experts(base: CheckpointReader, experts: Sequence[CheckpointReader]) -> None:
    """MergeError naming every tensor and expert whose keys, shapes or dtypes differ from the base."""
    problems = []
    for expert in experts:
        theirs, ours = expert.tensors, base.tensors
        problems += [f"expert {expert.name!r} lacks tensor {name!r}" for name in ours if name not in theirs]
        problems += [
            f"expert {expert.name!r} has tensor {name!r}, which the base lacks" for name in theirs if name not in ours
        ]
        for name, info in ours.items():
            other = theirs.get(name)
            if other is not None and other.shape != info.shape:
                problems.append(
                    f"tensor {name!r}: expert {expert.name!r} has shape {list(other.shape)}, "
                    f"the base {list(info.shape)}"
                )
            elif other is not None and other.dtype != info.dtype:
                problems.append(
                    f"tensor {name!r}: expert {expert.name!r} has dtype {other.dtype}, the base {info.dtype}"
                )
    if problems:
        more = f"\n... and {len(problems) - _MAX_PROBLEMS} more" if len(problems) > _MAX_PROBLEMS else ""
        raise MergeError("experts do not match the base:\n" + "\n".join(problems[:_MAX_PROBLEMS]) + more)


def ties_word_embeddings(config: dict) -> bool:
    """Qwen2.5-VL puts the flag at the top level (older configs: in text_config); absent = untied."""
    return bool(config.get("tie_word_embeddings", config.get("text_config", {}).get("tie_word_embeddings", False)))


def build_plan(
    base: CheckpointReader,
    experts: Sequence[CheckpointReader],
    vision: Literal["mean", "merge", "base"],
    shard_bytes: int,
) -> MergePlan:
    """Check the inputs and assign every tensor (MergeError on any problem)."""
    check_experts(base, experts)
    tied = ties_word_embeddings(base.config())
    assignments = assign({name: info.shape for name, info in base.tensors.items()}, vision, tied)
    items = [PlanItem(name, info, assignments[name]) for name, info in base.tensors.items()]
    written = [(item.name, item.info.nbytes) for item in items if item.assignment.treatment != "tied"]
    return MergePlan(items, plan_shards(written, shard_bytes), tied)
