"""Per-task accuracy rewards in a registry, and the combined per-response score (SPEC.md §1).

Each accuracy function takes the extracted final answer (None when the response gave none) and
the ground truth, and returns a reward in [0, 1]:

- ``math``: 1 if math-verify finds the answer equivalent to the ground truth, else 0;
- ``chart``: charts and tables, the ChartQA convention: numbers within 5% relative tolerance,
  anything else by normalised string match;
- ``ocr``: ``1 - NED`` (Levenshtein distance over the longer length), continuous;
- ``vqa``: short visual answers (shapes, colours, yes/no): normalised exact match.
"""

from __future__ import annotations

import re
import string
import threading
from collections.abc import Callable
from dataclasses import dataclass

from math_verify import parse, verify
from rapidfuzz.distance import Levenshtein

from tiny_r1v.rewards.extract import PromptFormat, extract_answer, format_score

AccuracyFn = Callable[[str | None, str], float]

ACCURACY_REGISTRY: dict[str, AccuracyFn] = {}
"""Task name → accuracy function. Tasks must be registered when a module is imported, so that
scorer worker processes (which import this module afresh) see the same registry."""

MATH_VERIFY_TIMEOUT_S: int | None = 5
"""math-verify's own limit per parse and per comparison, in whole seconds; None disables it.

math-verify enforces it with ``SIGALRM``, which only the main thread may use, so it is applied
only there (elsewhere the caller must bound the time). ``ScorerPool`` workers set it to None:
the pool's per-sample timeout kills a hung worker and counts the timeout, whereas math-verify's
would silently score 0."""

RELATIVE_TOLERANCE = 0.05
"""ChartQA's relaxed accuracy: a number is correct within 5% of the ground truth."""


def register_accuracy(name: str) -> Callable[[AccuracyFn], AccuracyFn]:
    """Decorator registering an accuracy function under a task name (names are unique)."""

    def decorator(fn: AccuracyFn) -> AccuracyFn:
        if name in ACCURACY_REGISTRY:
            raise ValueError(f"accuracy function for task {name!r} already registered")
        ACCURACY_REGISTRY[name] = fn
        return fn

    return decorator


def get_accuracy(task: str) -> AccuracyFn:
    """The accuracy function registered for ``task``; ValueError naming the known tasks if none."""
    try:
        return ACCURACY_REGISTRY[task]
    except KeyError:
        known = sorted(ACCURACY_REGISTRY)
        raise ValueError(f"unknown task {task!r}; registered: {known}") from None


# ---------------------------------------------------------------------------------------------
# Shared text handling

# Thousands separators only in well-formed groups ("1,234,567"), so "1,2" (a list) is no number.
_NUMBER = r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_PLAIN_NUMBER = re.compile(_NUMBER)
# Trailing unit or scale words: "kg", "million", "degrees", "m/s", "cm^2", "sq. units".
_UNIT_WORDS = r"(?:[a-zA-Z]+(?:\^\{?\d+\}?)?[\s./]*)+"
# A number with the decorations charts and model answers put around it: a sign before a
# currency sign ("-$5"), a percent sign, unit words.
_DECORATED_NUMBER = re.compile(rf"(?P<sign>-?)\s*[$€£]?\s*(?P<number>{_NUMBER})\s*%?\s*(?:{_UNIT_WORDS})?", re.ASCII)
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_LATEX_ESCAPED = re.compile(r"\\([%$&#_])")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _strip_latex_markup(text: str) -> str:
    """Plain text from a boxed answer: ``\\text{yes}`` → ``yes``, ``45\\%`` → ``45%``.

    Models box non-maths answers in LaTeX; the markup is an artefact of the boxed convention,
    not part of the answer. The unicode minus becomes an ASCII hyphen for the same reason.
    """
    text = _LATEX_TEXT.sub(r"\1", text)
    return _LATEX_ESCAPED.sub(r"\1", text).replace("\u2212", "-")


def _to_number(text: str) -> float | None:
    """The value of a (possibly decorated) number, or None if the text is something else.

    The percent sign is dropped, not divided out: ChartQA labels "50%" as 50.
    """
    match = _DECORATED_NUMBER.fullmatch(_strip_latex_markup(text).strip())
    if match is None:
        return None
    value = float(match["number"].replace(",", ""))
    return -value if match["sign"] else value


def _normalize_text(text: str) -> str:
    """SQuAD-style normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = _strip_latex_markup(text).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


# ---------------------------------------------------------------------------------------------
# math

# Pre-normalisation for what math-verify (0.9) gets wrong on model answers; everything else
# (fractions, \dfrac, decimals, thousands separators, LaTeX units, degrees, intervals, sets,
# equations such as "x = 5", \text{(B)}) is left to math-verify.
_SCIENTIFIC = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[eE]([-+]?\d+)(?![\w.])")
_PERCENT = re.compile(r"(?P<value>.+?)\s*\\?%")
_OPTION_LETTER = re.compile(r"[A-Z]")
_OPTION_ANSWER = re.compile(r"\(?(?P<letter>[A-Za-z])\)?(?:[.:)]\s*.*|\s+.*)?", re.DOTALL)
_NUMBER_WITH_WORDS = re.compile(rf"(?P<number>{_NUMBER})\s+{_UNIT_WORDS}", re.ASCII)


def _math_verify_timeout() -> int | None:
    """math-verify's timeout for this thread: its SIGALRM mechanism fails off the main thread."""
    if threading.current_thread() is threading.main_thread():
        return MATH_VERIFY_TIMEOUT_S
    return None


