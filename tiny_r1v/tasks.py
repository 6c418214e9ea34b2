"""The vocabulary shared by datasets, prompts, rewards and configs: task families and prompt
formats and image positions (no heavy imports here: `tiny_r1v.config` must stay fast to import)."""

from __future__ import annotations

from typing import Literal, get_args

Task = Literal["math", "chart", "ocr", "vqa"]
"""A task family: selects the prompt template, the accuracy reward (SPEC §1) and LIPO's `xi`."""

TASKS: tuple[str, ...] = get_args(Task)
"""Every `Task`, in declaration order."""

PromptFormat = Literal["boxed", "answer_tags"]
"""Where the final answer goes (SPEC §1 switch): `\\boxed{...}` after the `<think>` block, or
`<answer>...</answer>` tags."""

PROMPT_FORMATS: tuple[str, ...] = get_args(PromptFormat)
"""Every `PromptFormat`."""


ImagePosition = Literal["first", "last"]
"""Where a prompt's images go in its user turn: ``first``, before the text (Qwen2.5-VL's and most
datasets' order), or ``last``, after the question and instruction, right before the answer, so
the image lies at the same distance from the answer in every task's prompt."""

IMAGE_POSITIONS: tuple[str, ...] = get_args(ImagePosition)
"""Every `ImagePosition`."""


def check_prompt_format(prompt_format: str) -> None:
    """Raise ValueError unless ``prompt_format`` is one of ``PROMPT_FORMATS``."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt_format {prompt_format!r}; expected {PROMPT_FORMATS}")
