"""InfoBERT mechanism tests (methods.md §8.6)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from _grad_checks import build, grads, max_grad_diff, vanilla

from conftest import make_batch
from robustsweep.errors import MethodError
from robustsweep.methods import infobert, registry

PLAIN = {"alpha_anchor": 0.0, "beta_ib": 0.0}


def test_no_regularisers_one_step_no_init_equals_vanilla() -> None:
    method, adapter = build("infobert", {**PLAIN, "adv_steps": 1, "adv_init_mag": 0.0})
    batch = make_batch()
    loss_ref, grads_ref = vanilla(adapter, batch)
    terms = method.training_step(batch)
    assert terms["loss"] == pytest.approx(loss_ref, abs=1e-6)
    assert max_grad_diff(grads(adapter), grads_ref) < 1e-6


def test_no_regularisers_equals_freelb() -> None:
    knobs = {"adv_steps": 3, "adv_lr": 0.1, "adv_init_mag": 0.1}
    method, adapter = build("infobert", {**PLAIN, **knobs}, dropout=0.1)
    torch.manual_seed(4)
    method.training_step(make_batch())
    ours = grads(adapter)
    freelb, adapter = build("freelb", knobs, dropout=0.1)
    torch.manual_seed(4)
    freelb.training_step(make_batch())
    assert max_grad_diff(grads(adapter), ours) < 1e-6


def test_anchored_tokens_are_the_configured_rank_window() -> None:
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(10, generator=g)
    norms = torch.zeros(2, 13)
    norms[0, :10] = (perm + 1).float()  # grad norms 1…10 shuffled, then 3 padding tokens
    norms[0, 10:] = 100.0  # padding with huge norms must never be picked
    norms[1] = torch.arange(13, 0, -1).float()
    mask = torch.zeros(2, 13, dtype=torch.long)
    mask[0, :10] = 1
    mask[1, :] = 1
    selected = infobert.anchored_positions(norms, mask, cl=0.5, ch=0.9)
    # n = 10: ascending ranks ceil(5)…ceil(9)−1 = 5…8, i.e. the tokens with norms 6, 7, 8, 9
    assert sorted(norms[0][selected[0]].tolist()) == [6.0, 7.0, 8.0, 9.0]
    assert not selected[0, 10:].any()
    # n = 13: ranks ceil(6.5)=7 … ceil(11.7)−1 = 11, norms 8…12
    assert sorted(norms[1][selected[1]].tolist()) == [8.0, 9.0, 10.0, 11.0, 12.0]


def test_ib_term_is_zero_for_identical_tokens_and_grows_with_spread() -> None:
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    same = torch.ones(2, 5, 8)
    assert infobert.ib_upper_bound(same, mask).item() == 0.0
    base = torch.randn(2, 5, 8)
    values = []
    for spread in (0.1, 1.0, 10.0):
        torch.manual_seed(0)
        values.append(infobert.ib_upper_bound(base * spread, mask).item())
    assert values[0] < values[1] < values[2]


def test_infonce_bound_is_at_most_log_n_and_rises_with_training() -> None:
    torch.manual_seed(0)
    n, dim = 8, 16
    critic = infobert.InfoNCECritic(dim)
    a = torch.randn(n, dim)
    b = a + 0.1 * torch.randn(n, dim)  # correlated pairs
    start = infobert.infonce_lower_bound(critic, a, b).item()
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-2)
    for _ in range(30):
        bound = infobert.infonce_lower_bound(critic, a, b)
        assert bound.item() <= math.log(n) + 1e-6
        optimizer.zero_grad()
        (-bound).backward()
        optimizer.step()
    assert bound.item() > start + 0.5


def test_critic_gets_gradients_and_anchor_term_changes_model_gradients() -> None:
    results = []
    for alpha in (0.0, 1.0):
        method, adapter = build("infobert", {"alpha_anchor": alpha, "beta_ib": 0.0})
        torch.manual_seed(9)
        terms = method.training_step(make_batch(batch_size=6))
        critic_grads = [p.grad for p in method.extra_parameters()]
        assert any(g is not None and g.any() for g in critic_grads) == (alpha > 0)
        results.append(grads(adapter))
    assert terms["anchor_lb"] != 0.0
    assert max_grad_diff(*results) > 1e-6


def test_ib_term_changes_embedding_gradients() -> None:
    results = []
    for beta in (0.0, 1.0):
        method, adapter = build("infobert", {"alpha_anchor": 0.0, "beta_ib": beta})
        torch.manual_seed(9)
        terms = method.training_step(make_batch())
        results.append(grads(adapter))
    assert terms["ib"] > 0
    name = "bert.embeddings.LayerNorm.weight"
    assert (results[0][name] - results[1][name]).abs().max() > 1e-6


def test_window_must_be_ordered() -> None:
    with pytest.raises(MethodError, match="cl") as err:
        registry.build("infobert", {"cl": 0.8, "ch": 0.7})
    assert "\n" not in str(err.value)


def test_critic_in_state_dict_round_trip() -> None:
    method, _ = build("infobert")
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    other, _ = build("infobert", seed=3)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(other.extra_parameters(), method.extra_parameters()):
        assert torch.equal(a, b)
    assert method.passes_per_step() == pytest.approx(5.0)  # K = 3 passes, each with 2 backwards
    no_anchor, _ = build("infobert", {"alpha_anchor": 0.0})
    assert no_anchor.passes_per_step() == 3.0


# ---- signs of the two regularisers against a hand computation ----------------------------------
def seed_like_the_step(seed: int) -> None:
    """Put the global RNG where ``training_step`` draws π (zero init draws nothing; the dropout
    seed is drawn next; the forward runs in a forked RNG)."""
    torch.manual_seed(seed)
    torch.randint(0, 2**31 - 1, (1,))


def test_ib_term_is_added_with_weight_beta() -> None:
    """Gradient = ∇[CE + β·IB(H0)] (K = 1, δ0 = 0): the IB upper bound is *minimised*."""
    beta = 2.0
    method, adapter = build("infobert", {"alpha_anchor": 0.0, "beta_ib": beta, "adv_steps": 1,
                                         "adv_init_mag": 0.0})
    batch = make_batch()
    torch.manual_seed(3)
    method.training_step(batch)
    got = grads(adapter)
    out = adapter.forward(batch, output_hidden_states=True)
    ce = torch.nn.functional.cross_entropy(out.logits, batch["labels"])
    seed_like_the_step(3)
    (ce + beta * infobert.ib_upper_bound(out.hidden_states[0], batch["attention_mask"])).backward()
    assert max_grad_diff(got, grads(adapter)) < 1e-6
    _, plain = vanilla(adapter, batch)
    assert max_grad_diff(got, plain) > 1e-3  # the term matters at this β


def test_anchored_term_is_subtracted_with_weight_alpha() -> None:
    """Gradient (model and critic) = ∇[CE − α·LB] (K = 1, δ0 = 0): the InfoNCE lower bound on
    the anchored (token, [CLS]) pairs is *maximised*, for the critic and the encoder alike."""
    alpha = 0.5
    method, adapter = build("infobert", {"alpha_anchor": alpha, "beta_ib": 0.0, "adv_steps": 1,
                                         "adv_init_mag": 0.0})
    batch = make_batch(batch_size=6)
    critic = method.critic
    torch.manual_seed(3)
    method.training_step(batch)
    got = grads(adapter)
    got_critic = [p.grad.clone() for p in critic.parameters()]
    critic.zero_grad(set_to_none=True)

    delta = torch.zeros(*batch["input_ids"].shape, 32, requires_grad=True)
    out = adapter.forward(batch, word_embeds=adapter.word_embeddings(batch["input_ids"]) + delta,
                          output_hidden_states=True)
    ce = torch.nn.functional.cross_entropy(out.logits, batch["labels"])
    (g,) = torch.autograd.grad(ce, delta, retain_graph=True)
    selected = infobert.anchored_positions(g.norm(dim=-1), batch["attention_mask"], 0.5, 0.9)
    rows, cols = selected.nonzero(as_tuple=True)
    order = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(0))
    local = out.hidden_states[0][rows[order], cols[order]]
    glob = out.hidden_states[-1][:, 0][rows[order]]
    size = batch["input_ids"].shape[0]
    chunks = [infobert.infonce_lower_bound(critic, local[s:s + size], glob[s:s + size])
              for s in range(0, rows.numel(), size)]
    assert len(chunks) > 1  # several chunks: the mean over chunks is exercised
    (ce - alpha * torch.stack(chunks).mean()).backward()
    assert max_grad_diff(got, grads(adapter)) < 1e-6
    for mine, want in zip(got_critic, critic.parameters()):
        torch.testing.assert_close(mine, want.grad, atol=1e-7, rtol=1e-5)
    _, plain = vanilla(adapter, batch)
    assert max_grad_diff(got, plain) > 1e-4  # the term matters at this α
