"""A sweep's trials share one loaded Task on disk (task_cache.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from robustsweep import task_cache
from robustsweep.config import DataConfig

MR = DataConfig(source="builtin:mr", train_size=40, eval_size=10, max_length=32)


def test_second_trial_reads_the_cached_task_without_loading(tmp_path: Path, monkeypatch) -> None:
    first = task_cache.cached_task(MR, None, tmp_path)
    assert len(list(tmp_path.glob("task-*.json"))) == 1

    def no_loading(*_args):
        raise AssertionError("load_task ran although the cache holds this task")

    monkeypatch.setattr(task_cache, "load_task", no_loading)
    again = task_cache.cached_task(MR, None, tmp_path)
    assert again == first  # every field: rows, ids, labels, label names, OOD/anomaly sets, stats


def test_without_a_cache_dir_nothing_is_written(tmp_path: Path) -> None:
    task_cache.cached_task(MR, None, None)
    assert not list(tmp_path.iterdir())


def test_key_follows_the_data_config_and_local_file_contents(tmp_path: Path) -> None:
    assert task_cache.task_key(MR) == task_cache.task_key(MR.model_copy())
    assert task_cache.task_key(MR) != task_cache.task_key(MR.model_copy(update={"split_seed": 1}))
    data = tmp_path / "rows.csv"
    data.write_text("text,label\ngood,1\nbad,0\n")
    local = DataConfig(source=str(data), train_size=2)
    before = task_cache.task_key(local)
    data.write_text("text,label\ngood,1\nbad,0\nfine,1\n")
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))
    assert task_cache.task_key(local) != before


@pytest.mark.parametrize("content", ["{not json", '{"format": 0}', '{"format": 1}'])
def test_an_unreadable_or_old_entry_is_built_again(tmp_path: Path, content: str) -> None:
    path = tmp_path / f"task-{task_cache.task_key(MR)}.json"
    path.write_text(content)
    task = task_cache.cached_task(MR, None, tmp_path)
    assert len(task.train.texts) == 40
    assert task_cache.task_from_json(json.loads(path.read_text())) == task
