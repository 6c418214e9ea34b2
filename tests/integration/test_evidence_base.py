"""The common base's checks (`tiny_r1v.evidence.base`) on the tiny random model and a handful of
testbed prompts, blank-image control included: every printed figure is recounted from the scored
samples. No accuracy level is asserted (the model is random); the full base is not built here."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tiny_r1v.config.train import PromptConfig
from tiny_r1v.data import convert, load_examples
from tiny_r1v.evidence.base import (
    BLANK_GAP,
    TESTBED_KINDS,
    ScoredSample,
    blank_example,
    check_subset,
    format_checks,
    group_kind,
    run_checks,
    task_figures,
)
from tiny_r1v.rewards import score

PIXELS = {"min_pixels": 3136, "max_pixels": 12544}  # configs/quickstart.yaml's, as the shared engine's


def test_group_kinds_and_figures_from_hand_made_samples() -> None:
    def sample(uid: str, task: str, accuracy: float, truncated: bool = False) -> ScoredSample:
        return ScoredSample(uid, task, 0, "", accuracy, 10 if truncated else 4, truncated)

    samples = [
        sample("a", "math", 1.0),
        sample("a", "math", 0.0, truncated=True),
        sample("b", "math", 1.0),
        sample("b", "math", 1.0),
        sample("c", "ocr", 0.0),
        sample("c", "ocr", 0.0),
        sample("d", "ocr", 0.5),
        sample("d", "ocr", 0.5),
    ]
    assert [group_kind(g) for g in ([1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.5, 0.5])] == [
        "mixed",
        "all-correct",
        "all-wrong",
        "tied",
    ]
    figures = task_figures(samples)
    assert (figures["math"].accuracy, figures["math"].mixed, figures["math"].all_correct) == (0.75, 0.5, 0.5)
    assert (figures["ocr"].accuracy, figures["ocr"].all_wrong, figures["ocr"].mixed) == (0.25, 0.5, 0.0)
    assert figures["all"].prompts == 4 and figures["all"].truncated == 1 / 8
    assert figures["all"].mean_tokens == (10 + 7 * 4) / 8


def test_blank_example_keeps_the_image_size(tmp_path: Path) -> None:
    convert.main(["tb-chart", "--split", "test", "--limit", "1", "--out", str(tmp_path)])
    (example,) = load_examples(tmp_path / "test.jsonl", **PIXELS)
    blank = blank_example(example)
    (original,), (white,) = example.load_images(), blank.load_images()
    assert white.size == original.size
    assert white.getextrema() == ((255, 255),) * 3 and original.getextrema() != white.getextrema()
    assert (blank.uid, blank.question, blank.answer) == (example.uid, example.question, example.answer)
    assert Image.open(io.BytesIO(blank.images[0])).format == "PNG"


@pytest.mark.vllm
def test_checks_on_the_tiny_model_recount(tmp_path: Path, tiny_model_dir: Path, vllm_engine) -> None:
    from transformers import AutoProcessor

    for task, kind in TESTBED_KINDS.items():
        convert.main([kind, "--split", "test", "--limit", "3", "--out", str(tmp_path / task)])
    files = [tmp_path / task / "test.jsonl" for task in TESTBED_KINDS]
    examples = check_subset(load_examples(files, **PIXELS), per_task=2, seed=0)
    assert [e.task for e in examples] == ["math", "math", "chart", "chart", "ocr", "ocr"]
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    n, max_tokens = 3, 6

    prompt = PromptConfig()  # images first, boxed answers
    report, real, blank = run_checks(
        vllm_engine, processor, examples, n=n, max_tokens=max_tokens, seed=1, prompt=prompt
    )

    answers = {e.uid: (e.task, e.answer) for e in examples}
    for control, samples in (("real", real), ("blank", blank)):
        assert [(s.uid, s.sample) for s in samples] == [(e.uid, k) for e in examples for k in range(n)]
        for s in samples:
            task, answer = answers[s.uid]
            assert s.task == task
            assert s.accuracy == score(task, s.response, answer).accuracy
            assert 1 <= s.tokens <= max_tokens and (s.truncated == (s.tokens == max_tokens) or not s.truncated)
        # recount every figure of the report by hand
        for task in [*TESTBED_KINDS, "all"]:
            rows = [s for s in samples if task in ("all", s.task)]
            groups = [[s.accuracy for s in rows if s.uid == uid] for uid in dict.fromkeys(s.uid for s in rows)]
            figures = report[control][task]
            assert figures["prompts"] == len(groups) and figures["samples"] == len(rows) == n * len(groups)
            assert figures["accuracy"] == pytest.approx(sum(s.accuracy for s in rows) / len(rows))
            assert figures["truncated"] == pytest.approx(sum(s.truncated for s in rows) / len(rows))
            assert figures["mean_tokens"] == pytest.approx(sum(s.tokens for s in rows) / len(rows))
            mixed = sum(len(set(g)) > 1 for g in groups)
            correct = sum(set(g) == {1.0} for g in groups)
            wrong = sum(set(g) == {0.0} for g in groups)
            assert (figures["mixed"], figures["all_correct"], figures["all_wrong"]) == pytest.approx(
                (mixed / len(groups), correct / len(groups), wrong / len(groups))
            )
    for task in TESTBED_KINDS:
        expected = report["blank"][task]["accuracy"] <= report["real"][task]["accuracy"] - BLANK_GAP
        assert report["verdicts"][f"blank_lower/{task}"] == expected
    assert report["verdicts"]["truncated_below_limit"] == (report["real"]["all"]["truncated"] < 0.1)
    table = format_checks(report)
    assert all(f"check {i}," in table for i in (1, 2, 3)) and all(task in table for task in TESTBED_KINDS)
