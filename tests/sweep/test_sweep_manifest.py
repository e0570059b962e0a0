"""The sweep manifest: atomic saves, trial bookkeeping and the resume view of a sweep."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from robustsweep.errors import ConfigError
from robustsweep.state import manifest as mf


def make(tmp_path: Path, num_samples: int = 4) -> mf.Manifest:
    return mf.Manifest.create(
        tmp_path,
        job={"name": "t"},
        job_file=None,
        num_samples=num_samples,
        study_name="study",
        storage="sqlite:///x.db",
        tracking_uri="sqlite:///m.db",
        experiment="e",
        parent_run_id="parent",
    )


def test_create_and_load_round_trip(tmp_path: Path):
    manifest = make(tmp_path)
    manifest.update_trial("a", status=mf.RUNNING, method="pgd", metrics={"clean_accuracy": 0.5})
    loaded = mf.Manifest.load(tmp_path)
    assert loaded.data == manifest.data
    assert loaded.parent_run_id == "parent" and loaded.tracking_uri == "sqlite:///m.db"
    assert loaded.trial_dir("a") == tmp_path.resolve() / "trials" / "a"
    assert loaded.tune_dir == tmp_path.resolve() / "tune"
    assert mf.Manifest.exists(tmp_path)


def test_update_trial_merges_metrics_and_keeps_other_fields(tmp_path: Path):
    manifest = make(tmp_path)
    manifest.update_trial("a", status=mf.RUNNING, metrics={"clean_accuracy": 0.5, "epoch": 1})
    entry = manifest.update_trial("a", metrics={"clean_accuracy": 0.6, "robust_accuracy/x": 0.2})
    assert entry["status"] == mf.RUNNING
    assert entry["metrics"] == {"clean_accuracy": 0.6, "epoch": 1, "robust_accuracy/x": 0.2}
    assert entry["trial_dir"] == "trials/a" and entry["attempts"] == 0


def test_saves_are_atomic(tmp_path: Path, monkeypatch):
    manifest = make(tmp_path)
    manifest.update_trial("a", status=mf.FINISHED)
    before = mf.Manifest.path_in(tmp_path).read_text()

    def crash(src, dst):  # the driver dies between writing the temp file and renaming it
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        manifest.update_trial("b", status=mf.RUNNING)
    monkeypatch.undo()
    assert mf.Manifest.path_in(tmp_path).read_text() == before
    assert json.loads(before)["trials"]["a"]["status"] == mf.FINISHED
    manifest.save()  # the next save cleans up by replacing the same temp name
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_remaining_counts_only_ended_trials(tmp_path: Path):
    manifest = make(tmp_path, num_samples=5)
    for tid, status in [("a", mf.FINISHED), ("b", mf.PRUNED), ("c", mf.FAILED), ("d", mf.RUNNING)]:
        manifest.update_trial(tid, status=status)
    assert manifest.remaining() == 2
    assert manifest.counts() == {mf.FINISHED: 1, mf.PRUNED: 1, mf.FAILED: 1, mf.RUNNING: 1}
    assert {t["trial_id"] for t in manifest.terminal()} == {"a", "b", "c"}


def test_mark_interrupted_on_resume(tmp_path: Path):
    manifest = make(tmp_path)
    manifest.update_trial("a", status=mf.FINISHED)
    manifest.update_trial("b", status=mf.RUNNING)
    manifest.update_trial("c", status=mf.PENDING)
    manifest.update(status=mf.INTERRUPTED)
    assert sorted(manifest.mark_interrupted()) == ["b", "c"]
    loaded = mf.Manifest.load(tmp_path)
    assert loaded.trials["a"]["status"] == mf.FINISHED
    assert loaded.trials["b"]["status"] == loaded.trials["c"]["status"] == mf.INTERRUPTED
    assert loaded.data["status"] == mf.RUNNING and len(loaded.data["resumes"]) == 1


def test_load_errors_are_one_line(tmp_path: Path):
    with pytest.raises(ConfigError, match="not a sweep directory"):
        mf.Manifest.load(tmp_path)
    mf.Manifest.path_in(tmp_path).write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable manifest"):
        mf.Manifest.load(tmp_path)
    mf.Manifest.path_in(tmp_path).write_text(json.dumps({"version": 99}))
    with pytest.raises(ConfigError, match="manifest version 99"):
        mf.Manifest.load(tmp_path)
