"""Embedding-space perturbation helpers shared by PGD, FreeLB, InfoBERT, MVP+adv, ...

Conventions (methods.md §2): δ lives in word-embedding (WE) space, shape B×L×d; norms are per
example over the whole L×d tensor; padding positions are zero at init; ``max_norm == 0`` means
unbounded (TextDefender's convention).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import Field

from robustsweep.methods.base import Knobs

NormType = Literal["l2", "linf"]
_TINY = 1e-8


class EmbeddingAdversaryKnobs(Knobs):
    """Knobs of a K-step word-embedding adversary (TextDefender names and defaults)."""

    adv_steps: int = Field(5, ge=0, le=50, description="K ascent steps (TextDefender: 5)")
    adv_lr: float = Field(0.03, ge=0, description="eta, ascent step size (TextDefender: 0.03)")
    adv_init_mag: float = Field(0.05, ge=0, description="a0, random init magnitude (0.05)")
    adv_max_norm: float = Field(0.0, ge=0, description="epsilon, per-example bound; 0 = unbounded")
    norm_type: NormType = Field("l2", description="Norm of step and projection: l2 | linf")


def _per_example(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def init_delta(mask: torch.Tensor, dim: int, init_mag: float, norm_type: NormType) -> torch.Tensor:
    """Random start δ0 (zero on padding).

    L2: U(-1,1)·m·a0/sqrt(n_tok·d) per example (E‖δ0‖ ≈ a0/√3); linf: U(-a0, a0)·m.
    """
    m = mask.to(torch.float32).unsqueeze(-1)
    if init_mag == 0:
        return torch.zeros(*mask.shape, dim, device=mask.device)
    if norm_type == "l2":
        n_tok = mask.sum(dim=1).clamp(min=1).to(torch.float32)
        scale = init_mag / torch.sqrt(n_tok * dim)
        delta = torch.empty(*mask.shape, dim, device=mask.device).uniform_(-1, 1)
        return delta * m * scale.view(-1, 1, 1)
    return torch.empty(*mask.shape, dim, device=mask.device).uniform_(-init_mag, init_mag) * m


def project(delta: torch.Tensor, max_norm: float, norm_type: NormType) -> torch.Tensor:
    """Project each example's δ onto the ε-ball (no-op when ``max_norm == 0``)."""
    if max_norm <= 0:
        return delta
    if norm_type == "linf":
        return delta.clamp(-max_norm, max_norm)
    norms = _per_example(delta).norm(dim=1).view(-1, 1, 1)
    factor = torch.where(norms > max_norm, max_norm / norms.clamp(min=_TINY), torch.ones_like(norms))
    return delta * factor


def ascent_step(
    delta: torch.Tensor, grad: torch.Tensor, lr: float, max_norm: float, norm_type: NormType
) -> torch.Tensor:
    """One normalised ascent step followed by projection (returns a detached tensor)."""
    flat = _per_example(grad)
    if norm_type == "l2":
        denom = flat.norm(dim=1).clamp(min=_TINY)
    else:
        denom = flat.abs().max(dim=1).values.clamp(min=_TINY)
    step = lr * grad / denom.view(-1, 1, 1)
    return project((delta + step).detach(), max_norm, norm_type)


def per_example_norm(delta: torch.Tensor, norm_type: NormType = "l2") -> torch.Tensor:
    """‖δ_b‖ for each example (for tests and logging)."""
    flat = _per_example(delta)
    return flat.norm(dim=1) if norm_type == "l2" else flat.abs().max(dim=1).values


@contextmanager
def dropout_mode(model: torch.nn.Module, mode: str, seed: int) -> Iterator[None]:
    """Dropout for one forward of a multi-pass step.

    ``same``: replay an identical RNG stream, so every pass draws the same dropout masks
    (FreeLB/InfoBERT official behaviour); ``fresh``: the ordinary stream; ``off``: eval mode.
    """
    if mode == "fresh":
        yield
        return
    if mode == "off":
        was_training = model.training
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
