"""FreeLB mechanism tests (methods.md §3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_grads_close, grads, recording, vanilla_grads

from conftest import make_batch, make_tiny_adapter
from robustsweep.methods import build, perturb
from robustsweep.methods import freelb as freelb_module


def test_single_pass_without_init_equals_vanilla() -> None:
    adapter, batch = make_tiny_adapter(), make_batch()
    ref_loss, ref_grads = vanilla_grads(adapter, batch)
    method = build("freelb", {"adv_steps": 1, "adv_init_mag": 0.0})
    method.setup(adapter)
    assert method.training_step(batch)["loss"] == pytest.approx(ref_loss, abs=1e-6)
    assert_grads_close(grads(adapter.core), ref_grads)


def test_gradient_is_the_mean_over_the_iterates(monkeypatch) -> None:
    adapter, batch = make_tiny_adapter(), make_batch()
    iterates: list[torch.Tensor] = []
    monkeypatch.setattr(freelb_module, "init_delta", recording(perturb.init_delta, iterates))
    monkeypatch.setattr(freelb_module, "ascent_step", recording(perturb.ascent_step, iterates))
    k = 3
    method = build("freelb", {"adv_steps": k, "adv_lr": 0.1, "adv_max_norm": 0.5, "adv_dropout": "off"})
    method.setup(adapter)
    method.training_step(batch)
    got = grads(adapter.core)
    assert len(iterates) == k

    adapter.core.zero_grad(set_to_none=True)
    for delta in iterates:  # recompute (1/K) Σ_k ∇θ CE(f(W(x) + δ_k), y) independently
        words = adapter.core.get_input_embeddings()(batch["input_ids"])
        logits = adapter.core(inputs_embeds=words + delta, attention_mask=batch["attention_mask"],
                              token_type_ids=batch["token_type_ids"]).logits
        (F.cross_entropy(logits, batch["labels"]) / k).backward()
    assert_grads_close(got, grads(adapter.core))
    for delta in iterates[1:]:
        assert (perturb.per_example_norm(delta) <= 0.5 + 1e-6).all()


@pytest.mark.parametrize("mode, identical", [("same", True), ("fresh", False)])
def test_dropout_masks_across_passes(mode: str, identical: bool) -> None:
    adapter = make_tiny_adapter(dropout=0.3)
    adapter.core.train()
    batch = make_batch()
    method = build("freelb", {"adv_steps": 3, "adv_lr": 0.0, "adv_init_mag": 0.0, "adv_dropout": mode})
    method.setup(adapter)
    outputs: list[torch.Tensor] = []
    adapter.logits = recording(adapter.logits, outputs)  # type: ignore[method-assign]
    method.training_step(batch)
    assert len(outputs) == 3
    same = all(torch.equal(outputs[0], o) for o in outputs[1:])
    assert same is identical
