"""SMART mechanism tests (methods.md §4)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from _grad_checks import (
    assert_reduces_to_vanilla,
    build,
    grads,
    max_grad_diff,
    no_param_grads,
    vanilla,
)

import robustsweep.methods.smart as smart_module
from conftest import make_batch
from robustsweep.errors import MethodError
from robustsweep.methods import registry
from robustsweep.methods._common import embedding_output, eo_ascent, sym_kl


def test_lambda_zero_equals_vanilla() -> None:
    method, adapter = build("smart", {"lambda_s": 0.0})
    assert_reduces_to_vanilla(method, adapter, make_batch())


def regulariser(step_size: float) -> float:
    """SMART's ℓ_s on a frozen model (no optimizer step), dropout off, same δ0."""
    method, _ = build("smart", {"step_size": step_size})
    torch.manual_seed(123)
    return method.training_step(make_batch())["smart_reg"]


def test_regulariser_nonnegative_and_grows_with_step_size() -> None:
    values = [regulariser(eta) for eta in (0.0, 1e-3, 1e-2, 1e-1, 0.5)]
    assert all(v >= 0 for v in values)
    assert all(b > a for a, b in itertools.pairwise(values))
    assert values[-1] > 1e-6  # a real adversary, not noise


def test_regulariser_changes_the_gradient() -> None:
    method, adapter = build("smart", {"step_size": 0.5})
    batch = make_batch()
    _, grads_ref = vanilla(adapter, batch)
    method.training_step(batch)
    assert max_grad_diff(grads(adapter), grads_ref) > 1e-6


def test_ascent_writes_no_parameter_grads_and_steps_eta_per_token() -> None:
    method, adapter = build("smart")
    batch = make_batch()
    eo = embedding_output(adapter, batch).detach()
    eta = 0.3
    delta = eo_ascent(method, batch, eo, torch.zeros_like(eo),
                      lambda z: F.cross_entropy(z, batch["labels"]), step_size=eta, steps=1,
                      norm="inf", eps=1e-12)
    assert no_param_grads(adapter)
    per_token = delta.abs().amax(dim=-1)
    real = batch["attention_mask"].bool()
    assert torch.allclose(per_token[real], torch.full_like(per_token[real], eta), rtol=1e-4)
    assert per_token[~real].max() == 0  # padding gets no gradient


def test_mtdnn_renormalize_rule_gives_unit_tokens() -> None:
    method, adapter = build("smart")
    batch = make_batch()
    eo = embedding_output(adapter, batch).detach()
    delta0 = torch.randn_like(eo) * 1e-5
    delta = eo_ascent(method, batch, eo, delta0,
                      lambda z: F.cross_entropy(z, batch["labels"]), step_size=1e-5, steps=1,
                      norm="inf", eps=1e-12, renormalize=True)
    assert torch.allclose(delta.abs().amax(dim=-1), torch.ones(delta.shape[:2]), atol=1e-5)


def test_symmetric_kl_stops_gradient_at_targets() -> None:
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(4, 3, requires_grad=True)
    value = sym_kl(a, b, detach_targets=True).mean()
    value.backward()
    # d/da [KL(sg p_b ‖ p_a) + KL(sg p_a ‖ p_b)] = p_a − p_b (the second KL sends nothing to a)
    expected = (a.softmax(-1) - b.softmax(-1)).detach() / 4
    assert torch.allclose(a.grad, expected, atol=1e-6)
    ref = F.kl_div(a.log_softmax(-1), b.softmax(-1), reduction="batchmean") + \
        F.kl_div(b.log_softmax(-1), a.softmax(-1), reduction="batchmean")
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)


def test_non_finite_ascent_gradient_skips_the_regulariser(monkeypatch) -> None:
    method, adapter = build("smart")
    monkeypatch.setattr(smart_module, "kl_per_example",
                        lambda target, z: (z * float("nan")).sum(-1))
    batch = make_batch()
    loss_ref, _ = vanilla(adapter, batch)
    terms = method.training_step(batch)
    assert terms["smart_skipped"] == 1.0
    assert terms["loss"] == pytest.approx(loss_ref, abs=1e-6)


def test_proximal_teacher_follows_the_student_by_momentum() -> None:
    method, adapter = build("smart", {"prox_weight": 1.0, "prox_momentum": 0.9})
    before = [p.detach().clone() for p in method.teacher.parameters()]
    optimizer = torch.optim.SGD(adapter.core.parameters(), lr=0.5)
    terms = method.training_step(make_batch())
    assert "prox" in terms
    optimizer.step()
    method.after_optimizer_step()
    for t, old, p in zip(method.teacher.parameters(), before, adapter.core.parameters()):
        assert torch.allclose(t, 0.9 * old + 0.1 * p.detach(), atol=1e-6)
    assert "teacher" in method.state_dict()
    assert method.passes_per_step() == pytest.approx(3 + 1 / 3)


def test_knob_errors_are_one_line() -> None:
    with pytest.raises(MethodError) as err:
        registry.build("smart", {"norm_p": "l1"})
    assert "\n" not in str(err.value) and "norm_p" in str(err.value)
