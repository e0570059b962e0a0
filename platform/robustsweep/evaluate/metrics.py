"""Metric functions on plain arrays (no model): accuracy, ECE, AUROC, FPR@95, attack stats.

``wilson_interval`` is the one place binomial intervals are computed: attack summaries, reports
and docs all use it, so a robust accuracy reads the same everywhere it is shown.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose arg-max class equals the label."""
    if len(labels) == 0:
        return float("nan")
    return float((probs.argmax(axis=1) == labels).mean())


# Two-sided 95 % normal quantile (Φ⁻¹(0.975)).
Z95 = 1.959963984540054


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default); (nan, nan) when n = 0.

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not degenerate at 0 or n
    successes, which is where robust accuracies of strong attacks live.
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p) / n + z2 / (4 * n * n), 0.0)) / denom
    low, high = max(0.0, center - half), min(1.0, center + half)
    # the exact bounds at 0 and n successes (rounding must not leave them a hair off)
    return (0.0 if successes <= 0 else low), (1.0 if successes >= n else high)


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin confidence, accuracy and count over equal-width confidence bins on [0, 1]."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds confidences in (edges[i], edges[i+1]]; a confidence of exactly 0 joins bin 0.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(index, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, conf_sum / counts, 0.0)
        mean_acc = np.where(counts > 0, acc_sum / counts, 0.0)
    return {"edges": edges, "confidence": mean_conf, "accuracy": mean_acc, "count": counts}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE = Σ_b (n_b / n) · |acc_b − conf_b| over equal-width confidence bins (Guo et al. 2017)."""
    if len(labels) == 0:
        return float("nan")
    bins = calibration_bins(probs, labels, n_bins)
    weights = bins["count"] / bins["count"].sum()
    return float(np.sum(weights * np.abs(bins["accuracy"] - bins["confidence"])))


def auroc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting 1/2 (Mann–Whitney U)."""
    pos = np.asarray(scores_pos, dtype=np.float64)
    neg = np.asarray(scores_neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    all_scores = np.concatenate([pos, neg])
    order = all_scores.argsort(kind="mergesort")
    ranks = np.empty(len(all_scores), dtype=np.float64)
    sorted_scores = all_scores[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    rank_sum = ranks[: len(pos)].sum()
    return float((rank_sum - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


def fpr_at_tpr(scores_pos: np.ndarray, scores_neg: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at the threshold that keeps ``tpr`` of the positives."""
    pos = np.sort(np.asarray(scores_pos, dtype=np.float64))
    if len(pos) == 0 or len(scores_neg) == 0:
        return float("nan")
    threshold = pos[int(np.floor((1 - tpr) * len(pos)))]
    return float((np.asarray(scores_neg) >= threshold).mean())


def reliability_diagram(probs: np.ndarray, labels: np.ndarray, path: Path, n_bins: int = 15,
                        title: str = "Reliability diagram") -> Path:
    """Save a reliability diagram (accuracy vs confidence per bin, with the gap) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = calibration_bins(probs, labels, n_bins)
    centers = (bins["edges"][:-1] + bins["edges"][1:]) / 2
    width = 1.0 / n_bins
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.bar(centers, bins["accuracy"], width=width, edgecolor="black", label="accuracy")
    ax.bar(centers, bins["confidence"] - bins["accuracy"], bottom=bins["accuracy"], width=width,
           color="tab:red", alpha=0.35, edgecolor="tab:red", label="gap")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ece = expected_calibration_error(probs, labels, n_bins)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
           title=f"{title}\nECE={ece:.4f} (n={len(labels)}, {n_bins} bins)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