def _guided_by_ground_truth(answer: str, ground_truth: str) -> str:
    """Rewrite the answer into the ground truth's shape where math-verify would misread it.

    - gt is an option letter ("B"): "B.", "B: 42", "(B) 42" → "B" (math-verify parses "B." and
      "B: 42" as expressions, not letters).
    - gt is a plain number: "5 dollars" → "5" (math-verify knows LaTeX units and common unit
      words, but reads other words as products of one-letter variables).

    Only the ground truth's shape licenses these rewrites, so a letter or word that is part of
    an algebraic answer ("2 x" against "2x") is left alone.
    """
    gt = ground_truth.strip()
    if _OPTION_LETTER.fullmatch(gt):
        option = _OPTION_ANSWER.fullmatch(answer)
        return option["letter"] if option is not None else answer
    if _PLAIN_NUMBER.fullmatch(gt):
        with_words = _NUMBER_WITH_WORDS.fullmatch(answer)
        return with_words["number"] if with_words is not None else answer
    return answer


def _math_readings(text: str) -> list[str]:
    """The LaTeX readings to try: the text itself, and for a percentage also its fraction.

    math-verify equates "50%" with 50 but not with 0.5; datasets write percentage answers either
    way, so "x%" matches both x and x/100. Scientific notation is rewritten as LaTeX because
    math-verify reads the "e" of "1.5e3" as Euler's number.
    """
    text = _SCIENTIFIC.sub(r"\1\\times10^{\2}", text.strip())
    readings = [text]
    if (percent := _PERCENT.fullmatch(text)) is not None:
        readings.append(f"({percent['value']})/100")
    return readings


def _parse_math(text: str, timeout: int | None) -> list:
    """math-verify's parses of every reading, each wrapped in ``$...$`` as an inline formula.

    The ``$`` wrapping makes math-verify read the whole string as LaTeX (a bare "B" or "\\frac12"
    is otherwise not extracted at all).
    """
    return [parsed for reading in _math_readings(text) for parsed in parse(f"${reading}$", parsing_timeout=timeout)]


@register_accuracy("math")
def math_accuracy(answer: str | None, ground_truth: str) -> float:
    """1.0 iff math-verify finds the answer equivalent to the ground truth."""
    if answer is None:
        return 0.0
    timeout = _math_verify_timeout()
    gold = _parse_math(ground_truth, timeout)
    pred = _parse_math(_guided_by_ground_truth(answer, ground_truth), timeout)
    return float(verify(gold, pred, timeout_seconds=timeout))


# ---------------------------------------------------------------------------------------------
# chart, ocr, vqa


@register_accuracy("chart")
def chart_accuracy(answer: str | None, ground_truth: str) -> float:
    """ChartQA relaxed accuracy: numbers within 5% of the ground truth, else string match.

    Both sides are read as numbers after dropping a currency sign, a percent sign, thousands
    separators and trailing unit words ("50%" == 50, "$1,200" == 1200, "3.5 kg" == 3.5). A zero
    ground truth needs an exact zero. Like ChartQA's metric this also relaxes years (2017 vs
    2010 is within 5%); non-numbers are compared after ``_normalize_text``.
    """
    if answer is None:
        return 0.0
    pred, gt = _to_number(answer), _to_number(ground_truth)
    if pred is not None and gt is not None:
        return float(abs(pred - gt) <= RELATIVE_TOLERANCE * abs(gt))
    return float(_normalize_text(answer) == _normalize_text(ground_truth))


def _normalize_ocr(text: str) -> str:
    """Strip LaTeX markup and collapse whitespace runs (newlines included) to one space.

    Case is kept: OCR is graded on faithful transcription, and a case error costs one edit per
    character, a partial penalty rather than a full one.
    """
    return " ".join(_strip_latex_markup(text).split())


@register_accuracy("ocr")
def ocr_accuracy(answer: str | None, ground_truth: str) -> float:
    """``1 - NED``: one minus the Levenshtein distance over the longer length (both empty: 1)."""
    if answer is None:
        return 0.0
    return Levenshtein.normalized_similarity(_normalize_ocr(answer), _normalize_ocr(ground_truth))


@register_accuracy("vqa")
def vqa_accuracy(answer: str | None, ground_truth: str) -> float:
    """1.0 iff the answers agree after ``_normalize_text`` ("A circle." == "circle")."""
    if answer is None:
        return 0.0
    return float(_normalize_text(answer) == _normalize_text(ground_truth))


# ---------------------------------------------------------------------------------------------
# the combined score


@dataclass(frozen=True)
class Score:
    """One response's rewards."""

    accuracy: float
    """Task accuracy in [0, 1] of the extracted final answer."""
    format: float
    """1.0 if the response follows the think-then-answer format, else 0.0."""
    total: float
    """``(1 - w_fmt) * accuracy + w_fmt * format``: the reward that training uses."""

    @classmethod
    def combine(cls, accuracy: float, fmt: float, format_weight: float) -> Score:
        """The score of these rewards, with their total weighted as SPEC §1 says."""
        return cls(accuracy, fmt, (1.0 - format_weight) * accuracy + format_weight * fmt)


def score(
    task: str,
    response: str,
    ground_truth: str,
    *,
    prompt_format: PromptFormat = "boxed",
    format_weight: float = 0.1,
) -> Score:
    """Score one response: accuracy of its final answer, format, and their weighted total.

    Accuracy is computed from the answer in the chosen format only; a response without one
    scores accuracy 0, with no fall-back to, say, its last line. A fall-back would pay a model
    for ignoring the answer format at a cost of only ``format_weight``, and would grade text the
    model never marked as its answer.
    """
    accuracy = get_accuracy(task)(extract_answer(response, prompt_format), ground_truth)
    fmt = format_score(response, prompt_format)
    return Score.combine(accuracy, fmt, format_weight)
