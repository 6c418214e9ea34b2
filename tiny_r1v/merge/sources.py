"""Where the merge's inputs are: expert names or paths -> model directories.

A name resolves through `MergeConfig.experts`; anything else is taken as a path. What a path
may be (a model directory, or a training run directory whose checkpoint's model is meant) is
`tiny_r1v.trainer.checkpoint.resolve_model_dir`'s to say. Experts are told apart by the model
directory they resolve to, so one checkpoint given twice (a run and its checkpoint's model, or
two names) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tiny_r1v.merge.config import MergeConfig
from tiny_r1v.merge.errors import MergeError
from tiny_r1v.trainer.checkpoint import CheckpointError, resolve_model_dir


@dataclass(frozen=True)
class Source:
    """One input checkpoint."""

    name: str
    """`base`, or the expert's name (a path's directory name when given as a path)."""
    model_dir: Path
    """Absolute: an actor's working directory is not the driver's."""
    given: Path
    """The directory as the user gave it (a run directory, or the model directory itself)."""


def _source(name: str, path: Path, step: int | None, who: str) -> Source:
    try:
        return Source(name, resolve_model_dir(path, step, who), path.absolute())
    except CheckpointError as err:
        raise MergeError(str(err)) from None


def resolve(cfg: MergeConfig, experts: Sequence[str]) -> tuple[Source, list[Source]]:
    """The base and the chosen experts (all of `cfg.experts` when `experts` is empty)."""
    known = {expert.name: expert for expert in cfg.experts}
    chosen = list(experts) or list(known)
    if not chosen:
        raise MergeError("no experts: name some (--experts) or list them in the config's `experts`")
    sources = []
    for item in chosen:
        if item in known:
            sources.append(_source(item, Path(known[item].path), known[item].step, f"expert {item!r}"))
        elif Path(item).is_dir():
            sources.append(_source(Path(item).name, Path(item), None, f"expert {item!r}"))
        else:
            raise MergeError(
                f"expert {item!r} is neither a name in the config ({', '.join(known) or 'none'}) nor a directory"
            )
    for i, source in enumerate(sources):
        for earlier_item, earlier in zip(chosen, sources[:i], strict=False):
            if earlier.model_dir == source.model_dir:
                raise MergeError(
                    f"experts {earlier_item!r} and {chosen[i]!r} are the same checkpoint ({source.model_dir})"
                )
            if earlier.name == source.name:
                raise MergeError(
                    f"experts {earlier_item!r} and {chosen[i]!r} are both named {source.name!r}: "
                    "list them in the config's `experts` under names of their own"
                )
    return _source("base", Path(cfg.base), None, "base"), sources
