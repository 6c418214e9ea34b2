"""Rule-based rewards (SPEC.md §1): extraction, format, per-task accuracy, total.

The accuracy tables hold responses written the way models write them; each row is
(response, ground truth, expected accuracy[, prompt format]).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import pytest

from tiny_r1v.rewards import (
    ACCURACY_REGISTRY,
    Score,
    extract_answer,
    format_score,
    register_accuracy,
    score,
)
from tiny_r1v.tasks import PromptFormat


class Case(NamedTuple):
    response: str
    truth: str
    expected: float
    prompt_format: PromptFormat = "boxed"


def _params(tasks: dict[str, list[Case]]) -> list:
    """One pytest param per (task, case), its id readable in the test report."""
    return [
        pytest.param(task, case, id=f"{task}:{case.response!r}~{case.truth!r}")
        for task, cases in tasks.items()
        for case in cases
    ]


MATH_CASES = [
    # fractions and decimals
    Case(r"<think>Half of the pie.</think> \boxed{\frac{1}{2}}", "0.5", 1.0),
    Case(r"So the probability is \boxed{\frac12}.", r"\frac{1}{2}", 1.0),
    Case(r"\boxed{\dfrac{1}{2}}", "1/2", 1.0),
    Case(r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
    Case(r"\boxed{1/2}", "0.5", 1.0),
    Case(r"\boxed{-\frac{3}{4}}", "-0.75", 1.0),
    Case(r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", 1.0),
    Case(r"\boxed{0.333}", r"\frac{1}{3}", 0.0),  # rounded too early
    Case(r"\boxed{3.14}", r"\pi", 0.0),
    # percentages: "x%" equals both x and x/100
    Case(r"\boxed{50\%}", "0.5", 1.0),
    Case(r"\boxed{50\%}", "50", 1.0),
    Case(r"\boxed{50}", r"50\%", 1.0),
    Case(r"\boxed{0.5}", "50%", 1.0),
    Case(r"\boxed{12.5\%}", "0.125", 1.0),
    Case(r"\boxed{25\%}", "0.5", 0.0),
    # thousands separators
    Case(r"\boxed{1,000}", "1000", 1.0),
    Case(r"\boxed{12{,}345}", "12345", 1.0),
    Case(r"\boxed{1,000,000}", "1000000", 1.0),
    # units, currency, degrees
    Case(r"The side is \boxed{5 \text{ cm}}.", "5", 1.0),
    Case(r"\boxed{5\,\mathrm{cm}}", "5", 1.0),
    Case(r"\boxed{5 cm}", "5", 1.0),
    Case(r"\boxed{12 dollars}", "12", 1.0),
    Case(r"\boxed{\$12}", "12", 1.0),
    Case(r"\boxed{10 m/s}", "10", 1.0),
    Case(r"\boxed{30^\circ}", "30", 1.0),
    Case(r"\boxed{30°}", "30", 1.0),
    Case(r"\boxed{30 degrees}", "30", 1.0),
    Case(r"\boxed{35^\circ}", "30", 0.0),
    # multiple choice
    Case(r"\boxed{B}", "B", 1.0),
    Case(r"\boxed{(B)}", "B", 1.0),
    Case(r"\boxed{B.}", "B", 1.0),
    Case(r"\boxed{\text{(B)}}", "B", 1.0),
    Case(r"\boxed{(B) 42}", "B", 1.0),
    Case(r"\boxed{B: 42}", "B", 1.0),
    Case(r"\boxed{C}", "B", 0.0),
    # signs and scientific notation
    Case(r"\boxed{-3}", "-3", 1.0),
    Case(r"\boxed{3}", "-3", 0.0),
    Case(r"\boxed{1.5e3}", "1500", 1.0),
    Case(r"\boxed{2.5E-3}", "0.0025", 1.0),
    Case(r"\boxed{1.5 \times 10^{3}}", "1500", 1.0),
    # equations, intervals, sets, expressions
    Case(r"\boxed{x = 5}", "5", 1.0),
    Case(r"\boxed{[1, 2)}", "[1,2)", 1.0),
    Case(r"\boxed{(1, 2]}", "[1,2)", 0.0),
    Case(r"\boxed{\{1, 2\}}", r"\{2, 1\}", 1.0),
    Case(r"\boxed{2\sqrt{3}}", r"\sqrt{12}", 1.0),
    Case(r"\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    Case(r"\boxed{\text{Yes}}", "Yes", 1.0),
    Case(r"\boxed{4}", "5", 0.0),
    # which answer counts
    Case("The answer is 5.", "5", 0.0),  # no boxed answer: no fall-back to the text
    Case(r"<think>Maybe \boxed{3}?</think> Final: \boxed{4}", "4", 1.0),
    Case(r"\boxed{4}, no wait, \boxed{3}", "4", 0.0),
    Case(r"\boxed{4}. Double-check: \boxed{\frac{1", "4", 1.0),  # cut off by the length limit
    Case(r"\boxed{}", "0", 0.0),
    # the <answer> tag switch
    Case(r"<think>Half.</think><answer>\frac{1}{2}</answer>", "0.5", 1.0, "answer_tags"),
    Case(r"<answer>\boxed{0.5}</answer>", "1/2", 1.0, "answer_tags"),
    Case(r"<answer>0.4</answer>", "1/2", 0.0, "answer_tags"),
    Case(r"\boxed{0.5}", "1/2", 0.0, "answer_tags"),
]

CHART_CASES = [
    # numbers within 5% of the ground truth
    Case(r"<think>The bar for 2019 reads 45.</think> \boxed{45}", "45", 1.0),
    Case(r"\boxed{45.0}", "45", 1.0),
    Case(r"\boxed{47}", "45", 1.0),
    Case(r"\boxed{42.75}", "45", 1.0),  # exactly 5% below
    Case(r"\boxed{48}", "45", 0.0),
    Case(r"\boxed{42}", "40", 1.0),  # exactly 5% above
    Case(r"\boxed{19.5}", "20", 1.0),
    Case(r"\boxed{18.9}", "20", 0.0),
    Case(r"\boxed{0.5}", "0.52", 1.0),
    Case(r"\boxed{30}", "45", 0.0),
    # zero needs an exact zero
    Case(r"\boxed{0}", "0", 1.0),
    Case(r"\boxed{0.0}", "0", 1.0),
    Case(r"\boxed{0.01}", "0", 0.0),
    # signs
    Case(r"\boxed{-3.2}", "-3.1", 1.0),
    Case(r"\boxed{3.2}", "-3.2", 0.0),
    Case("\\boxed{\u22125}", "-5", 1.0),  # unicode minus
    Case(r"\boxed{-\$5}", "-5", 1.0),
    # decorations: percent (dropped, ChartQA labels 50% as 50), currency, separators, units
    Case(r"\boxed{45\%}", "45", 1.0),
    Case(r"\boxed{45%}", "45%", 1.0),
    Case(r"\boxed{0.45}", "45%", 0.0),
    Case(r"\boxed{\$1,200}", "1200", 1.0),
    Case(r"\boxed{1,200}", "1150", 1.0),
    Case(r"\boxed{€3.5}", "3.5", 1.0),
    Case(r"\boxed{12 million}", "12", 1.0),
    Case(r"\boxed{3.5 kg}", "3.5", 1.0),
    Case(r"\boxed{1.2e3}", "1200", 1.0),
    Case(r"\boxed{2017}", "2016", 1.0),  # ChartQA's metric relaxes years too
    # strings: case, punctuation, articles, LaTeX text
    Case(r"\boxed{Yes}", "yes", 1.0),
    Case(r"\boxed{\text{No}}", "No", 1.0),
    Case(r"\boxed{No}", "Yes", 0.0),
    Case(r"\boxed{The United States}", "United States", 1.0),
    Case(r"\boxed{united states.}", "United States", 1.0),
    Case(r"\boxed{Canada}", "United States", 0.0),
    Case(r"\boxed{Q3 2019}", "Q3 2019", 1.0),
    Case(r"\boxed{Q4 2019}", "Q3 2019", 0.0),
    Case(r"\boxed{Blue line}", "Blue", 0.0),
    Case(r"\boxed{2016-2017}", "2016", 0.0),
    # which answer counts, and the tag switch
    Case("The value is 45.", "45", 0.0),
    Case(r"\boxed{45} ... \boxed{60}", "45", 0.0),
    Case(r"<think>Read the axis.</think><answer>45</answer>", "45", 1.0, "answer_tags"),
    Case(r"<answer>\boxed{45\%}</answer>", "45", 1.0, "answer_tags"),
    Case(r"<answer>Germany</answer>", "germany", 1.0, "answer_tags"),
    Case(r"\boxed{45}", "45", 0.0, "answer_tags"),
]

OCR_CASES = [
    # exact transcriptions, whitespace noise collapsed
    Case(r"<think>The sign reads STOP.</think> \boxed{STOP}", "STOP", 1.0),
    Case(r"\boxed{Hello World}", "Hello World", 1.0),
    Case(r"\boxed{Hello   World}", "Hello World", 1.0),
    Case("\\boxed{  Hello World \n}", "Hello World", 1.0),
    Case("\\boxed{Hello\nWorld}", "Hello World", 1.0),
    Case("\\boxed{Hello\tWorld}", "Hello  World ", 1.0),
    Case("\\boxed{MILK 2.99\nBREAD 1.50}", "MILK 2.99 BREAD 1.50", 1.0),
    Case(r"\boxed{\text{STOP}}", "STOP", 1.0),
    Case(r"\boxed{Total: \$12.50}", "Total: $12.50", 1.0),
    Case(r"\boxed{50\%}", "50%", 1.0),
    Case(r"\boxed{f(x) = {a}}", "f(x) = {a}", 1.0),
    Case(r"\boxed{你好世界}", "你好世界", 1.0),
    # case is kept: each wrong-case letter is one edit (NED = edits / longer length)
    Case(r"\boxed{hello world}", "Hello World", 1 - 2 / 11),
    Case(r"\boxed{HELLO WORLD}", "Hello World", 1 - 8 / 11),
    Case(r"\boxed{Stop}", "STOP", 1 - 3 / 4),
    Case(r"\boxed{stop}", "STOP", 0.0),
    Case(r"\boxed{hello   world}", "Hello World", 1 - 2 / 11),
    # spacing inside words is an edit
    Case(r"\boxed{HelloWorld}", "Hello World", 1 - 1 / 11),
    Case(r"\boxed{Hel lo World}", "Hello World", 1 - 1 / 12),
    # substitutions, insertions, deletions
    Case(r"\boxed{Helo World}", "Hello World", 1 - 1 / 11),
    Case(r"\boxed{Hello Wor1d}", "Hello World", 1 - 1 / 11),
    Case(r"\boxed{SHOP}", "STOP", 1 - 1 / 4),
    Case(r"\boxed{abc}", "abcd", 1 - 1 / 4),
    Case(r"\boxed{abcdef}", "abc", 1 - 3 / 6),
    Case(r"\boxed{abc}", "xyz", 0.0),
    Case(r"\boxed{12345}", "12354", 1 - 2 / 5),  # a swap is two edits in Levenshtein
    Case(r"\boxed{Café}", "Cafe", 1 - 1 / 4),
    Case(r"\boxed{你好}", "你好世界", 1 - 2 / 4),
    Case(r"\boxed{The quick brown f0x}", "The quick brown fox", 1 - 1 / 19),
    Case(r"\boxed{The quick brown fox jumps}", "The quick brown fox", 1 - 6 / 25),
    Case(r"\boxed{quick brown fox}", "The quick brown fox", 1 - 4 / 19),
    Case(r"\boxed{ABC-1234}", "ABC 1234", 1 - 1 / 8),
    Case(r"\boxed{0CR}", "OCR", 1 - 1 / 3),
    Case(r"\boxed{2023-01-15}", "2023-01-15", 1.0),
    Case(r"\boxed{2023/01/15}", "2023-01-15", 1 - 2 / 10),
    # which answer counts, and the tag switch
    Case("The text says Hello World.", "Hello World", 0.0),
    Case(r"\boxed{}", "Hello World", 0.0),
    Case(r"\boxed{Hello} then \boxed{Hello World}", "Hello World", 1.0),
    Case(r"<think>Two.</think><answer>Hello World</answer>", "Hello World", 1.0, "answer_tags"),
    Case(r"<answer>hello world</answer>", "Hello World", 1 - 2 / 11, "answer_tags"),
    Case("<answer>\nHello\nWorld\n</answer>", "Hello World", 1.0, "answer_tags"),
    Case(r"\boxed{Hello World}", "Hello World", 0.0, "answer_tags"),
]

VQA_CASES = [
    # shapes
    Case(r"<think>It is round.</think> \boxed{circle}", "circle", 1.0),
    Case(r"\boxed{Circle}", "circle", 1.0),
    Case(r"\boxed{A circle.}", "circle", 1.0),
    Case(r"\boxed{the circle}", "circle", 1.0),
    Case(r"\boxed{\text{circle}}", "circle", 1.0),
    Case(r"\boxed{ triangle }", "triangle", 1.0),
    Case(r"\boxed{Triangle!}", "triangle", 1.0),
    Case(r"\boxed{rectangle}", "rectangle", 1.0),
    Case(r"\boxed{rectangle}", "circle", 0.0),
    Case(r"\boxed{circles}", "circle", 0.0),
    Case(r"\boxed{It is a circle}", "circle", 0.0),
    Case(r"\boxed{square}", "rectangle", 0.0),
    # colours
    Case(r"\boxed{red}", "red", 1.0),
    Case(r"\boxed{Red.}", "red", 1.0),
    Case(r"\boxed{RED}", "red", 1.0),
    Case(r"\boxed{dark red}", "red", 0.0),
    Case(r"\boxed{gray}", "gray", 1.0),
    Case(r"\boxed{grey}", "gray", 0.0),  # no synonyms: exact match after normalisation
    Case(r"\boxed{teal}", "teal", 1.0),
    Case(r"\boxed{blue}", "green", 0.0),
    Case(r"\boxed{brown}", "brown", 1.0),
    Case(r"\boxed{yellow}", "black", 0.0),
    Case(r"\boxed{\textbf{Blue}}", "blue", 1.0),
    # yes / no
    Case(r"\boxed{Yes}", "yes", 1.0),
    Case(r"\boxed{yes.}", "yes", 1.0),
    Case(r"\boxed{YES}", "yes", 1.0),
    Case(r"\boxed{\text{No}}", "no", 1.0),
    Case(r"\boxed{No}", "yes", 0.0),
    Case(r"\boxed{Yes, it is.}", "yes", 0.0),
    Case(r"\boxed{no}", "no", 1.0),
    # counts
    Case(r"\boxed{2}", "2", 1.0),
    Case(r"\boxed{two}", "2", 0.0),  # no number words
    Case(r"\boxed{3}", "2", 0.0),
    # which answer counts, and the tag switch
    Case("The shape is a circle.", "circle", 0.0),
    Case(r"\boxed{}", "circle", 0.0),
    Case(r"\boxed{circle}? No: \boxed{triangle}", "triangle", 1.0),
    Case(r"\boxed{circle}? No: \boxed{triangle}", "circle", 0.0),
    Case(r"<think>Three corners.</think><answer>triangle</answer>", "triangle", 1.0, "answer_tags"),
    Case(r"<answer>Yes</answer>", "yes", 1.0, "answer_tags"),
    Case(r"<answer>\boxed{red}</answer>", "red", 1.0, "answer_tags"),
    Case(r"<answer>red</answer>", "blue", 0.0, "answer_tags"),
    Case(r"\boxed{red}", "red", 0.0, "answer_tags"),
]

TASK_CASES = {"math": MATH_CASES, "chart": CHART_CASES, "ocr": OCR_CASES, "vqa": VQA_CASES}


@pytest.mark.parametrize("task", sorted(TASK_CASES))
def test_each_task_has_at_least_40_cases(task: str) -> None:
    assert len(TASK_CASES[task]) >= 40


@pytest.mark.parametrize(("task", "case"), _params(TASK_CASES))
def test_accuracy(task: str, case: Case) -> None:
    result = score(task, case.response, case.truth, prompt_format=case.prompt_format)
    # OCR's expected values are fractions such as 1 - 2/11; the others are exactly 0 or 1.
    assert result.accuracy == pytest.approx(case.expected, abs=1e-12)


@pytest.mark.parametrize("task", sorted(TASK_CASES))
def test_no_answer_scores_zero(task: str) -> None:
    assert ACCURACY_REGISTRY[task](None, "5") == 0.0


@pytest.mark.parametrize(("answer", "truth"), [("", ""), ("  ", ""), ("\n", " ")])
def test_ocr_both_empty_is_a_perfect_match(answer: str, truth: str) -> None:
    assert ACCURACY_REGISTRY["ocr"](answer, truth) == 1.0


def test_math_works_off_the_main_thread() -> None:
    """math-verify's own timeout needs the main thread; elsewhere it must be switched off."""
    with ThreadPoolExecutor(max_workers=1) as executor:
        accuracy = executor.submit(ACCURACY_REGISTRY["math"], r"\frac{1}{2}", "0.5").result()
    assert accuracy == 1.0


