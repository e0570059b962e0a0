"""Leaderboard: the best finished trial of each method, as Markdown and CSV, plus all trials.

Columns follow the canonical metric names: clean accuracy, robust accuracy and attack success
rate per attack, ECE, OOD accuracy per set, anomaly AUROC per set, and the trial's cost. Robust
accuracy and attack success rate are shown as ``0.2500 [0.1200, 0.4490] n=24``: the value, its
95 % Wilson interval and its n (report/stats.py), never as a bare number.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

from robustsweep.report import stats
from robustsweep.report.records import SweepRecords, TrialRecord

# Column groups in display order: (prefix or exact name, short header).
_GROUPS: list[tuple[str, str]] = [
    ("clean_accuracy", "clean acc"),
    ("robust_accuracy/", "robust acc"),
    ("attack_success_rate/", "ASR"),
    ("proxy_robust_accuracy/", "proxy robust acc"),
    ("ece", "ECE"),
    ("ood_accuracy/", "OOD acc"),
    ("anomaly_auroc/", "AUROC"),
    ("cost/fwd_bwd_passes", "fwd+bwd passes"),
    ("cost/train_time_s", "train s"),
]


def metric_columns(trials: list[TrialRecord]) -> list[str]:
    """The canonical metrics present in any trial, grouped and ordered as in _GROUPS."""
    present = {k for t in trials for k in t.metrics}
    columns: list[str] = []
    for key, _ in _GROUPS:
        if key.endswith("/"):
            columns += sorted(k for k in present if k.startswith(key))
        elif key in present:
            columns.append(key)
    return columns


def header(metric: str) -> str:
    for key, short in _GROUPS:
        if metric == key:
            return short
        if key.endswith("/") and metric.startswith(key):
            return f"{short} ({metric[len(key) :]})"
    return metric


def qualifies(trial: TrialRecord, floors: dict[str, float]) -> bool:
    """The trial reaches every ``rank_min`` floor (a missing metric fails)."""
    return all(
        trial.metrics.get(metric, float("-inf")) >= floor for metric, floor in floors.items()
    )


def best_per_method(records: SweepRecords) -> list[TrialRecord]:
    """Each method's best finished trial by ``rank_by`` among those reaching ``rank_min``
    (methods ordered best first)."""
    metric, mode = records.rank_by, records.mode_of(records.rank_by)
    sign = 1.0 if mode == "max" else -1.0
    best: dict[str, TrialRecord] = {}
    for trial in records.finished():
        if metric not in trial.metrics or not qualifies(trial, records.rank_min):
            continue
        current = best.get(trial.method)
        if current is None or sign * trial.metrics[metric] > sign * current.metrics[metric]:
            best[trial.method] = trial
    return sorted(best.values(), key=lambda t: -sign * t.metrics[metric])


def _fmt(value: Any) -> str:
    """Accuracies: 4 decimals; counts and seconds: shorter; tiny knobs: 3 significant digits."""
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.4f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
    return "" if value is None else str(value)


def metric_cell(trial: TrialRecord, metric: str) -> str:
    """A metric as the leaderboard shows it: shares of attacked examples with interval and n."""
    share = stats.proportion(trial.metrics, metric)
    return stats.format_proportion(share) if share else _fmt(trial.metrics.get(metric))


def knob_text(trial: TrialRecord, order: list[str] | None = None) -> str:
    """All of the trial's knobs, searched ones first in search-space order ("—" when none).

    Nothing is cut: a configuration missing a knob cannot be reproduced from the table.
    """
    first = [k for k in order or [] if k in trial.knobs]
    keys = first + [k for k in trial.knobs if k not in first]
    return ", ".join(f"{k}={_fmt(trial.knobs[k])}" for k in keys) or "—"


def leaderboard_rows(records: SweepRecords) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the leaderboard table."""
    winners = best_per_method(records)
    columns = metric_columns(winners)
    counts = {
        m: Counter(t.status for t in records.trials if t.method == m)
        for m in {t.method for t in records.trials}
    }
    head = [
        "rank",
        "method",
        "trial",
        "trials (done/pruned/failed)",
        *map(header, columns),
        "knobs",
    ]
    rows = []
    for rank, trial in enumerate(winners, 1):
        c = counts[trial.method]
        rows.append(
            [
                str(rank),
                trial.method,
                trial.label,
                f"{c['FINISHED']}/{c['PRUNED']}/{c['FAILED']}",
                *(metric_cell(trial, k) for k in columns),
                knob_text(trial, [k for k, _ in records.knob_space.get(trial.method, [])]),
            ]
        )
    return head, rows


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, head: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(head)
        writer.writerows(rows)
    return path


def _fmt_metric(metric: str, value: float | None) -> str:
    """Counts (``*_n/``, ``attack_examples/``) as integers, everything else like ``_fmt``."""
    count = "_n/" in metric or metric.startswith(("attack_examples/", "proxy_attack_examples/"))
    return str(round(value)) if count and value is not None else _fmt(value)


def trials_table(records: SweepRecords) -> tuple[list[str], list[list[str]]]:
    """Every trial with status, node, knobs and all metrics (trials.csv), including the n
    and ``ci_low``/``ci_high`` of each robust accuracy and attack success rate."""
    metrics = sorted({k for t in records.trials for k in t.metrics})
    knobs = sorted({k for t in records.trials for k in t.knobs})
    head = ["trial_id", "label", "method", "status", "seed", "run_id", "node_id", *knobs, *metrics]
    rows = [
        [
            t.trial_id,
            t.label,
            t.method,
            t.status,
            _fmt(t.seed),
            t.run_id or "",
            t.node_id or "",
            *(_fmt(t.knobs.get(k)) for k in knobs),
            *(_fmt_metric(k, t.metrics.get(k)) for k in metrics),
        ]
        for t in records.trials
    ]
    return head, rows
