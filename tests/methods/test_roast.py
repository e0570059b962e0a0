"""RoAST mechanism tests (methods.md §5.7)."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from _grad_checks import build, grads

from conftest import make_batch, make_tiny_adapter, make_tiny_task
from robustsweep.methods import roast
from robustsweep.methods._common import eo_forward, sym_kl

SENTIMENT, ENTAILMENT = (0.9, 10.0), (0.6, 1.0)


def layer_names(method: roast.RoAST) -> set[str]:
    return set(method.masked)


def random_scores(method: roast.RoAST, seed: int = 1234) -> dict[str, torch.Tensor]:
    """Uniform scores (the seed must differ from mask_seed, or scores and draws coincide)."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) for n, p in method.masked.items()}


# ---- loss ---------------------------------------------------------------------------------------
def test_off_equals_vanilla_ce_and_adamw_bit_exact() -> None:
    knobs = {"coeff_sym": 0.0, "adv_ce_weight": 0.0, "alpha": 1.0}
    method, adapter = build("roast", knobs)
    ref = make_tiny_adapter(seed=0)
    ref.core.load_state_dict(adapter.core.state_dict())
    ref.model.train()
    opt = torch.optim.AdamW(adapter.core.parameters(), lr=1e-3, weight_decay=0.01)
    opt_ref = torch.optim.AdamW(ref.core.parameters(), lr=1e-3, weight_decay=0.01)
    for step in range(2):
        batch = make_batch(seed=step)
        terms = method.training_step(batch)
        method.before_optimizer_step()
        opt.step()
        method.after_optimizer_step()
        opt.zero_grad()
        loss = F.cross_entropy(ref.logits(batch), batch["labels"])
        loss.backward()
        opt_ref.step()
        opt_ref.zero_grad()
        assert terms["loss"] == loss.item()
    for p, q in zip(adapter.core.parameters(), ref.core.parameters()):
        assert torch.equal(p, q)
    assert method.passes_per_step() == 1.0


def test_adversarial_step_is_eps_per_token() -> None:
    method, _ = build("roast", {"adv_eps": 0.1})
    batch = make_batch()
    eo, delta0, delta = method.adversarial_embeddings(batch)
    assert delta0.min() >= 0 and delta0.max() <= roast.DELTA0_SCALE  # U(0, 1)·1e-5, unmasked
    step = (eo + delta - eo - delta0).abs().amax(dim=-1)
    real = batch["attention_mask"].bool()
    assert torch.allclose(step[real], torch.full_like(step[real], 0.1), rtol=1e-3)
    assert step[~real].max() < 1e-6  # padding has zero gradient


def test_adversarial_ce_not_below_clean_ce() -> None:
    method, adapter = build("roast", {"adv_eps": 0.05})
    batch = make_batch(batch_size=8)
    eo, delta0, delta = method.adversarial_embeddings(batch)
    with torch.no_grad():
        clean = F.cross_entropy(eo_forward(adapter, batch, eo + delta0).logits, batch["labels"],
                                reduction="none")
        adv = F.cross_entropy(eo_forward(adapter, batch, eo + delta).logits, batch["labels"],
                              reduction="none")
    assert (adv >= clean).float().mean() >= 0.75
    assert adv.mean() > clean.mean()


def kl_term(adv_eps: float) -> float:
    method, _ = build("roast", {"adv_eps": adv_eps, "alpha": 1.0})
    torch.manual_seed(3)
    return method.training_step(make_batch())["sym_kl"]


def test_adv_eps_zero_makes_the_extra_loss_vanish() -> None:
    assert kl_term(0.0) < 1e-8
    assert kl_term(0.5) > 1e-5


def test_loss_is_half_ce_plus_batch_summed_half_symkl() -> None:
    method, adapter = build("roast", {"coeff_sym": 0.3, "alpha": 1.0, "adv_ce_weight": 0.5})
    batch = make_batch()
    torch.manual_seed(5)
    terms = method.training_step(batch)
    torch.manual_seed(5)
    with torch.no_grad():
        logits = adapter.logits(batch)
    eo, _, delta = method.adversarial_embeddings(batch)
    with torch.no_grad():
        adv = eo_forward(adapter, batch, eo + delta).logits
    kl = (0.5 * sym_kl(logits, adv)).sum().item()
    adv_ce = F.cross_entropy(adv, batch["labels"]).item()
    assert terms["sym_kl"] == pytest.approx(kl, rel=1e-4)
    assert terms["loss"] == pytest.approx(0.5 * terms["ce"] + 0.3 * kl + 0.5 * adv_ce, rel=1e-5)


