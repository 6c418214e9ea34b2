"""Final-answer extraction and the format reward (SPEC.md §1).

Two prompt formats are supported, one config switch apart: the default asks the model to reason
in ``<think>...</think>`` and box its final answer (``\\boxed{...}``); the alternative asks for the
final answer in ``<answer>...</answer>`` tags after the reasoning.
"""

from __future__ import annotations

import re

from tiny_r1v.tasks import PromptFormat, check_prompt_format

_BOXED_OPEN = re.compile(r"\\boxed\s*\{")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK_FIRST = re.compile(r"\s*<think>(?P<think>.*?)</think>(?P<rest>.*)", re.DOTALL)
_ANSWER_ONLY = re.compile(r"\s*<answer>.*?</answer>\s*", re.DOTALL)


def _closing_braces(text: str) -> dict[int, int]:
    """Index of each ``{`` -> index of the ``}`` that closes it, for the closed ones.

    A backslash escapes the next character, so ``\\{`` and ``\\}`` (LaTeX set braces) do not
    count. One pass for the whole text: scanning from each ``\\boxed{`` on its own takes time
    quadratic in the length of a response full of unclosed ones, and the format reward is
    computed in the trainer's own process (see `tiny_r1v.rewards.pool`).
    """
    closing: dict[int, int] = {}
    open_braces: list[int] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            open_braces.append(i)
        elif char == "}" and open_braces:
            closing[open_braces.pop()] = i
        i += 1
    return closing


def _boxed_contents(text: str) -> list[str]:
    """Contents of the complete, outermost ``\\boxed{...}`` groups, in order of appearance.

    A ``\\boxed`` nested inside another is part of the outer one's content; an unclosed one (a
    response cut off by the length limit) is skipped.
    """
    closing = _closing_braces(text)
    contents: list[str] = []
    search_from = 0
    while (match := _BOXED_OPEN.search(text, search_from)) is not None:
        end = closing.get(match.end() - 1)
        if end is None:
            search_from = match.end()
            continue
        contents.append(text[match.end() : end])
        search_from = end + 1
    return contents


def _unbox(text: str) -> str:
    """``text`` without a ``\\boxed{...}`` that wraps all of it."""
    match = _BOXED_OPEN.match(text)
    if match is not None and _closing_braces(text).get(match.end() - 1) == len(text) - 1:
        return text[match.end() : -1]
    return text


def extract_answer(response: str, prompt_format: PromptFormat) -> str | None:
    """The final answer: the content of the last complete ``\\boxed{...}`` or ``<answer>`` block.

    Returns the stripped content, or None when there is no such block or it is blank. Under
    ``answer_tags``, a tag whose whole content is one ``\\boxed{...}`` yields the boxed content
    (models trained on boxed maths often box inside the tags; the tags still carry the answer).
    """
    check_prompt_format(prompt_format)
    if prompt_format == "boxed":
        candidates = _boxed_contents(response)
    else:
        candidates = _ANSWER_TAG.findall(response)
    if not candidates:
        return None
    answer = candidates[-1].strip()
    if prompt_format == "answer_tags":
        answer = _unbox(answer).strip()
    return answer or None


def format_score(response: str, prompt_format: PromptFormat) -> float:
    """1.0 iff the response reasons in one leading ``<think>`` block, then gives its answer.

    Required: only whitespace before ``<think>``; exactly one ``<think>`` and one ``</think>``;
    non-blank reasoning; after ``</think>``, a non-blank final answer in the chosen form:

    - ``boxed``: a complete ``\\boxed{...}`` anywhere after ``</think>`` (prose around it, such as
      "The answer is \\boxed{5}.", is fine);
    - ``answer_tags``: exactly one ``<answer>...</answer>`` block and nothing but whitespace
      around it.
    """
    if response.count("<think>") != 1 or response.count("</think>") != 1:
        return 0.0
    match = _THINK_FIRST.fullmatch(response)
    if match is None or not match["think"].strip():
        return 0.0
    rest = match["rest"]
    if prompt_format == "answer_tags" and (rest.count("<answer>") != 1 or _ANSWER_ONLY.fullmatch(rest) is None):
        return 0.0
    return float(extract_answer(rest, prompt_format) is not None)