# ---------------------------------------------------------------------------------------------
# extraction


@pytest.mark.parametrize(
    ("response", "prompt_format", "expected"),
    [
        (r"\boxed{5}", "boxed", "5"),
        (r"The answer is \boxed{ 5 }.", "boxed", "5"),
        (r"\boxed {5}", "boxed", "5"),
        (r"\boxed{\frac{1}{2}}", "boxed", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2^{x}}}", "boxed", r"\frac{\sqrt{3}}{2^{x}}"),
        (r"\boxed{\{1, 2\}}", "boxed", r"\{1, 2\}"),
        (r"\boxed{\left\{ x \right.}", "boxed", r"\left\{ x \right."),
        (r"\boxed{1} then \boxed{2}", "boxed", "2"),
        (r"\boxed{\boxed{7}}", "boxed", r"\boxed{7}"),
        (r"\boxed{1} then \boxed{\frac{2", "boxed", "1"),
        (r"\boxed{\frac{2", "boxed", None),
        (r"\boxed{ \boxed{7}", "boxed", "7"),  # an unclosed box around a closed one
        (r"\boxed{3} \} \boxed{4", "boxed", "3"),
        (r"\boxed{}", "boxed", None),
        ("no answer here", "boxed", None),
        ("<answer>5</answer>", "boxed", None),
        ("<answer>5</answer>", "answer_tags", "5"),
        ("<answer> 4 </answer> <answer>\n5\n</answer>", "answer_tags", "5"),
        (r"<answer>\boxed{\frac{1}{2}}</answer>", "answer_tags", r"\frac{1}{2}"),
        (r"<answer>\boxed{1} or \boxed{2}</answer>", "answer_tags", r"\boxed{1} or \boxed{2}"),
        ("<answer></answer>", "answer_tags", None),
        ("<answer>5", "answer_tags", None),
        (r"\boxed{5}", "answer_tags", None),
    ],
)
def test_extract_answer(response: str, prompt_format: PromptFormat, expected: str | None) -> None:
    assert extract_answer(response, prompt_format) == expected


