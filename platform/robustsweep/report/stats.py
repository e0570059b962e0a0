"""The statistics of reports: intervals and the paired comparison of two trials' outcomes.

Every robust number a report shows carries its n and a 95 % Wilson interval (the same
``wilson_interval`` the attack summaries use). Differences between two trials are measured on
the examples both were attacked on: a paired bootstrap interval of the difference in robust
accuracy and McNemar's exact test on the discordant examples. Pure Python plus numpy; it knows
nothing of sweep records (``comparisons`` picks which trials to compare and builds the tables).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustsweep.evaluate.metrics import Z95, wilson_interval
from robustsweep.evaluate.outcomes import robust_correct

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "PROPORTIONS",
    "Z95",
    "Proportion",
    "complete_intervals",
    "format_proportion",
    "has_interval",
    "mcnemar_exact",
    "paired_bootstrap",
    "proportion",
    "wilson_interval",
]

# Shares measured on attacked examples: each gets ``<base>_n``, ``_ci_low``, ``_ci_high``.
PROPORTIONS = (
    "robust_accuracy",
    "attack_success_rate",
    "proxy_robust_accuracy",
    "proxy_attack_success_rate",
)
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same records always give the same interval
VANILLA = "vanilla"


# ---- intervals -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proportion:
    """A share with its sample size and 95 % interval (n = 0 when unknown)."""

    value: float
    n: int
    low: float
    high: float


def _split(metric: str) -> tuple[str, str] | None:
    """``robust_accuracy/dwb`` -> (``robust_accuracy``, ``dwb``) for interval-carrying metrics."""
    base, _, profile = metric.partition("/")
    return (base, profile) if profile and base in PROPORTIONS else None


def has_interval(metric: str) -> bool:
    """Whether reports show ``metric`` with its n and Wilson interval."""
    return _split(metric) is not None


def proportion(metrics: dict[str, float], metric: str) -> Proportion | None:
    """The metric with its n and interval, when it is one of PROPORTIONS and present."""
    parts = _split(metric)
    if parts is None or metric not in metrics:
        return None
    base, profile = parts
    n = metrics.get(f"{base}_n/{profile}")
    low = metrics.get(f"{base}_ci_low/{profile}", math.nan)
    high = metrics.get(f"{base}_ci_high/{profile}", math.nan)
    return Proportion(metrics[metric], round(n) if n else 0, low, high)


def format_proportion(p: Proportion) -> str:
    """``0.2500 [0.1200, 0.4490] n=24``; ``0.2500 (n unknown)`` for records that lack n."""
    if p.n <= 0 or math.isnan(p.low):
        return f"{p.value:.4f} (n unknown)"
    return f"{p.value:.4f} [{p.low:.4f}, {p.high:.4f}] n={p.n}"


def _interval(metrics: dict[str, float], base: str, profile: str, n: float) -> dict[str, float]:
    value = metrics[f"{base}/{profile}"]
    low, high = wilson_interval(round(value * n), n)
    return {f"{base}_n/{profile}": float(n), f"{base}_ci_low/{profile}": low,
            f"{base}_ci_high/{profile}": high}


def _count(metrics: dict[str, float], base: str, profile: str) -> float | None:
    """n of a share from an older record's ``attack_examples`` (all examples) and
    ``attack_clean_accuracy`` (the attacked share: ASR's denominator)."""
    prefix = "proxy_" if base.startswith("proxy_") else ""
    n = metrics.get(f"{prefix}attack_examples/{profile}")
    if n is None or not n > 0:
        return None
    if base.endswith("attack_success_rate"):
        clean = metrics.get(f"{prefix}attack_clean_accuracy/{profile}")
        return float(round(n * clean)) if clean is not None and clean > 0 else None
    return n


def complete_intervals(metrics: dict[str, float]) -> dict[str, float]:
    """Add the n and Wilson intervals that records written before they existed lack."""
    out = dict(metrics)
    for metric in metrics:
        parts = _split(metric)
        if parts is None or f"{parts[0]}_n/{parts[1]}" in metrics:
            continue
        n = _count(metrics, *parts)
        if n is not None:
            out.update(_interval(metrics, *parts, n))
    return out


# ---- paired tests ----------------------------------------------------------------------------
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial(b + c, 1/2) on the discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    chunk: int = 1000,
) -> tuple[float, float]:
    """95 % percentile interval of mean(a) − mean(b), resampling examples (pairs) together."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(diff) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        index = rng.integers(0, len(diff), size=(size, len(diff)))
        means[start : start + size] = diff[index].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


@dataclass
class PairedRow:
    """One method trial against one vanilla trial on one attack profile."""

    method: str
    trial: str
    seed: int | None
    vanilla: str
    partner: str  # "same seed" | "best vanilla"
    profile: str
    n: int = 0
    method_acc: Proportion | None = None
    vanilla_acc: Proportion | None = None
    delta: float = math.nan
    low: float = math.nan
    high: float = math.nan
    method_only: int = 0  # examples the method keeps and vanilla loses (c)
    vanilla_only: int = 0  # examples vanilla keeps and the method loses (b)
    p_value: float = math.nan
    note: str = ""


def _correct(outcomes: dict[str, Any]) -> dict[int, bool]:
    return {int(i): robust_correct(o) for i, o in zip(outcomes["ids"], outcomes["outcomes"])}


def _acc(values: np.ndarray) -> Proportion:
    k, n = int(values.sum()), len(values)
    low, high = wilson_interval(k, n)
    return Proportion(k / n, n, low, high)


def compare(
    row: PairedRow, ours: dict[str, Any] | None, theirs: dict[str, Any] | None
) -> PairedRow:
    """Fill ``row`` from two trials' per-example outcomes of one profile (or say why not)."""
    if ours is None or theirs is None:
        row.note = "no per-example outcomes in a record"
        return row
    if ours.get("profile_hash") and theirs.get("profile_hash") and \
            ours["profile_hash"] != theirs["profile_hash"]:
        row.note = "different attack settings (profile hash)"
        return row
    a_all, b_all = _correct(ours), _correct(theirs)
    common = sorted(a_all.keys() & b_all.keys())
    if not common:
        row.note = "example ids don't overlap"
        return row
    a = np.array([a_all[i] for i in common], dtype=np.float64)
    b = np.array([b_all[i] for i in common], dtype=np.float64)
    row.n = len(common)
    row.method_acc, row.vanilla_acc = _acc(a), _acc(b)
    row.delta = float(a.mean() - b.mean())
    row.low, row.high = paired_bootstrap(a, b)
    row.method_only = int(((a == 1) & (b == 0)).sum())
    row.vanilla_only = int(((a == 0) & (b == 1)).sum())
    row.p_value = mcnemar_exact(row.vanilla_only, row.method_only)
    if len(common) < max(len(a_all), len(b_all)):
        row.note = f"on the {len(common)} shared example ids"
    return row
