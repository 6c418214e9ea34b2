"""The sweep report's maths on hand-written metrics rows: mean ± std over seeds, tokens at equal
accuracy ("never" included), failed and unfinished runs listed; the files it writes."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace

import pytest

from tiny_r1v.evidence.sweep_report import (
    BASE,
    REPORT_FILES,
    RunRecord,
    csv_text,
    curves,
    diagnostics,
    json_payload,
    markdown,
    mean_std,
    summarize,
    tokens_at_accuracy,
    trailing_mean,
    write_report,
)


def val(step: int, accuracy: float, tokens: float, clipped: float = 0.0) -> dict:
    return {
        "step": step,
        "val/samples": 4.0,
        "val/reward/accuracy": accuracy,
        "val/length/mean": tokens,
        "val/length/clip_frac": clipped,
    }


def train(step: int, accuracy: float = 0.5, tokens: float = 10.0) -> dict:
    return {"step": step, "reward/mean": 0.5, "reward/accuracy": accuracy, "length/mean": tokens}


def run(method: str, seed: int, curve: list[tuple[float, float]], task: str = "math", clipped: float = 0.0):
    """A finished run validated at steps 0, 1, ...: (accuracy, tokens) per validation."""
    rows = []
    for step, (accuracy, tokens) in enumerate(curve):
        if step:
            rows.append(train(step))
        rows.append(val(step, accuracy, tokens, clipped))
    return RunRecord(task, method, seed, "finished", tuple(rows))


RECORDS = [
    run("grpo", 1, [(0.1, 30), (0.3, 28), (0.5, 26)]),
    run("grpo", 2, [(0.1, 30), (0.4, 27), (0.7, 25)], clipped=0.5),
    run("lipo", 1, [(0.1, 30), (0.6, 12), (0.6, 10)]),  # reaches grpo's 0.5 at step 1, 12 tokens
    run("lipo", 2, [(0.1, 30), (0.5, 14), (0.6, 11)]),  # never reaches grpo's 0.7
    RunRecord("math", "lipo", 3, "failed", (val(0, 0.1, 30),), "Traceback ...\nRuntimeError: out of memory"),
    RunRecord("math", "grpo", 3, "not started"),
]


def test_mean_and_sample_std():
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, math.sqrt(0.02)))
    mean, std = mean_std([0.5])
    assert mean == 0.5 and math.isnan(std)
    assert all(math.isnan(x) for x in mean_std([]))


def test_tokens_at_accuracy_is_the_first_validation_reaching_the_target():
    rows = RECORDS[2].rows
    assert tokens_at_accuracy(rows, 0.5) == (1, 12.0)
    assert tokens_at_accuracy(rows, 0.6) == (1, 12.0)  # reaching means >=
    assert tokens_at_accuracy(rows, 0.61) is None  # never
    # Rows out of step order, and a training row in between, change nothing.
    assert tokens_at_accuracy([rows[-1], train(1), *rows[:-1]], 0.5) == (1, 12.0)


def test_summary_per_task_and_method_over_finished_seeds():
    grpo, lipo = summarize(RECORDS, reference="grpo")
    assert (grpo.method, grpo.seeds, lipo.method, lipo.seeds) == ("grpo", 2, "lipo", 2)
    assert grpo.accuracy == pytest.approx(0.6) and grpo.accuracy_std == pytest.approx(math.sqrt(0.02))
    assert grpo.tokens == pytest.approx(25.5) and grpo.truncated == pytest.approx(0.25)
    assert lipo.accuracy == pytest.approx(0.6) and lipo.accuracy_std == pytest.approx(0.0)
    assert lipo.tokens == pytest.approx(10.5)
    # lipo seed 1 reaches grpo's final 0.5 at 12 tokens; seed 2 never reaches 0.7.
    assert (lipo.equal_accuracy_reached, lipo.equal_accuracy_compared) == (1, 2)
    assert lipo.equal_accuracy_tokens == 12.0 and math.isnan(lipo.equal_accuracy_tokens_std)
    # grpo against itself: the first step at its own final accuracy is its last.
    assert (grpo.equal_accuracy_tokens, grpo.equal_accuracy_reached) == (25.5, 2)
    assert (grpo.failed, grpo.unfinished, lipo.failed, lipo.unfinished) == (0, 1, 1, 0)


def test_never_and_no_reference():
    records = [run("grpo", 1, [(0.1, 30), (0.9, 20)]), run("lipo", 1, [(0.1, 30), (0.2, 8)])]
    lipo = summarize(records)[1]
    assert (lipo.equal_accuracy_reached, lipo.equal_accuracy_compared) == (0, 1)
    assert math.isnan(lipo.equal_accuracy_tokens)
    assert "never (0/1)" in markdown(summarize(records), records, "grpo")
    assert json_payload(summarize(records), records, "grpo")["runs"][1]["equal_accuracy"] == "never"
    # Without a finished reference run there is nothing to compare with: no figure, not "never".
    alone = summarize([records[1]])[0]
    assert alone.equal_accuracy_compared == 0 and math.isnan(alone.equal_accuracy_tokens)


def test_failed_and_unfinished_runs_are_listed_not_dropped():
    text = markdown(summarize(RECORDS), RECORDS, "grpo")
    assert "| math/lipo/seed-3 | failed | RuntimeError: out of memory |" in text
    assert "| math/grpo/seed-3 | not started |" in text
    payload = json_payload(summarize(RECORDS), RECORDS, "grpo")
    statuses = {(r["method"], r["seed"]): r["status"] for r in payload["runs"]}
    assert statuses[("lipo", 3)] == "failed" and statuses[("grpo", 3)] == "not started"
    assert "out of memory" in payload["runs"][4]["error"]


def test_table_cells_csv_and_json():
    text = markdown(summarize(RECORDS), RECORDS, "grpo")
    assert "| lipo | 2 | 60.0 ± 0.0 | 10.5 ± 0.7 | 0.0 ± 0.0 | 12.0 (1/2) | – | – | – | 1 | 0 |" in text
    lines = list(csv.DictReader(io.StringIO(csv_text(summarize(RECORDS)))))
    assert lines[1]["method"] == "lipo" and lines[1]["equal_accuracy_tokens_std"] == ""  # NaN: empty
    payload = json_payload(summarize(RECORDS), RECORDS, "grpo")
    assert payload["rows"][1]["equal_accuracy_tokens_std"] is None
    assert payload["runs"][2]["equal_accuracy"] == {"step": 1, "tokens": 12.0}
    json.dumps(payload, allow_nan=False)


def test_write_report_writes_tables_and_plots(tmp_path):
    records = [*RECORDS, run("lipo", 1, [(0.2, 9), (0.4, 7)], task="ocr")]
    paths = write_report(tmp_path / "report", records)
    assert [p.name for p in paths] == [*REPORT_FILES, "curves-math.png", "curves-ocr.png"]
    for path in paths:
        assert path.stat().st_size > 0
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths if p.suffix == ".png")


def with_lipo(record: RunRecord, boosted: list[float], l_opt: list[float]) -> RunRecord:
    """`record` with LIPO's diagnostics on its training rows, in step order."""
    training = iter(zip(boosted, l_opt, strict=True))
    rows = []
    for row in record.rows:
        if "reward/mean" in row:
            frac, length = next(training)
            row = {**row, "lipo/boosted_frac": frac, "lipo/l_opt_mean": length}
        rows.append(row)
    return replace(record, rows=tuple(rows))


