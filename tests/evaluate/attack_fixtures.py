"""Shared fixtures of the attack tests: TextAttack provisioned, a tiny trained victim."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from conftest import make_tiny_adapter, make_tiny_task
from robustsweep.methods import build
from robustsweep.methods.base import RobustMethod
from robustsweep.resources import textattack_env


@pytest.fixture(scope="module")
def textattack_ready() -> Iterator[None]:
    """Provisioned + imported TextAttack; one torch thread (tiny models: threads only contend)."""
    textattack_env.provision(verify_deep=False)
    textattack_env.import_textattack()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
