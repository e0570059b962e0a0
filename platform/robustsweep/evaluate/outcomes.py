"""Per-example attack results: one CSV row each, appended as they finish, and the metrics.

The CSV is the resume point: an interrupted evaluation re-reads it and attacks only the
examples that have no row yet. A ``manifest.json`` beside it pins the profile hash and the
example ids; a table written under another spec is never mixed in.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from robustsweep.evaluate.metrics import wilson_interval

OUTCOMES = ("successful", "failed", "skipped", "timeout")


@dataclass
class ExampleResult:
    """What happened to one example (``queries``: model queries the attack spent)."""

    example_id: int
    label: int
    outcome: str
    original_pred: int
    perturbed_pred: int
    queries: int
    num_words: int
    perturbed_words: int
    seconds: float
    original_text: str
    perturbed_text: str
    original_pair: str = ""
    perturbed_pair: str = ""

    @classmethod
    def from_row(cls, row: dict[str, str]) -> ExampleResult:
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, kind in kinds.items():
            raw = row.get(name, "")
            values[name] = int(raw) if kind == "int" else float(raw) if kind == "float" else raw
        return cls(**values)


COLUMNS = [f.name for f in fields(ExampleResult)]


class ResultsTable:
    """Append-only CSV of ExampleResults plus the manifest that says what produced them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.csv_path = directory / "examples.csv"
        self.manifest_path = directory / "manifest.json"

    def open(self, manifest: dict[str, Any]) -> dict[int, ExampleResult]:
        """Rows already done under the same manifest (resume); a different manifest starts over."""
        self.directory.mkdir(parents=True, exist_ok=True)
        same = (self.manifest_path.is_file()
                and json.loads(self.manifest_path.read_text()) == manifest)
        if not same:
            self.manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            self.csv_path.write_text(",".join(COLUMNS) + "\n")
            return {}
        return {r.example_id: r for r in self.read()}

    def read(self) -> list[ExampleResult]:
        """All complete rows (a row cut off by a crash is dropped and redone)."""
        if not self.csv_path.is_file():
            return []
        rows: list[ExampleResult] = []
        with self.csv_path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if None in row or any(row.get(c) is None for c in COLUMNS):
                    continue
                try:
                    result = ExampleResult.from_row(row)
                except ValueError:
                    continue
                if result.outcome in OUTCOMES:
                    rows.append(result)
        return rows

    def append(self, result: ExampleResult) -> None:
        with self.csv_path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=COLUMNS).writerow(asdict(result))
            handle.flush()

    def repair(self) -> None:
        """Rewrite the CSV with complete rows only, so appends never follow a torn line."""
        rows = self.read()
        tmp = self.csv_path.with_suffix(".tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow(asdict(row))
        tmp.replace(self.csv_path)


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def _proportion(name: str, successes: int, n: int) -> dict[str, float]:
    """A share with its n and 95 % Wilson interval, as ``name/<p>``, ``name_n/<p>``, ..."""
    metric, profile = name.split("/", 1)
    low, high = wilson_interval(successes, n)
    return {
        name: successes / n if n else float("nan"),
        f"{metric}_n/{profile}": float(n),
        f"{metric}_ci_low/{profile}": low,
        f"{metric}_ci_high/{profile}": high,
    }


def summarize(results: list[ExampleResult], name: str) -> dict[str, float]:
    """Canonical robust metrics for one profile.

    - robust_accuracy: share of all attacked examples still classified correctly afterwards
      (failed + timeout) / n; skipped (already misclassified) examples count as wrong.
    - attack_success_rate: successful / (successful + failed + timeout), i.e. among examples
      the attack actually ran on; a timeout counts as a failure of the attack.
    - both come with their n (``robust_accuracy_n``: all examples; ``attack_success_rate_n``:
      the attacked, non-skipped ones) and a 95 % Wilson interval (``*_ci_low``, ``*_ci_high``),
      because a few dozen attacked examples leave a robust accuracy uncertain by ±0.15.
    - avg_queries: mean model queries over the examples the attack ran on.
    - perturbed_word_ratio: mean share of words changed, over successful attacks.
    """
    n = len(results)
    count = {o: sum(1 for r in results if r.outcome == o) for o in OUTCOMES}
    attacked = [r for r in results if r.outcome != "skipped"]
    nan = float("nan")
    return {
        **_proportion(f"robust_accuracy/{name}", count["failed"] + count["timeout"], n),
        **_proportion(f"attack_success_rate/{name}", count["successful"], len(attacked)),
        f"avg_queries/{name}": _mean([float(r.queries) for r in attacked]),
        f"perturbed_word_ratio/{name}": _mean([
            r.perturbed_words / r.num_words for r in results
            if r.outcome == "successful" and r.num_words > 0]),
        f"attack_clean_accuracy/{name}": (n - count["skipped"]) / n if n else nan,
        f"attack_timeout_rate/{name}": count["timeout"] / len(attacked) if attacked else nan,
        f"attack_examples/{name}": float(n),
    }


def robust_correct(outcome: str) -> bool:
    """Whether an example still counts as correct after the attack (robust accuracy's numerator)."""
    return outcome in ("failed", "timeout")


def outcome_record(directory: Path) -> dict[str, Any] | None:
    """Compact per-example outcomes of one profile's table, for paired comparisons.

    ``{"ids": [...], "outcomes": [...], "profile_hash": ...}`` sorted by example id (ids and
    outcome strings only, so results records stay small); None when there is no table.
    """
    table = ResultsTable(directory)
    rows = sorted(table.read(), key=lambda r: r.example_id)
    if not rows:
        return None
    record: dict[str, Any] = {
        "ids": [r.example_id for r in rows],
        "outcomes": [r.outcome for r in rows],
    }
    try:
        record["profile_hash"] = json.loads(table.manifest_path.read_text()).get("profile_hash")
    except (OSError, json.JSONDecodeError, AttributeError):
        record["profile_hash"] = None
    return record


def attack_outcomes(attacks_dir: Path, profiles: list[str]) -> dict[str, dict[str, Any]]:
    """``outcome_record`` of each named profile under ``attacks_dir`` that has a table."""
    found = {p: outcome_record(attacks_dir / p) for p in profiles}
    return {p: record for p, record in found.items() if record is not None}


def is_finite(value: float) -> bool:
    return not (isinstance(value, float) and math.isnan(value))