def test_diagnostics_average_each_runs_steps_then_the_finished_seeds():
    records = [
        with_lipo(RECORDS[2], [0.2, 0.4], [40.0, 44.0]),  # run means 0.3, 42
        with_lipo(RECORDS[3], [0.1, 0.1], [50.0, 50.0]),  # 0.1, 50
        *RECORDS[:2],  # grpo: none logged
        RECORDS[4],  # failed: left out
    ]
    (row,) = diagnostics(records)
    assert (row["task"], row["method"], row["runs"]) == ("math", "lipo", 2)
    assert row["lipo/boosted_frac"] == pytest.approx((0.2, math.sqrt(0.02)))
    assert row["lipo/l_opt_mean"] == pytest.approx((46.0, math.sqrt(32.0)))
    assert "lipo/penalized_frac" not in row
    text = markdown(summarize(records), records, "grpo")
    assert "| math | lipo | 2 | 0.200 ± 0.141 | 46.000 ± 5.657 |" in text
    assert json_payload(summarize(records), records, "grpo")["diagnostics"][0]["lipo/l_opt_mean"] == pytest.approx(
        [46.0, math.sqrt(32.0)]
    )


def sampled(accuracy: float, tokens: float, truncated: float = 0.0) -> dict:
    return {"accuracy": accuracy, "mean_tokens": tokens, "truncated": truncated}


