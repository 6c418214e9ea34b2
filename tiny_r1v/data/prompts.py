"""Prompts: an example as Qwen2.5-VL chat messages with a per-task instruction (SPEC §1 format),
and as the rendered `Prompt` the engines and learners take.

The instruction asks for reasoning inside ``<think> </think>`` and the final answer in
``\\boxed{}`` or, under the ``answer_tags`` switch, inside ``<answer> </answer>``; the format
reward (`tiny_r1v.rewards.extract.format_score`) checks exactly that shape. `render_prompt` is the
one place the model's chat template is applied to them: training, validation, evaluation and the
warm start all prompt through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tiny_r1v.data.dataset import Example
from tiny_r1v.protocol import Prompt
from tiny_r1v.tasks import IMAGE_POSITIONS, ImagePosition, PromptFormat, check_prompt_format

if TYPE_CHECKING:
    from transformers import ProcessorMixin

TEMPLATES: dict[str, str] = {
    "math": (
        "{question}\n\nFirst reason step by step inside <think> </think> tags. Then give the "
        "final answer, a number or an expression, {final_answer}."
    ),
    "chart": (
        "{question}\n\nFirst read the values you need from the chart or table and reason inside "
        "<think> </think> tags. Then give the final answer, a word or a number, {final_answer}."
    ),
    "ocr": (
        "{question}\n\nFirst reason inside <think> </think> tags. Then give the final answer, "
        "the text exactly as written in the image, {final_answer}."
    ),
    "vqa": (
        "{question}\n\nFirst reason inside <think> </think> tags. Then give the final answer, "
        "a single word, {final_answer}."
    ),
}
"""Task -> instruction; `{question}` is the row's question, `{final_answer}` says where the
answer goes (`FINAL_ANSWER`)."""

FINAL_ANSWER: dict[str, str] = {
    "boxed": "inside \\boxed{}",
    "answer_tags": "inside <answer> </answer> tags",
}
"""Prompt format -> where the template asks for the final answer."""


def build_messages(
    example: Example, prompt_format: PromptFormat, image_position: ImagePosition = "first"
) -> list[dict[str, Any]]:
    """One user turn: an image placeholder per image, in order, and the text; the images before
    the text or after it (`image_position`).

    The placeholders carry no pixels: the caller passes `example.load_images()` to the processor
    or the rollout engine alongside the rendered prompt.
    """
    check_prompt_format(prompt_format)
    if image_position not in IMAGE_POSITIONS:
        raise ValueError(f"unknown image_position {image_position!r}; expected {IMAGE_POSITIONS}")
    text = TEMPLATES[example.task].format(question=example.question, final_answer=FINAL_ANSWER[prompt_format])
    images: list[dict[str, Any]] = [{"type": "image"} for _ in example.images]
    texts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    content = images + texts if image_position == "first" else texts + images
    return [{"role": "user", "content": content}]


def render_prompt(
    processor: ProcessorMixin,
    example: Example,
    prompt_format: PromptFormat,
    uid: str,
    image_position: ImagePosition = "first",
) -> Prompt:
    """The example as the model sees it: its chat template applied to `build_messages` (with the
    generation prompt) and its images loaded and resized. `uid` labels the prompt's group."""
    text = processor.apply_chat_template(
        build_messages(example, prompt_format, image_position), add_generation_prompt=True, tokenize=False
    )
    return Prompt(uid=uid, text=text, images=tuple(example.load_images()))
