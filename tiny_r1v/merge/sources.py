"""Where the merge's inputs are: expert names or paths -> model directories.

A name resolves through `MergeConfig.experts`; anything else is taken as a path. A path is either
a model directory (it has `config.json`) or a training run directory, whose checkpoint is the
model inside `checkpoints/step-N/` (the layout of `tiny_r1v.trainer.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tiny_r1v.merge.config import MergeConfig
from tiny_r1v.merge.errors import MergeError
from tiny_r1v.trainer.checkpoint import checkpoint_root, complete_checkpoints


@dataclass(frozen=True)
class Source:
    """One input checkpoint."""

    name: str
    """`base`, or the expert's name (a path's directory name when given as a path)."""
    model_dir: Path
    """Absolute: an actor's working directory is not the driver's."""


def model_dir(path: Path, step: int | None, who: str) -> Path:
    """The model directory `path` stands for (see the module docstring)."""
    if (path / "config.json").is_file():
        if step is not None:
            raise MergeError(f"{who}: {path} is a model directory, so step {step} cannot apply")
        return path.resolve()
    found = complete_checkpoints(checkpoint_root(path))
    if step is not None:
        found = [ckpt for ckpt in found if ckpt.name == f"step-{step:06d}"]
    if not found:
        wanted = f"complete checkpoint step {step}" if step is not None else "complete checkpoint"
        raise MergeError(
            f"{who}: {path} is neither a model directory (no config.json) nor a run "
            f"directory with a {wanted} under checkpoints/"
        )
    return (found[-1] / "model").resolve()


def resolve(cfg: MergeConfig, experts: Sequence[str]) -> tuple[Source, list[Source]]:
    """The base and the chosen experts (all of `cfg.experts` when `experts` is empty)."""
    known = {expert.name: expert for expert in cfg.experts}
    chosen = list(experts) or list(known)
    if not chosen:
        raise MergeError("no experts: name some (--experts) or list them in the config's `experts`")
    sources = []
    for item in chosen:
        if item in known:
            sources.append(Source(item, model_dir(Path(known[item].path), known[item].step, f"expert {item!r}")))
        elif Path(item).is_dir():
            sources.append(Source(Path(item).name, model_dir(Path(item), None, f"expert {item!r}")))
        else:
            raise MergeError(
                f"expert {item!r} is neither a name in the config ({', '.join(known) or 'none'}) nor a directory"
            )
    names = [source.name for source in sources]
    for name in names:
        if names.count(name) > 1:
            raise MergeError(f"expert {name!r} is given twice")
    return Source("base", model_dir(Path(cfg.base), None, "base")), sources