def test_sampled_figures_average_the_finished_seeds_that_have_one():
    records = [
        RunRecord("math", BASE, 0, "finished", (val(0, 0.1, 30),), sampled=sampled(0.2, 50, 0.1)),
        replace(RECORDS[0], sampled=sampled(0.4, 40)),
        replace(RECORDS[1], sampled=sampled(0.6, 36, 0.2)),
        replace(RECORDS[2], sampled=sampled(0.5, 20)),
        RECORDS[3],  # finished, not evaluated: the greedy figures only
        replace(RECORDS[4], sampled=sampled(0.9, 5)),  # failed: in no figure
    ]
    base, grpo, lipo = summarize(records)
    assert (base.method, base.seeds, base.accuracy, base.sampled_accuracy, base.sampled_runs) == (BASE, 1, 0.1, 0.2, 1)
    assert base.equal_accuracy_compared == 0  # no reference run of its own seed: no figure
    assert grpo.sampled_accuracy == pytest.approx(0.5) and grpo.sampled_accuracy_std == pytest.approx(math.sqrt(0.02))
    assert (grpo.sampled_tokens, grpo.sampled_truncated, grpo.sampled_runs) == (38, pytest.approx(0.1), 2)
    assert (lipo.seeds, lipo.sampled_runs, lipo.sampled_tokens) == (2, 1, 20)
    assert math.isnan(lipo.sampled_tokens_std)
    text = markdown([base, grpo, lipo], records, "grpo")
    assert "| base | 1 | 10.0 | 30.0 | 0.0 | – | 20.0 | 50.0 | 10.0 | 0 | 0 |" in text
    assert json_payload([grpo], records, "grpo")["runs"][1]["sampled"] == sampled(0.4, 40)


def test_write_report_adds_the_sampled_plot_when_a_run_was_evaluated(tmp_path):
    records = [replace(RECORDS[0], sampled=sampled(0.4, 40)), *RECORDS[1:]]
    paths = write_report(tmp_path / "report", records)
    assert [p.name for p in paths] == [*REPORT_FILES, "accuracy-vs-tokens-sampled.png", "curves-math.png"]


def test_a_base_without_a_step_0_validation_keeps_its_sampled_figures():
    base = RunRecord("math", BASE, 0, "finished", (), sampled=sampled(0.2, 50))  # val_before_train off
    row = summarize([base, *RECORDS[:2]])[0]
    assert (row.seeds, row.sampled_runs, row.sampled_accuracy) == (0, 1, 0.2) and math.isnan(row.accuracy)


def test_curves_of_validations_and_of_training_rollouts():
    a = RunRecord(
        "math", "grpo", 1, "finished", (val(0, 0.1, 30), train(1, 0.2, 50), train(2, 0.4, 40), val(2, 0.3, 28))
    )
    b = RunRecord("math", "grpo", 2, "incomplete", (val(0, 0.3, 30), train(1, 0.4, 60)))
    base = RunRecord("math", BASE, 0, "finished", (val(0, 0.2, 30),))
    greedy = curves([base, a, b], "math")
    assert list(greedy) == ["grpo"]  # the base is a row, not a curve
    assert greedy["grpo"] == {"step": [0.0, 2.0], "accuracy": [pytest.approx(0.2), 0.3], "tokens": [30.0, 28.0]}
    rollout = curves([base, a, b], "math", rollout=True)["grpo"]
    assert rollout == {"step": [1.0, 2.0], "accuracy": [pytest.approx(0.3), 0.4], "tokens": [55.0, 40.0]}


def test_trailing_mean():
    assert trailing_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert trailing_mean([2.0], 5) == [2.0]
