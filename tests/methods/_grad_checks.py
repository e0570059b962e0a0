"""Extras for the SMART/R3F/RoAST/RIFT/InfoBERT tests on top of ``helpers``: an input-sensitive
tiny model with its method set up, and gradient snapshots that also clear ``.grad``."""

from __future__ import annotations

import torch
from helpers import grads as snapshot
from helpers import vanilla_grads

from conftest import make_tiny_adapter
from robustsweep.data import Task
from robustsweep.methods import registry
from robustsweep.methods.base import RobustMethod
from robustsweep.models import EncoderAdapter

SENSITIVE = 5.0  # Linear-weight scale that makes the tiny BERT's output depend on its input


def build(name: str, knobs: dict | None = None, *, seed: int = 0, dropout: float = 0.0,
          layers: int = 2, task: Task | None = None,
          scale: float = SENSITIVE) -> tuple[RobustMethod, EncoderAdapter]:
    """A method set up on a fresh tiny BERT (train mode), with a fixed init seed.

    At BERT's init (std 0.02) the tiny model's logits barely depend on the input, so every
    Linear weight is scaled by ``scale`` (std 0.1) to make divergence terms measurable.
    """
    adapter = make_tiny_adapter(layers=layers, dropout=dropout, seed=seed)
    with torch.no_grad():
        for module in adapter.core.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(scale)
    method = registry.build(name, knobs or {})
    method.setup(adapter, task)
    adapter.model.train()
    return method, adapter


def grads(adapter: EncoderAdapter) -> dict[str, torch.Tensor]:
    """The current parameter gradients (zeros where none), then clear them."""
    out = snapshot(adapter.core)
    adapter.core.zero_grad(set_to_none=True)
    return out


vanilla = vanilla_grads  # (loss, grads) of a hand-written CE step


def max_grad_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in a)


def no_param_grads(adapter: EncoderAdapter) -> bool:
    return all(p.grad is None or not p.grad.any() for p in adapter.core.parameters())


def assert_reduces_to_vanilla(method: RobustMethod, adapter: EncoderAdapter, batch: dict) -> None:
    """With its extra terms switched off, a method's step equals a plain CE step (loss, grads, cost)."""
    import pytest

    loss_ref, grads_ref = vanilla(adapter, batch)
    terms = method.training_step(batch)
    assert terms["loss"] == pytest.approx(loss_ref, abs=1e-7)
    assert max_grad_diff(grads(adapter), grads_ref) < 1e-7
    assert method.passes_per_step() == 1.0