def test_format_score_is_linear_in_unclosed_boxes() -> None:
    """The pool computes the format reward in the trainer's process, without a timeout."""
    response = "<think>Hmm.</think>" + r"\boxed{" * 20_000 + r"\boxed{1}"
    start = time.perf_counter()
    assert format_score(response, "boxed") == 1.0  # the last box closes; the others never do
    assert time.perf_counter() - start < 1.0  # scanning from each box: minutes


def test_extract_answer_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="prompt_format"):
        extract_answer(r"\boxed{5}", "json")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# format


@pytest.mark.parametrize(
    ("response", "prompt_format", "expected"),
    [
        ("<think>2 + 3 = 5</think>\n\\boxed{5}", "boxed", 1.0),
        ("<think>2 + 3 = 5</think> The answer is \\boxed{5}.", "boxed", 1.0),
        ("\n<think>\n2 + 3 = 5\n</think>\n\n\\boxed{5}\n", "boxed", 1.0),
        ("<think>maybe \\boxed{4}? no</think> \\boxed{5}", "boxed", 1.0),
        ("\\boxed{5}", "boxed", 0.0),  # missing think
        ("Let me think. <think>2 + 3</think> \\boxed{5}", "boxed", 0.0),  # think not first
        ("\\boxed{5} <think>2 + 3 = 5</think>", "boxed", 0.0),  # think after the answer
        ("<think>2 + 3</think><think>= 5</think>\\boxed{5}", "boxed", 0.0),  # two think blocks
        ("<think>2 + 3 = 5 \\boxed{5}", "boxed", 0.0),  # unclosed think
        ("<think> </think>\\boxed{5}", "boxed", 0.0),  # no reasoning
        ("<think>2 + 3 = 5</think> The answer is 5.", "boxed", 0.0),  # missing answer
        ("<think>so \\boxed{5}</think> 5", "boxed", 0.0),  # answer only inside think
        ("<think>2 + 3 = 5</think>\\boxed{}", "boxed", 0.0),  # empty answer
        ("<think>2 + 3 = 5</think><answer>5</answer>", "boxed", 0.0),  # tags under boxed
        ("<think>2 + 3 = 5</think>\n<answer>5</answer>", "answer_tags", 1.0),
        ("<think>2 + 3 = 5</think><answer>\\boxed{5}</answer>\n", "answer_tags", 1.0),
        ("<think>2 + 3 = 5</think>\\boxed{5}", "answer_tags", 0.0),  # boxed under tags
        ("<think>2 + 3</think><answer>4</answer><answer>5</answer>", "answer_tags", 0.0),
        ("<think>2 + 3 = 5</think><answer>5</answer> Hope this helps!", "answer_tags", 0.0),
        ("<think>2 + 3 = 5</think> So: <answer>5</answer>", "answer_tags", 0.0),
        ("<think>2 + 3 = 5</think><answer> </answer>", "answer_tags", 0.0),
        ("<answer>5</answer>", "answer_tags", 0.0),
        ("<think>a long chain of reasoning cut off by the length", "answer_tags", 0.0),
    ],
)
def test_format_score(response: str, prompt_format: PromptFormat, expected: float) -> None:
    assert format_score(response, prompt_format) == expected


