"""Evaluation of a trained method: every prediction goes through ``method.predict_logits``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from robustsweep.config import EvalConfig
from robustsweep.data import Task, TextSet
from robustsweep.evaluate import metrics
from robustsweep.methods.base import RobustMethod


@contextmanager
def inference_mode(method: RobustMethod) -> Iterator[None]:
    """Eval mode on the unwrapped model (no DDP collectives), grads only if the method needs them."""
    adapter = method.adapter
    wrapped, was_training = adapter.model, adapter.core.training
    adapter.model = adapter.core
    adapter.core.eval()
    grad = torch.enable_grad() if method.wants_grad_at_inference else torch.no_grad()
    try:
        with grad:
            yield
    finally:
        adapter.model = wrapped
        adapter.core.train(was_training)


def predict_probs(method: RobustMethod, textset: TextSet, batch_size: int = 64) -> np.ndarray:
    """Class probabilities for every row of ``textset`` (N×C)."""
    adapter = method.adapter
    out: list[np.ndarray] = []
    with inference_mode(method):
        for start in range(0, len(textset), batch_size):
            stop = start + batch_size
            pairs = textset.pairs[start:stop] if textset.pairs is not None else None
            batch = adapter.to_device(adapter.encode(textset.texts[start:stop], pairs))
            logits = method.predict_logits(batch).detach().float()
            out.append(torch.softmax(logits, dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, adapter.num_labels))


def clean_metrics(method: RobustMethod, task: Task, cfg: EvalConfig, batch_size: int = 64,
                  plot_dir: Path | None = None) -> dict[str, float]:
    """clean_accuracy, ece and ood_accuracy/<set>; optionally the reliability diagram PNG."""
    probs = predict_probs(method, task.eval, batch_size)
    labels = np.asarray(task.eval.labels)
    result = {
        "clean_accuracy": metrics.accuracy(probs, labels),
        "ece": metrics.expected_calibration_error(probs, labels, cfg.ece_bins),
    }
    if plot_dir is not None:
        metrics.reliability_diagram(probs, labels, plot_dir / "reliability_diagram.png", cfg.ece_bins)
    for name, textset in task.ood.items():
        ood_probs = predict_probs(method, textset, batch_size)
        result[f"ood_accuracy/{name}"] = metrics.accuracy(ood_probs, np.asarray(textset.labels))
    return result
