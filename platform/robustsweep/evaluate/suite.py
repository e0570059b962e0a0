"""Evaluation of a trained method: every prediction goes through ``method.predict_logits``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from robustsweep.config import EvalConfig
from robustsweep.data import Task
from robustsweep.evaluate import metrics
from robustsweep.evaluate.inference import PassCounter, predict_probs
from robustsweep.methods.base import RobustMethod


def clean_metrics(method: RobustMethod, task: Task, cfg: EvalConfig, batch_size: int = 64,
                  plot_dir: Path | None = None) -> dict[str, float]:
    """clean_accuracy, ece, ood_accuracy/<set> and cost/inference_passes_per_query (model
    forward rows per eval example, counted on this very pass: ensembles, templates and saliency
    passes included); optionally the reliability diagram PNG."""
    with PassCounter(method) as passes:
        probs = predict_probs(method, task.eval, batch_size)
    labels = np.asarray(task.eval.labels)
    result = {
        "clean_accuracy": metrics.accuracy(probs, labels),
        "ece": metrics.expected_calibration_error(probs, labels, cfg.ece_bins),
    }
    if len(labels):
        result["cost/inference_passes_per_query"] = passes.per_query(len(labels))
    if plot_dir is not None:
        metrics.reliability_diagram(probs, labels, plot_dir / "reliability_diagram.png", cfg.ece_bins)
    for name, textset in task.ood.items():
        ood_probs = predict_probs(method, textset, batch_size)
        result[f"ood_accuracy/{name}"] = metrics.accuracy(ood_probs, np.asarray(textset.labels))
    return result


# --------------------------------------------------------------------------------------------
# Final (end-of-training / after-the-fact) evaluation: anomaly detection + attacks


def _eval_config(cfg: Any) -> EvalConfig:
    return cfg.eval if hasattr(cfg, "eval") and not isinstance(cfg, EvalConfig) else cfg


def attack_workers(eval_cfg: EvalConfig) -> int:
    """Configured workers, or one per free CPU (Ray's view if connected) when null."""
    if eval_cfg.attack_workers is not None:
        return eval_cfg.attack_workers
    import os

    try:
        import ray

        if ray.is_initialized():
            return max(1, int(ray.available_resources().get("CPU", 1)))
    except ImportError:
        pass
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def profile_tags(cfg: Any) -> dict[str, str]:
    """``attack_profile/<name>`` -> ``<name> v<version> sha256:<hash>`` for each attack (MLflow tags)."""
    from robustsweep.evaluate.profiles import effective_profile

    eval_cfg = _eval_config(cfg)
    tags = {}
    for name in eval_cfg.attacks:
        profile = effective_profile(name, eval_cfg)
        tags[f"attack_profile/{profile.name}"] = profile.label
        tags[f"attack_profile_hash/{profile.name}"] = profile.hash
    return tags


def final_metrics(method: RobustMethod, task: Task, cfg: Any, out_dir: Path,
                  progress: bool = True) -> tuple[dict[str, float], list[Path]]:
    """Anomaly metrics for ``task.anomaly`` and every attack profile in ``cfg.eval.attacks``.

    ``cfg`` is a JobConfig or an EvalConfig. Writes per-example CSVs, manifests and plots under
    ``out_dir`` and returns (metrics, artifact paths). Attack tables resume if interrupted.
    Log ``profile_tags(cfg)`` as tags next to these metrics.
    """
    from robustsweep.evaluate.anomaly import anomaly_metrics
    from robustsweep.evaluate.attacks import run_profile
    from robustsweep.evaluate.profiles import effective_profile

    eval_cfg = _eval_config(cfg)
    out_dir = Path(out_dir)
    result, artifacts = anomaly_metrics(method, task, plot_dir=out_dir)
    workers = attack_workers(eval_cfg)
    for name in eval_cfg.attacks:
        profile = effective_profile(name, eval_cfg)
        report = run_profile(method, task.eval, profile, out_dir / "attacks", workers=workers,
                             progress=progress)
        result.update(report.metrics)
        artifacts += [report.table.csv_path, report.table.manifest_path]
    return result, artifacts


def proxy_metrics(method: RobustMethod, task: Task, cfg: Any, out_dir: Path) -> dict[str, float]:
    """Per-epoch robust accuracy from ``eval.proxy_attack`` on ``eval.proxy_examples`` examples.

    Metric names get a ``proxy_`` prefix (e.g. ``proxy_robust_accuracy/deepwordbug``) so they
    are never confused with the final evaluation. ``out_dir`` should differ per epoch.
    """
    from robustsweep.evaluate.attacks import run_profile
    from robustsweep.evaluate.profiles import effective_profile

    eval_cfg = _eval_config(cfg)
    if not eval_cfg.proxy_attack:
        return {}
    profile = effective_profile(eval_cfg.proxy_attack, eval_cfg)
    profile = profile.model_copy(update={"num_examples": eval_cfg.proxy_examples})
    report = run_profile(method, task.eval, profile, Path(out_dir), workers=1, progress=False)
    return {f"proxy_{k}": v for k, v in report.metrics.items()}
