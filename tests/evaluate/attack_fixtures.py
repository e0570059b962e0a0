"""Shared fixtures of the attack tests: TextAttack provisioned, a tiny trained victim."""

from __future__ import annotations

import torch

from conftest import make_tiny_adapter, make_tiny_task
from robustsweep.methods import build
from robustsweep.methods.base import RobustMethod


def tiny_trained_method() -> RobustMethod:
    """A tiny classifier trained until word swaps flip some predictions but not all."""
    task = make_tiny_task(n_train=64)
    method = build("vanilla")
    adapter = make_tiny_adapter(seed=0)
    method.setup(adapter, task)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(adapter.core.parameters(), lr=1e-3)
    batch = adapter.encode(task.train.texts, labels=task.train.labels)
    for _ in range(40):
        method.training_step(batch)
        optimizer.step()
        optimizer.zero_grad()
    return method
