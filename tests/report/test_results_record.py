"""The results record keeps each attack profile's per-example outcomes (for paired tests)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from robustsweep.evaluate import suite
from robustsweep.evaluate.outcomes import ExampleResult, ResultsTable, summarize
from robustsweep.jobfile import validate_job
from robustsweep.methods.registry import build
from robustsweep.train.results import finish_trial, profiles_measured


def _row(i: int, outcome: str) -> ExampleResult:
    return ExampleResult(i, 1, outcome, 1, 1, 5, 10, 0, 0.1, "a", "b")


def test_finish_trial_records_outcomes_by_example_id(tmp_path: Path, monkeypatch):
    def final_metrics(method, task, cfg, out_dir):
        table = ResultsTable(out_dir / "attacks" / "dwb")
        table.open({"profile_hash": "h1", "example_ids": [4, 2, 9]})
        rows = [_row(4, "failed"), _row(2, "successful"), _row(9, "skipped")]
        for row in rows:
            table.append(row)
        stale = ResultsTable(out_dir / "attacks" / "old_profile")  # not evaluated this time
        stale.open({"profile_hash": "h0"})
        stale.append(_row(1, "failed"))
        return summarize(rows, "dwb"), [table.csv_path]

    monkeypatch.setattr(suite, "final_metrics", final_metrics)
    state = SimpleNamespace(history=[{"epoch": 1.0, "clean_accuracy": 0.8}], epoch=1)
    cfg = validate_job({"name": "x"}, origin="test")
    record = finish_trial(build("vanilla"), SimpleNamespace(stats={}), cfg, state, tmp_path, {})
    assert record["attack_outcomes"] == {
        "dwb": {"ids": [2, 4, 9], "outcomes": ["successful", "failed", "skipped"],
                "profile_hash": "h1"}
    }
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["attack_outcomes"] == record["attack_outcomes"]
    assert saved["metrics"]["robust_accuracy_n/dwb"] == 3
    assert saved["setup_hash"] and saved["setup_hash"] != saved["config_hash"]
    assert profiles_measured(saved["metrics"]) == ["dwb"]
