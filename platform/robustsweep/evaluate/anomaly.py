"""Anomaly detection: can the classifier's own confidence tell eval texts from OOD texts?

In-distribution (the task's eval set) is the positive class; each score is higher for
in-distribution inputs:
- MSP: maximum softmax probability (Hendrycks & Gimpel, 2017),
- energy: ``logsumexp(logits)``, the negative free energy at T=1 (Liu et al., 2020).
AUROC and FPR at 95 % TPR come from ``metrics.auroc`` / ``metrics.fpr_at_tpr``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robustsweep.data import Task, TextSet
from robustsweep.evaluate import metrics
from robustsweep.evaluate.inference import predict_logits
from robustsweep.methods.base import RobustMethod


def msp_score(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits).double(), dim=-1).max(dim=-1).values.numpy()


def energy_score(logits: np.ndarray) -> np.ndarray:
    return torch.logsumexp(torch.from_numpy(logits).double(), dim=-1).numpy()


SCORES = {"msp": msp_score, "energy": energy_score}


def detection_metrics(id_logits: np.ndarray, ood_logits: np.ndarray, name: str) -> dict[str, float]:
    """``anomaly_auroc/<set>`` and ``anomaly_fpr95/<set>`` (MSP), plus ``*_energy`` variants."""
    out: dict[str, float] = {}
    for score_name, fn in SCORES.items():
        suffix = "" if score_name == "msp" else f"_{score_name}"
        pos, neg = fn(id_logits), fn(ood_logits)
        out[f"anomaly_auroc{suffix}/{name}"] = metrics.auroc(pos, neg)
        out[f"anomaly_fpr95{suffix}/{name}"] = metrics.fpr_at_tpr(pos, neg, 0.95)
    return out


def score_histogram(id_logits: np.ndarray, sets: dict[str, np.ndarray], path: Path) -> Path:
    """MSP and energy histograms, in-distribution vs each OOD set (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for ax, (score_name, fn) in zip(axes, SCORES.items()):
        ax.hist(fn(id_logits), bins=30, alpha=0.55, density=True, label="eval (in-dist.)")
        for name, logits in sets.items():
            ax.hist(fn(logits), bins=30, alpha=0.45, density=True, label=name)
        ax.set(title=score_name, xlabel="score (higher = more in-distribution)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def anomaly_metrics(method: RobustMethod, task: Task, batch_size: int = 64,
                    plot_dir: Path | None = None) -> tuple[dict[str, float], list[Path]]:
    """Metrics for every ``task.anomaly`` set (none: empty results)."""
    if not task.anomaly:
        return {}, []
    id_logits = predict_logits(method, task.eval, batch_size)
    ood: dict[str, np.ndarray] = {name: predict_logits(method, textset, batch_size)
                                  for name, textset in task.anomaly.items()}
    result: dict[str, float] = {}
    for name, logits in ood.items():
        result.update(detection_metrics(id_logits, logits, name))
    paths = [score_histogram(id_logits, ood, plot_dir / "anomaly_scores.png")] if plot_dir else []
    return result, paths


def unlabeled(texts: list[str]) -> TextSet:
    """A TextSet of raw texts (CLI and tests)."""
    return TextSet(texts=list(texts), labels=None, ids=list(range(len(texts))))
