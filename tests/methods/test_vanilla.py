"""Vanilla: one training_step + optimizer step equals a hand-written CE step, bit for bit."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from conftest import make_batch, make_tiny_adapter
from robustsweep.methods import build


def test_vanilla_step_equals_hand_written_ce_step() -> None:
    adapter = make_tiny_adapter()
    reference = copy.deepcopy(adapter.core)
    batch = make_batch()
    method = build("vanilla")
    method.setup(adapter)
    opt = torch.optim.SGD(adapter.core.parameters(), lr=0.1)
    terms = method.training_step(batch)
    opt.step()

    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    logits = reference(**{k: v for k, v in batch.items() if k != "labels"}).logits
    loss = F.cross_entropy(logits, batch["labels"])
    loss.backward()
    ref_opt.step()

    assert terms["loss"] == loss.item()
    for (name, p), (_, q) in zip(adapter.core.named_parameters(), reference.named_parameters()):
        assert torch.equal(p, q), name