# ---- mask statistics ----------------------------------------------------------------------------
@pytest.mark.parametrize(("alpha", "beta", "expected"), [(*SENTIMENT, 0.106), (*ENTAILMENT, 0.454)])
def test_kept_fraction_matches_closed_form(alpha: float, beta: float, expected: float) -> None:
    assert roast.expected_keep(alpha, beta) == pytest.approx(expected, abs=1e-3)
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(300, 1000, generator=g), torch.rand(400_000, generator=g)]
    ranks = roast.relative_ranks(scores)
    kept = [roast.sample_mask(roast.keep_probability(r, alpha, beta), False, g) for r in ranks]
    fraction = sum(k.sum().item() for k in kept) / sum(k.numel() for k in kept)
    assert fraction == pytest.approx(expected, abs=0.01)


def test_unbiased_mask_has_unit_mean() -> None:
    g = torch.Generator().manual_seed(1)
    ranks = roast.relative_ranks([torch.rand(5000, generator=g)])[0]
    pi = roast.keep_probability(ranks, *ENTAILMENT)
    mean = torch.stack([roast.sample_mask(pi, True, g) for _ in range(200)]).mean(dim=0)
    assert mean.mean().item() == pytest.approx(1.0, abs=0.02)
    assert (mean - 1).abs().max() < 0.8


def test_method_mask_keeps_the_fraction_of_each_layer_tensor() -> None:
    method, adapter = build("roast", dict(zip(("alpha", "beta"), SENTIMENT)))
    method.refresh_mask(random_scores(method))
    encoder = {id(p) for p in adapter.encoder_layers.parameters()}
    assert {id(p) for p in method.masked.values()} == encoder  # only encoder blocks
    total = kept = 0
    for name, mask in method.mask.items():
        keep = (mask > 0).float()
        total, kept = total + keep.numel(), kept + keep.sum().item()
        if keep.numel() >= 1000:
            assert keep.mean().item() == pytest.approx(0.106, abs=0.05), name
    assert kept / total == pytest.approx(0.106, abs=0.01)


def test_approximate_ranks_for_large_models(monkeypatch) -> None:
    g = torch.Generator().manual_seed(2)
    scores = [torch.rand(3000, generator=g), torch.rand(50, 40, generator=g)]
    exact = roast.relative_ranks(scores)
    monkeypatch.setattr(roast, "MAX_EXACT_RANK", 1000)
    monkeypatch.setattr(roast, "RANK_SAMPLE", 2000)
    approx = roast.relative_ranks(scores, g)
    for e, a in zip(exact, approx):
        assert (e - a).abs().max() < 0.05


# ---- masking in the optimizer step ------------------------------------------------------------
@pytest.mark.parametrize("unbiased", [True, False])
def test_before_optimizer_step_masks_only_layer_grads(unbiased: bool) -> None:
    method, adapter = build("roast", {"alpha": 0.6, "beta": 1.0, "unbiased_scale": unbiased})
    scores = random_scores(method)
    method.refresh_mask(scores)
    method.training_step(make_batch())
    before = {n: p.grad.clone() for n, p in adapter.core.named_parameters()}
    method.before_optimizer_step()
    after = grads(adapter)
    names = list(method.masked)
    ranks = dict(zip(names, roast.relative_ranks([scores[n] for n in names])))
    for name, grad in after.items():
        if name not in method.masked:
            assert torch.equal(grad, before[name]), name
            continue
        keep = method.mask[name] > 0
        assert (grad[~keep] == 0).all()
        pi = roast.keep_probability(ranks[name], 0.6, 1.0)
        expected = before[name] / (pi + roast.PI_EPS) if unbiased else before[name]
        assert torch.allclose(grad[keep], expected[keep], rtol=1e-5, atol=1e-9), name


def run_steps(method: roast.RoAST, optimizer: torch.optim.Optimizer, seeds: range) -> None:
    for seed in seeds:
        method.training_step(make_batch(seed=seed))
        method.before_optimizer_step()
        optimizer.step()
        method.after_optimizer_step()
        optimizer.zero_grad(set_to_none=True)


def masked_values(method: roast.RoAST) -> dict[str, torch.Tensor]:
    return {n: p.detach()[method.mask[n] == 0].clone() for n, p in method.masked.items()}


def test_masked_entries_do_not_change_code_mode_fresh_adamw() -> None:
    method, adapter = build("roast")
    method.refresh_mask(random_scores(method))
    frozen = masked_values(method)
    start = {n: p.detach().clone() for n, p in method.masked.items()}
    run_steps(method, torch.optim.AdamW(adapter.core.parameters(), lr=1e-2, weight_decay=0.0),
              range(3))
    for name, values in masked_values(method).items():
        assert torch.equal(values, frozen[name]), name
    for name, p in method.masked.items():  # kept entries do train
        kept = method.mask[name] > 0
        if kept.sum() > 10:
            assert not torch.equal(p.detach()[kept], start[name][kept]), name


