"""train.grad_accumulation_steps: k micro-batches make one optimizer step.

Vanilla: k × b/k rows give the same update as one batch of b. Every method: the accumulated
step's gradient is the mean of its micro-batches' gradients (InfoBERT's second backward and
FreeLB's K backwards included), and RoAST's Fisher scores and mask see that mean once per
step. Only the last micro-batch all-reduces under DDP (the others run in ``no_sync``).
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from tiny_families import CHEAP_KNOBS, METHODS, make_adapter

from conftest import make_tiny_task
from robustsweep.config import TrainConfig
from robustsweep.methods import build
from robustsweep.methods.base import RobustMethod
from robustsweep.models.adapter import EncoderAdapter
from robustsweep.train.loop import build_optimizer, train_step, trainable_parameters

TEXTS = ["good film", "the plot was awful and bad", "a great movie", "this was poor",
         "a fine plot", "the film was bad", "great movie this", "awful poor film"]
LABELS = [1, 0, 1, 0, 1, 0, 1, 1]


def _setup(name: str, knobs: dict | None = None) -> tuple[EncoderAdapter, RobustMethod]:
    adapter = make_adapter("bert", seed=0)
    method = build(name, {**CHEAP_KNOBS[name], **(knobs or {})})
    torch.manual_seed(0)
    method.setup(adapter, make_tiny_task(n_train=8, n_eval=4))
    adapter.core.train()
    return adapter, method


def _batches(adapter: EncoderAdapter, parts: int) -> list[dict]:
    size = len(TEXTS) // parts
    return [adapter.encode(TEXTS[i:i + size], labels=LABELS[i:i + size])
            for i in range(0, len(TEXTS), size)]


def _params(adapter: EncoderAdapter, method: RobustMethod):
    named = trainable_parameters(adapter, method)
    return named, build_optimizer(named, TrainConfig(lr=1e-2, weight_decay=0.0))


def test_vanilla_two_half_batches_equal_one_full_batch() -> None:
    """Plain SGD, no clipping: its update is linear in the gradient, so equal parameters mean
    equal gradients, and a missing 1/k shows as a k-times step. (AdamW would hide that 1/k, being
    scale-invariant, and turn rounding noise in gradients near its eps, ~4e-9 here, into
    parameter differences of ~3e-6.)"""
    results = []
    for parts in (1, 2, 4):
        adapter, method = _setup("vanilla")
        named = trainable_parameters(adapter, method)
        optimizer = torch.optim.SGD([p for _, p in named], lr=0.5)
        batches = _batches(adapter, parts)
        terms = train_step(method, batches[0] if parts == 1 else batches, [p for _, p in named],
                           optimizer)
        results.append(({n: p.detach().clone() for n, p in named}, terms["loss"]))
    (full, full_loss), *accumulated = results
    for state, loss in accumulated:
        assert loss == pytest.approx(full_loss, rel=1e-5)
        for name, value in full.items():
            torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", METHODS)
def test_accumulated_step_uses_the_mean_micro_batch_gradient(name: str) -> None:
    """train_step on [m1, m2] == one optimizer step on mean(grad m1, grad m2), same RNG."""
    adapter, method = _setup(name)
    named, optimizer = _params(adapter, method)
    torch.manual_seed(5)
    train_step(method, _batches(adapter, 2), [p for _, p in named], optimizer, max_grad_norm=None)
    accumulated = {n: p.detach().clone() for n, p in named}

    adapter, method = _setup(name)
    named, optimizer = _params(adapter, method)
    torch.manual_seed(5)
    sums: dict[str, torch.Tensor] = {}
    for part in _batches(adapter, 2):
        method.training_step(part)
        for n, p in named:
            if p.grad is not None:
                sums[n] = sums.get(n, 0) + p.grad
                p.grad = None
    for n, p in named:
        if n in sums:
            p.grad = sums[n] / 2
    method.before_optimizer_step()
    optimizer.step()
    method.after_optimizer_step()
    for n, p in named:
        torch.testing.assert_close(accumulated[n], p.detach(), rtol=1e-5, atol=1e-7, msg=n)


def test_roast_scores_the_accumulated_gradient_once_per_step() -> None:
    """RoAST's Fisher scores are g² of the whole step's gradient (not a sum of micro g²)."""
    fisher = []
    for parts in (1, 2):
        adapter, method = _setup("roast", {"alpha": 0.5, "coeff_sym": 0.0})
        named, optimizer = _params(adapter, method)
        batches = _batches(adapter, parts)
        train_step(method, batches[0] if parts == 1 else batches, [p for _, p in named], optimizer)
        assert method.fisher_steps == 1
        fisher.append(method.fisher_sum)
    for n, value in fisher[0].items():
        torch.testing.assert_close(fisher[1][n], value, rtol=1e-4, atol=1e-10, msg=n)


def test_only_the_last_micro_batch_all_reduces() -> None:
    adapter, method = _setup("vanilla")
    named, optimizer = _params(adapter, method)
    entered = []

    @contextmanager
    def counting_no_sync():
        entered.append(True)
        yield

    method.no_sync = counting_no_sync  # type: ignore[method-assign]
    train_step(method, _batches(adapter, 4), [p for _, p in named], optimizer)
    assert len(entered) == 3
