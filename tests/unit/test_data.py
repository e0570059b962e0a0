"""Data sources: builtin real corpora, files with bad rows, seeded splits and samples."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from robustsweep.config import DataConfig, SplitSource
from robustsweep.data import BUILTIN_SETS, load_task, preflight
from robustsweep.errors import DataError


def test_builtin_mr_split_is_seeded_and_disjoint() -> None:
    cfg = DataConfig(source="builtin:mr", train_size=200, eval_size=100)
    task = load_task(cfg)
    again = load_task(cfg)
    assert task.label_names == ["negative", "positive"]
    assert len(task.train) == 200 and len(task.eval) == 100
    assert task.train.ids == again.train.ids and task.eval.texts == again.eval.texts
    assert not set(task.train.ids) & set(task.eval.ids)
    assert set(task.train.labels) == {0, 1}
    # the source file is label-sorted; a seeded random order mixes the first rows
    assert len(set(task.eval.labels[:20])) == 2


def test_full_mr_has_the_standard_size() -> None:
    frame = BUILTIN_SETS["mr"].load()
    assert len(frame) == 8530 and frame["label"].value_counts().tolist() == [4265, 4265]


def test_ood_and_anomaly_sets() -> None:
    cfg = DataConfig(train_size=50, eval_size=20,
                     ood=[SplitSource(name="imdb", source="builtin:imdb", size=30)])
    task = load_task(cfg, anomaly=[SplitSource(name="news", source="builtin:news_headlines", size=25)])
    assert len(task.ood["imdb"]) == 30 and set(task.ood["imdb"].labels) <= {0, 1}
    assert "<br" not in " ".join(task.ood["imdb"].texts)
    assert len(task.anomaly["news"]) == 25 and task.anomaly["news"].labels is None


def test_csv_file_bad_rows_counted(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    pd.DataFrame({
        "sentence": ["good", "bad", None, "fine", "meh", "  "],
        "y": ["pos", "neg", "pos", "pos", "other", "neg"],
    }).to_csv(path, index=False)
    cfg = DataConfig(source=f"file:{path}", text_fields=["sentence"], label_field="y",
                     label_names=["neg", "pos"], holdout_fraction=0.34)
    task = load_task(cfg)
    assert task.stats == {f"dropped_rows/file:{path}[train]": 3}
    assert len(task.train) + len(task.eval) == 3
    assert sorted(task.train.labels + task.eval.labels) == [0, 1, 1]


def test_jsonl_pairs_with_eval_file(tmp_path: Path) -> None:
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 3} for i in range(9)]
    pd.DataFrame(rows).to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    pd.DataFrame(rows[:3]).to_json(tmp_path / "dev.jsonl", orient="records", lines=True)
    cfg = DataConfig(source=f"file:{tmp_path / 'train.jsonl'}", eval_split=str(tmp_path / "dev.jsonl"),
                     text_fields=["premise", "hypothesis"])
    task = load_task(cfg)
    assert task.label_names == ["0", "1", "2"]
    assert len(task.train) == 9 and len(task.eval) == 3
    assert task.train.pairs is not None and task.train.pairs[0].startswith("h")


@pytest.mark.parametrize("source, message", [
    ("builtin:nope", "unknown builtin set"),
    ("file:/no/such.csv", "no such file"),
    ("s3://bucket", "expected builtin:<name>"),
    ("builtin:news_headlines", "unlabeled set cannot be a training source"),
])
def test_bad_sources_one_line(source: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_task(DataConfig(source=source))


def test_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) \['sentence'\]"):
        load_task(DataConfig(source=f"file:{path}", text_fields=["sentence"]))


# ---- data files (issue "Reliability and safety", part 4) --------------------------------------


def _write_csv(path: Path, labels: list) -> DataConfig:
    pd.DataFrame({"text": [f"row {i}" for i in range(len(labels))], "label": labels}).to_csv(
        path, index=False)
    return DataConfig(source=f"file:{path}")


@pytest.mark.parametrize("labels, message", [
    ([0, 1, 1000000], "label 1000000 is far outside"),
    ([0, 1, 0.5], "non-integer number 0.5"),
    ([-1, -1], "only negative ids"),
])
def test_label_inference_refuses_nonsense(tmp_path: Path, labels: list, message: str) -> None:
    cfg = _write_csv(tmp_path / "d.csv", labels)
    with pytest.raises(DataError, match=message):
        load_task(cfg)


def test_mixed_label_types(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, "pos"]}).to_json(
        path, orient="records", lines=True)
    with pytest.raises(DataError, match="mixes numbers and names"):
        load_task(DataConfig(source=f"file:{path}"))


def test_sparse_but_plausible_ids_are_kept(tmp_path: Path) -> None:
    """Ids 0, 1 and 3 (class 2 absent from a sample) are still a 4-class task."""
    cfg = _write_csv(tmp_path / "d.csv", [0, 1, 3] * 10)
    assert load_task(cfg).label_names == ["0", "1", "2", "3"]


def test_corrupt_compressed_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv.gz"
    path.write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"d\.csv\.gz: cannot decompress or parse"):
        load_task(DataConfig(source=f"file:{path}"))


def test_dropped_rows_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a", None, "c", "d", "e", "f"],
                  "label": ["neg", "pos", "pos", "what", "neg", "pos"]}).to_csv(path, index=False)
    cfg = DataConfig(source=f"file:{path}", label_names=["neg", "pos"])
    with caplog.at_level("WARNING", logger="robustsweep.data"):
        assert preflight(cfg) == {f"dropped_rows/file:{path}[train]": 2}
    assert "dropped 2 of 6 rows (1 without text, 1 with a missing or unknown label)" in caplog.text


def test_preflight_reads_only_file_sources(tmp_path: Path) -> None:
    anomaly = [SplitSource(name="a", source="file:" + str(tmp_path / "gone.csv"))]
    with pytest.raises(DataError, match="gone.csv: no such file"):
        preflight(DataConfig(), anomaly)
    assert preflight(DataConfig(ood=[SplitSource(name="i", source="builtin:imdb")])) == {}