def test_strict_mode_also_freezes_weight_decay_and_momentum() -> None:
    method, adapter = build("roast", {"mask_mode": "strict"}, task=make_tiny_task())
    optimizer = torch.optim.AdamW(adapter.core.parameters(), lr=1e-2, weight_decay=0.5)
    run_steps(method, optimizer, range(2))
    method.on_epoch_end(1)  # new mask: previously kept entries now carry momentum
    frozen = masked_values(method)
    run_steps(method, optimizer, range(2, 4))
    for name, values in masked_values(method).items():
        assert torch.equal(values, frozen[name]), name


def test_code_mode_lets_weight_decay_move_masked_entries() -> None:
    method, adapter = build("roast")
    method.refresh_mask(random_scores(method))
    frozen = masked_values(method)
    run_steps(method, torch.optim.AdamW(adapter.core.parameters(), lr=1e-2, weight_decay=0.5),
              range(1))
    assert any(not torch.equal(v, frozen[n]) for n, v in masked_values(method).items())


# ---- Fisher scores, epochs, state ---------------------------------------------------------------
def test_initial_fisher_is_mean_squared_ce_gradient() -> None:
    task = make_tiny_task()
    method, adapter = build("roast", {"fisher_batch_size": len(task.train), "fisher_batches": 0})
    fisher = method.initial_fisher(task)
    batch = adapter.encode(task.train.texts, task.train.pairs, task.train.labels)
    names = list(method.masked)
    loss = F.cross_entropy(adapter.logits(batch), batch["labels"])
    expected = torch.autograd.grad(loss, [method.masked[n] for n in names])
    for name, g in zip(names, expected):
        assert torch.allclose(fisher[name], g.square(), rtol=1e-4, atol=1e-12), name
    assert all(p.grad is None for p in adapter.core.parameters())  # no update, no .grad


def test_fisher_pass_respects_the_batch_cap() -> None:
    adapter = make_tiny_adapter()
    calls = []
    adapter.core.register_forward_hook(lambda *_: calls.append(1))
    method = roast.RoAST(roast.RoASTKnobs(fisher_batches=3, fisher_batch_size=4))
    method.setup(adapter, make_tiny_task())
    assert len(calls) == 3
    assert method.mask is not None and set(method.mask) == set(method.masked)


def test_mask_is_constant_within_an_epoch_and_changes_across_epochs() -> None:
    method, adapter = build("roast", task=make_tiny_task())
    optimizer = torch.optim.AdamW(adapter.core.parameters(), lr=1e-3)
    first = {n: m.clone() for n, m in method.mask.items()}
    run_steps(method, optimizer, range(3))
    assert all(torch.equal(method.mask[n], first[n]) for n in first)
    assert method.fisher_steps == 3
    method.on_epoch_end(1)
    assert method.fisher_steps == 0
    assert any(not torch.equal(method.mask[n], first[n]) for n in first)


def test_epoch_mask_is_sampled_from_the_accumulated_squared_gradients() -> None:
    """The end-of-epoch mask equals one drawn by hand, with the same sampler state, from
    mean_steps (∂L_RoAST/∂p)² taken before masking: fails when the scores are not accumulated
    and the mask is only resampled."""
    method, adapter = build("roast", task=make_tiny_task())
    optimizer = torch.optim.AdamW(adapter.core.parameters(), lr=1e-3)
    squares = {n: torch.zeros_like(p) for n, p in method.masked.items()}
    for seed in range(3):
        method.training_step(make_batch(seed=seed))
        for n, p in method.masked.items():
            squares[n] += p.grad.square()
        method.before_optimizer_step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sampler = torch.Generator().manual_seed(0)
    sampler.set_state(method.generator.get_state())
    method.on_epoch_end(1)
    names = list(method.masked)
    ranks = roast.relative_ranks([squares[n] / 3 for n in names])
    for name, r in zip(names, ranks):
        pi = roast.keep_probability(r, 0.9, 10.0)
        torch.testing.assert_close(method.mask[name], roast.sample_mask(pi, True, sampler), msg=name)


def test_state_dict_round_trip_restores_mask_and_sampler() -> None:
    method, _ = build("roast", task=make_tiny_task())
    method.fisher_sum = {n: torch.rand_like(s) for n, s in method.fisher_sum.items()}
    method.fisher_steps = 2
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    other, _ = build("roast")  # no task: no initial mask
    other.load_state_dict(state)
    assert all(torch.equal(other.mask[n], method.mask[n]) for n in method.mask)
    method.on_epoch_end(1)
    other.on_epoch_end(1)
    assert all(torch.equal(other.mask[n], method.mask[n]) for n in method.mask)
