"""Which trials a report compares, and the tables it shows of them: each leaderboard method
against vanilla on shared example ids (same seed where there is one), and per-method aggregates
over seeds. The statistics themselves live in ``stats``.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

from robustsweep.evaluate.metrics import wilson_interval
from robustsweep.report.records import SweepRecords, TrialRecord
from robustsweep.report.stats import (
    VANILLA,
    PairedRow,
    Proportion,
    compare,
    format_proportion,
    proportion,
)

__all__ = ["paired_rows", "paired_table", "seed_groups", "seeds_table"]


def knob_key(trial: TrialRecord) -> str:
    """Identity of a configuration apart from its seed: method, knobs and the record's setup
    hash (train/data/model settings that are not knobs, e.g. in a dir of grid records)."""
    return json.dumps([trial.method, trial.knobs, trial.setup_hash], sort_keys=True, default=str)


def _siblings(records: SweepRecords, trial: TrialRecord) -> list[TrialRecord]:
    """Finished trials with the trial's method and knobs (its other seeds), by seed."""
    key = knob_key(trial)
    same = [t for t in records.finished() if knob_key(t) == key]
    return sorted(same, key=lambda t: (t.seed is None, t.seed or 0, t.trial_id))


def _best_vanilla(records: SweepRecords, winners: list[TrialRecord]) -> TrialRecord | None:
    """The leaderboard's vanilla trial, else the best finished vanilla trial by ``rank_by``."""
    for trial in winners:
        if trial.method == VANILLA:
            return trial
    vanilla = [t for t in records.finished() if t.method == VANILLA]
    metric, sign = records.rank_by, 1.0 if records.mode_of(records.rank_by) == "max" else -1.0
    ranked = sorted(vanilla, key=lambda t: -sign * t.metrics.get(metric, -sign * math.inf))
    return ranked[0] if ranked else None


def _partner(
    records: SweepRecords, trial: TrialRecord, best: TrialRecord
) -> tuple[TrialRecord, str]:
    """The vanilla trial with the same seed (best vanilla, then its knobs, first), else best
    vanilla."""
    if trial.seed is not None:
        pool = [best] + _siblings(records, best) + [
            t for t in records.finished() if t.method == VANILLA
        ]
        for candidate in pool:
            if candidate.seed == trial.seed:
                return candidate, "same seed"
    return best, "best vanilla"


def _profiles(*trials: TrialRecord) -> list[str]:
    return sorted({k.split("/", 1)[1] for t in trials for k in t.metrics
                   if k.startswith("robust_accuracy/")})


def paired_rows(records: SweepRecords, winners: list[TrialRecord]) -> list[PairedRow]:
    """Each non-vanilla leaderboard trial (each of its seeds) against vanilla, per profile."""
    best = _best_vanilla(records, winners)
    if best is None:
        return []
    rows = []
    for winner in winners:
        if winner.method == VANILLA:
            continue
        for trial in _siblings(records, winner):
            vanilla, how = _partner(records, trial, best)
            for profile in _profiles(trial, vanilla):
                row = PairedRow(trial.method, trial.label, trial.seed, vanilla.label, how, profile)
                rows.append(compare(row, trial.attack_outcomes.get(profile),
                                    vanilla.attack_outcomes.get(profile)))
    return rows


PAIRED_HEAD = [
    "method",
    "trial",
    "seed",
    "vs vanilla",
    "attack",
    "n paired",
    "robust acc (method)",
    "robust acc (vanilla)",
    "Δ robust acc",
    "Δ 95% CI (paired bootstrap)",
    "method-only / vanilla-only",
    "McNemar p",
    "note",
]


def _signed(value: float) -> str:
    return "" if math.isnan(value) else f"{value:+.4f}"


def _paired_cells(row: PairedRow) -> list[str]:
    measured = row.method_acc is not None and row.vanilla_acc is not None
    return [
        row.method,
        row.trial,
        "" if row.seed is None else str(row.seed),
        f"{row.vanilla} ({row.partner})",
        row.profile,
        str(row.n) if measured else "",
        format_proportion(row.method_acc) if row.method_acc else "",
        format_proportion(row.vanilla_acc) if row.vanilla_acc else "",
        _signed(row.delta),
        f"[{_signed(row.low)}, {_signed(row.high)}]" if measured else "",
        f"{row.method_only} / {row.vanilla_only}" if measured else "",
        f"{row.p_value:.3g}" if measured else "",
        row.note,
    ]


def paired_table(
    records: SweepRecords, winners: list[TrialRecord]
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paired comparison against vanilla (paired_vs_vanilla.csv)."""
    return PAIRED_HEAD, [_paired_cells(r) for r in paired_rows(records, winners)]


# ---- over seeds ------------------------------------------------------------------------------
def seed_groups(records: SweepRecords) -> list[list[TrialRecord]]:
    """Finished trials that share method and knobs over two or more seeds (grid sweeps)."""
    groups: dict[str, list[TrialRecord]] = {}
    for trial in records.finished():
        groups.setdefault(knob_key(trial), []).append(trial)
    multi = [g for g in groups.values() if len({t.seed for t in g}) > 1]
    return [sorted(g, key=lambda t: (t.seed is None, t.seed or 0, t.trial_id)) for g in multi]


def mean_std(values: list[float]) -> str:
    """``mean ± std`` (sample std over seeds; ± 0 for a single value)."""
    if not values:
        return ""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    digits = 4 if max(abs(v) for v in values) < 10 else 1
    return f"{statistics.fmean(values):.{digits}f} ± {spread:.{digits}f}"


def pooled(trials: list[TrialRecord], metric: str) -> Proportion | None:
    """One Wilson interval over the examples of all seeds together (k and n summed)."""
    parts = [proportion(t.metrics, metric) for t in trials]
    if not parts or any(p is None or p.n <= 0 for p in parts):
        return None
    k = sum(round(p.value * p.n) for p in parts if p)
    n = sum(p.n for p in parts if p)
    low, high = wilson_interval(k, n)
    return Proportion(k / n, n, low, high)


def seeds_table(
    records: SweepRecords, columns: list[str], header: Any
) -> tuple[list[str], list[list[str]]]:
    """Per method over seeds: mean ± std of each metric, pooled Wilson for robust accuracy.

    ``columns`` are the leaderboard's metric names, ``header`` its short-header function.
    """
    groups = seed_groups(records)
    present = [c for c in columns if any(c in t.metrics for g in groups for t in g)]
    head = ["method", "trials", "seeds"]
    for metric in present:
        head.append(f"{header(metric)} mean ± std")
        if metric.startswith("robust_accuracy/"):
            head.append(f"{header(metric)} pooled")
    rows = []
    for group in groups:
        row = [group[0].method, ", ".join(t.label for t in group),
               ", ".join(str(t.seed) for t in group)]
        for metric in present:
            row.append(mean_std([t.metrics[metric] for t in group if metric in t.metrics]))
            if metric.startswith("robust_accuracy/"):
                total = pooled(group, metric)
                row.append(format_proportion(total) if total else "(n unknown)")
        rows.append(row)
    return head, rows
