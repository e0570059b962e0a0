"""R3F mechanism tests (methods.md §4)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from _grad_checks import assert_reduces_to_vanilla, build, grads, max_grad_diff, vanilla

from conftest import make_batch
from robustsweep.methods.r3f import sample_noise


def test_eps_zero_equals_vanilla() -> None:
    method, adapter = build("r3f", {"eps": 0.0})
    assert_reduces_to_vanilla(method, adapter, make_batch())


def noise_term(eps: float) -> float:
    method, _ = build("r3f", {"eps": eps})
    torch.manual_seed(7)
    return method.training_step(make_batch())["r3f_symkl"]


def test_noise_term_is_positive_and_grows_with_eps() -> None:
    values = [noise_term(eps) for eps in (1e-3, 1e-2, 1e-1, 1.0)]
    assert values[0] > 0
    assert all(b > a for a, b in itertools.pairwise(values))


def test_noise_term_changes_gradient_and_loss_adds_lambda_times_symkl() -> None:
    method, adapter = build("r3f", {"eps": 0.5, "r3f_lambda": 2.0})
    batch = make_batch()
    loss_ref, grads_ref = vanilla(adapter, batch)
    terms = method.training_step(batch)
    assert terms["loss"] == pytest.approx(loss_ref + 2.0 * terms["r3f_symkl"], rel=1e-5)
    assert max_grad_diff(grads(adapter), grads_ref) > 1e-6
    assert method.passes_per_step() == 2.0


def test_gradient_reaches_both_branches() -> None:
    """fairseq's symmetric KL has no stop-gradient: each side gets p_self − p_other + ... ."""
    from robustsweep.methods._common import sym_kl

    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(3, 4, requires_grad=True)
    sym_kl(a, b).sum().backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    ref = F.kl_div(a.log_softmax(-1), b.softmax(-1), reduction="sum") + \
        F.kl_div(b.log_softmax(-1), a.softmax(-1), reduction="sum")
    assert sym_kl(a, b).sum().item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_noise_distribution(kind: str) -> None:
    torch.manual_seed(0)
    like = torch.zeros(200, 50, 16)
    xi = sample_noise(like, 1e-3, kind)
    if kind == "uniform":
        assert xi.abs().max() <= 1e-3
        assert xi.std().item() == pytest.approx(1e-3 / 3**0.5, rel=0.02)
    else:
        assert xi.std().item() == pytest.approx(1e-3, rel=0.02)
    assert abs(xi.mean().item()) < 1e-5
