"""Task families, shared by the dataset format and the training config (no heavy imports here:
`tiny_r1v.config` must stay fast to import)."""

from __future__ import annotations

from typing import Literal, get_args

Task = Literal["math", "chart", "ocr", "vqa"]
"""A task family: selects the prompt template, the accuracy reward (SPEC §1) and LIPO's `xi`."""

TASKS: tuple[str, ...] = get_args(Task)
"""Every `Task`, in declaration order."""
