"""Inference primitives: every prediction of a trained method goes through these.

They live below the evaluation suite, the attack wrapper, the attack pool and anomaly detection,
which all import them (the suite orchestrates; it does not own the primitives its callees use).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

import numpy as np
import torch

from robustsweep.data import TextSet
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


class PassCounter:
    """Rows through the model's forward while active: ``rows / queries`` is the measured
    number of forward passes one prediction costs (``cost/inference_passes_per_query``).

    Counted with a forward pre-hook on the classifier itself, so every forward a method's
    inference makes is seen (ensemble copies, templates, saliency passes), whatever it assumes.
    A backward is not a forward and is not counted.
    """

    def __init__(self, method: RobustMethod) -> None:
        self.module = method.adapter.core
        self.rows = 0
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _hook(self, _module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        first = kwargs.get("input_ids")
        if first is None:
            first = kwargs.get("inputs_embeds")
        if first is None and args:
            first = args[0]
        self.rows += int(first.shape[0]) if isinstance(first, torch.Tensor) else 1

    def __enter__(self) -> Self:
        self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def per_query(self, queries: int) -> float:
        return self.rows / queries if queries else float("nan")


def predict_logits(method: RobustMethod, textset: TextSet, batch_size: int = 64) -> np.ndarray:
    """Class logits for every row of ``textset`` (N×C), via ``method.predict_logits``."""
    adapter = method.adapter
    out: list[np.ndarray] = []
    with inference_mode(method):
        for start in range(0, len(textset), batch_size):
            stop = start + batch_size
            pairs = textset.pairs[start:stop] if textset.pairs is not None else None
            batch = adapter.to_device(adapter.encode(textset.texts[start:stop], pairs))
            out.append(method.predict_logits(batch).detach().float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, adapter.num_labels), dtype=np.float32)


def predict_probs(method: RobustMethod, textset: TextSet, batch_size: int = 64) -> np.ndarray:
    """Class probabilities for every row of ``textset`` (N×C)."""
    logits = predict_logits(method, textset, batch_size)
    return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
