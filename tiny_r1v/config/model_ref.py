"""A model named by the user: a model directory, or a training run whose checkpoint is meant.

One type for the merge's experts and evaluation's models, so both accept the same things; what
a path must hold is `tiny_r1v.trainer.checkpoint.resolve_model_dir`'s to say.
"""

from __future__ import annotations

from dataclasses import dataclass

from tiny_r1v.config.loader import require


@dataclass(frozen=True)
class ModelRef:
    name: str
    """Label of the model (command-line item, table row, file name): see `require_label`."""
    path: str
    """A model directory (Hugging Face layout, e.g. a merge's output), or a training run directory
    (`<trainer.output_dir>/<experiment_name>`) whose checkpoint `step` is meant
    (`checkpoints/step-N/model/`)."""
    step: int | None = None
    """Checkpoint step of a run directory; null: its newest complete checkpoint."""

    def validate(self) -> None:
        require_label(self.name)
        require(self.path != "", "path", "must not be empty")
        if self.step is not None:
            require(self.step >= 0, "step", f"must be >= 0, got {self.step}")


def require_label(name: str, key: str = "name") -> None:
    """Labels become command-line items (`a,b`, `name=DIR`) and file names, so they must split
    cleanly: non-empty, no ',', '=', '/' or '\\', no surrounding spaces."""
    ok = name.strip() == name != "" and not any(char in name for char in ",=/\\")
    require(ok, key, f"must be a non-empty label without ',', '=', '/' or surrounding spaces, got {name!r}")