# ---------------------------------------------------------------------------------------------
# total


@pytest.mark.parametrize(
    ("task", "response", "truth", "format_weight", "expected"),
    [
        ("math", "<think>1/2</think> \\boxed{0.5}", "1/2", 0.1, Score(1.0, 1.0, 1.0)),
        ("math", "\\boxed{0.5}", "1/2", 0.1, Score(1.0, 0.0, 0.9)),
        ("math", "<think>1/3</think> \\boxed{0.3}", "1/2", 0.1, Score(0.0, 1.0, 0.1)),
        ("math", "The answer is 0.5", "1/2", 0.1, Score(0.0, 0.0, 0.0)),
        ("math", "\\boxed{0.5}", "1/2", 0.5, Score(1.0, 0.0, 0.5)),
        ("vqa", "<think>round</think> \\boxed{circle}", "circle", 0.0, Score(1.0, 1.0, 1.0)),
        (
            "ocr",
            "<think>read</think> \\boxed{hello world}",
            "Hello World",
            0.1,
            Score(9 / 11, 1.0, 0.9 * 9 / 11 + 0.1),
        ),
    ],
)
def test_total_weights_accuracy_and_format(
    task: str, response: str, truth: str, format_weight: float, expected: Score
) -> None:
    result = score(task, response, truth, format_weight=format_weight)
    assert result.accuracy == pytest.approx(expected.accuracy)
    assert result.format == expected.format
    assert result.total == pytest.approx(expected.total)


def test_unknown_task_names_the_registered_ones() -> None:
    with pytest.raises(ValueError, match="chart"):
        score("geometry", "\\boxed{5}", "5")


def test_registry_holds_the_four_tasks_and_refuses_duplicates() -> None:
    assert {"math", "chart", "ocr", "vqa"} <= set(ACCURACY_REGISTRY)
    with pytest.raises(ValueError, match="already registered"):
        register_accuracy("math")(lambda answer, truth: 0.0)
