"""Attack accounting (robust accuracy, ASR, queries, perturbed words) and the resumable table."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from robustsweep.evaluate.metrics import wilson_interval
from robustsweep.evaluate.outcomes import (
    ExampleResult,
    ResultsTable,
    attack_outcomes,
    outcome_record,
    summarize,
)


def _row(i: int, outcome: str, queries: int = 10, words: int = 10, changed: int = 0) -> ExampleResult:
    return ExampleResult(example_id=i, label=1, outcome=outcome, original_pred=1,
                         perturbed_pred=0 if outcome == "successful" else 1, queries=queries,
                         num_words=words, perturbed_words=changed, seconds=0.1,
                         original_text=f"text {i}, with \"quotes\"\nand a newline",
                         perturbed_text=f"txet {i}")


def test_summary_hand_computed() -> None:
    rows = [_row(0, "skipped", queries=0), _row(1, "skipped", queries=0),
            _row(2, "successful", 5, 10, 1), _row(3, "successful", 7, 10, 2),
            _row(4, "successful", 9, 5, 1), _row(5, "successful", 11, 6, 3),
            _row(6, "failed", 20), _row(7, "failed", 30), _row(8, "failed", 40),
            _row(9, "timeout", 50)]
    m = summarize(rows, "dwb")
    assert m["robust_accuracy/dwb"] == pytest.approx(4 / 10)  # failed 3 + timeout 1 of 10
    assert m["attack_success_rate/dwb"] == pytest.approx(4 / 8)  # 4 of the 8 attacked
    assert m["avg_queries/dwb"] == pytest.approx((5 + 7 + 9 + 11 + 20 + 30 + 40 + 50) / 8)
    assert m["perturbed_word_ratio/dwb"] == pytest.approx((0.1 + 0.2 + 0.2 + 0.5) / 4)
    assert m["attack_clean_accuracy/dwb"] == pytest.approx(0.8)
    assert m["attack_timeout_rate/dwb"] == pytest.approx(1 / 8)
    assert m["attack_examples/dwb"] == 10


def test_robust_accuracy_never_exceeds_clean_accuracy() -> None:
    rows = [_row(0, "skipped"), _row(1, "failed"), _row(2, "failed")]
    m = summarize(rows, "a")
    assert m["robust_accuracy/a"] == pytest.approx(2 / 3) == m["attack_clean_accuracy/a"]
    assert m["attack_success_rate/a"] == 0.0


def test_table_round_trip_and_resume(tmp_path: Path) -> None:
    table = ResultsTable(tmp_path / "p")
    manifest = {"profile_hash": "abc", "example_ids": [0, 1, 2]}
    assert table.open(manifest) == {}
    table.append(_row(0, "successful", changed=1))
    table.append(_row(1, "failed"))
    again = ResultsTable(tmp_path / "p")
    done = again.open(manifest)
    assert sorted(done) == [0, 1]
    assert done[0] == _row(0, "successful", changed=1)  # text with quotes/newline survives


def test_torn_last_line_is_dropped_and_redone(tmp_path: Path) -> None:
    table = ResultsTable(tmp_path / "p")
    table.open({"h": 1})
    table.append(_row(0, "failed"))
    with table.csv_path.open("a") as handle:
        handle.write('1,1,succ')  # a crash mid-write
    assert [r.example_id for r in table.read()] == [0]
    table.repair()
    table.append(_row(1, "failed"))
    assert [r.example_id for r in table.read()] == [0, 1]


def test_other_manifest_starts_over(tmp_path: Path) -> None:
    table = ResultsTable(tmp_path / "p")
    table.open({"profile_hash": "a"})
    table.append(_row(0, "failed"))
    assert table.open({"profile_hash": "b"}) == {}
    assert table.read() == []


def test_summary_carries_n_and_wilson_intervals() -> None:
    rows = [_row(i, "skipped") for i in range(6)] + [_row(i, "failed") for i in range(6, 12)] \
        + [_row(i, "successful") for i in range(12, 24)]
    m = summarize(rows, "dwb")
    assert m["robust_accuracy/dwb"] == pytest.approx(6 / 24)
    assert m["robust_accuracy_n/dwb"] == 24
    assert (m["robust_accuracy_ci_low/dwb"], m["robust_accuracy_ci_high/dwb"]) == pytest.approx(
        (0.11999366228595007, 0.4489944400515401))
    # ASR's n is the attacked (non-skipped) count: 12 successful of 18
    assert m["attack_success_rate_n/dwb"] == 18
    assert (m["attack_success_rate_ci_low/dwb"], m["attack_success_rate_ci_high/dwb"]) == \
        pytest.approx(wilson_interval(12, 18))


def test_summary_of_nothing_attacked_has_no_interval() -> None:
    m = summarize([_row(0, "skipped")], "a")
    assert m["attack_success_rate_n/a"] == 0
    assert math.isnan(m["attack_success_rate/a"]) and math.isnan(m["attack_success_rate_ci_low/a"])
    assert m["robust_accuracy_n/a"] == 1 and m["robust_accuracy_ci_low/a"] == 0.0


def test_outcome_record_is_compact_and_sorted_by_id(tmp_path: Path) -> None:
    table = ResultsTable(tmp_path / "attacks" / "dwb")
    table.open({"profile_hash": "abc", "example_ids": [7, 3, 5]})
    for i, outcome in ((7, "failed"), (3, "successful"), (5, "skipped")):
        table.append(_row(i, outcome))
    assert outcome_record(table.directory) == {
        "ids": [3, 5, 7], "outcomes": ["successful", "skipped", "failed"], "profile_hash": "abc"}
    assert outcome_record(tmp_path / "nothing") is None
    assert attack_outcomes(tmp_path / "attacks", ["dwb", "textfooler"]) == {
        "dwb": outcome_record(table.directory)}
