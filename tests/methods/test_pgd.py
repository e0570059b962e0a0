"""PGD mechanism tests (methods.md §2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import LinearAdapter, assert_grads_close, grads, recording, vanilla_grads

from conftest import make_batch, make_tiny_adapter
from robustsweep.methods import build, perturb
from robustsweep.methods import pgd as pgd_module


def test_zero_step_and_zero_init_equal_vanilla() -> None:
    adapter, batch = make_tiny_adapter(), make_batch()
    ref_loss, ref_grads = vanilla_grads(adapter, batch)
    method = build("pgd", {"adv_init_mag": 0.0, "adv_lr": 0.0, "adv_steps": 3})
    method.setup(adapter)
    terms = method.training_step(batch)
    assert terms["loss"] == pytest.approx(ref_loss, abs=1e-6)
    assert_grads_close(grads(adapter.core), ref_grads)


@pytest.mark.parametrize("norm_type, eps", [("l2", 0.3), ("linf", 0.02)])
def test_every_iterate_stays_in_the_ball_and_off_padding(monkeypatch, norm_type: str, eps: float) -> None:
    adapter, batch = make_tiny_adapter(), make_batch()
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(pgd_module, "ascent_step", recording(perturb.ascent_step, seen))
    method = build("pgd", {"adv_steps": 4, "adv_lr": 1.0, "adv_max_norm": eps, "norm_type": norm_type})
    method.setup(adapter)
    method.training_step(batch)
    assert len(seen) == 4
    pad = batch["attention_mask"] == 0
    for delta in seen:
        norms = perturb.per_example_norm(delta, norm_type)
        assert (norms <= eps + 1e-6).all()
        assert torch.count_nonzero(delta[pad]) == 0
        assert norms.max() > 0.5 * eps  # the step actually moves (eta >> eps)


def test_ascent_increases_loss_monotonically_on_a_convex_model() -> None:
    adapter = LinearAdapter()
    batch = make_batch(batch_size=6, length=8)
    batch["input_ids"] = batch["input_ids"] % 64
    method = build("pgd", {"adv_init_mag": 0.0, "adv_lr": 0.5, "adv_max_norm": 0.0})
    method.setup(adapter)
    labels = batch["labels"]
    words = adapter.word_embeddings(batch["input_ids"]).detach()

    def per_example_loss(delta: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(adapter.logits(batch, word_embeds=words + delta), labels, reduction="none")

    previous = per_example_loss(torch.zeros_like(words))
    for steps in (1, 2, 3, 5):
        knobs = method.knobs.model_copy(update={"adv_steps": steps})
        delta = pgd_module.embedding_adversary(method, batch, knobs)
        current = per_example_loss(delta)
        assert (current >= previous - 1e-6).all(), steps
        previous = current
    assert (previous > per_example_loss(torch.zeros_like(words)) + 1e-3).all()


def test_ascent_phase_writes_no_parameter_gradients() -> None:
    adapter, batch = make_tiny_adapter(), make_batch()
    method = build("pgd", {"adv_steps": 3})
    method.setup(adapter)
    delta = pgd_module.embedding_adversary(method, batch, method.knobs)
    assert delta.abs().sum() > 0
    assert all(p.grad is None for p in adapter.core.parameters())


def test_cost_is_k_plus_one() -> None:
    assert build("pgd", {"adv_steps": 5}).passes_per_step() == 6


@pytest.mark.parametrize("clean_weight", [0.0, 0.3])
def test_update_uses_the_final_iterate_and_the_clean_weight(monkeypatch, clean_weight: float) -> None:
    """Gradient = ∇[w·CE(f(W(x))) + (1 − w)·CE(f(W(x) + δ_K))] with δ_K the last ascent iterate:
    fails for a step that trains on clean inputs, on an earlier iterate, or ignores w."""
    adapter, batch = make_tiny_adapter(), make_batch()
    iterates: list[torch.Tensor] = []
    monkeypatch.setattr(pgd_module, "ascent_step", recording(perturb.ascent_step, iterates))
    method = build("pgd", {"adv_steps": 3, "adv_lr": 0.5, "adv_max_norm": 1.0,
                           "clean_weight": clean_weight})
    method.setup(adapter)
    method.training_step(batch)
    got = grads(adapter.core)
    assert len(iterates) == 3

    def hand_grads(delta: torch.Tensor, w: float) -> dict[str, torch.Tensor]:
        adapter.core.zero_grad(set_to_none=True)
        words = adapter.word_embeddings(batch["input_ids"])
        adv = F.cross_entropy(adapter.logits(batch, word_embeds=words + delta), batch["labels"])
        clean = F.cross_entropy(adapter.logits(batch), batch["labels"])
        (w * clean + (1 - w) * adv).backward()
        return grads(adapter.core)

    assert_grads_close(got, hand_grads(iterates[-1], clean_weight))
    others = [hand_grads(iterates[-2], clean_weight), hand_grads(torch.zeros_like(iterates[-1]), 0.0),
              hand_grads(iterates[-1], 0.3 - clean_weight)]  # δ_{K−1}, clean only, other weight
    for other in others:
        assert max((got[n] - other[n]).abs().max().item() for n in got) > 1e-4
