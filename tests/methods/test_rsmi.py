"""RSMI mechanism tests (methods.md §9.9) on the tiny in-process BERT (4 layers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_VOCAB, make_batch, make_tiny_adapter
from robustsweep.methods import build
from robustsweep.methods.rsmi import RSMI, RSMIKnobs, binom_cdf
from robustsweep.sweep.spaces import load_space

MASK = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads; on a loaded 2-core box the OpenMP
    spin-waits of 2 threads made these steps ~30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_rsmi(layers: int = 4, seed: int = 0, **knobs) -> RSMI:
    method = RSMI(RSMIKnobs(**knobs))
    method.setup(make_tiny_adapter(layers=layers, seed=seed))
    return method


def predict(method: RSMI, batch: dict) -> torch.Tensor:
    method.adapter.core.eval()
    with torch.no_grad():  # the method must turn on grads for its saliency itself
        return method.predict_logits(batch)


@contextmanager
def record_ids(method: RSMI) -> Iterator[list[torch.Tensor]]:
    """Token ids seen by the word-embedding lookup, one entry per forward."""
    seen: list[torch.Tensor] = []
    handle = method.adapter.core.get_input_embeddings().register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].detach().clone()))
    try:
        yield seen
    finally:
        handle.remove()


def long_batch(batch_size: int = 6, length: int = 16, seed: int = 0) -> dict:
    """Rows of 11+ real tokens (the top-5 rule, not the short-input top-1 rule): [CLS] words [SEP]."""
    batch = make_batch(batch_size=batch_size, length=length, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for b in range(batch_size):
        n = 11 + b % (length - 10)
        batch["input_ids"][b] = torch.randint(5, TINY_VOCAB, (length,), generator=g)
        batch["input_ids"][b, 0], batch["input_ids"][b, n - 1] = 1, 2
        batch["input_ids"][b, n:] = 0
        batch["attention_mask"][b] = 0
        batch["attention_mask"][b, :n] = 1
    return batch


def independent_saliency(method: RSMI, batch: dict, labels: torch.Tensor | None) -> torch.Tensor:
    """‖∂CE/∂W(x)‖ per token with plain autograd (σ = 0, eval mode)."""
    core = method.adapter.core.eval()
    words = core.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    logits = core(inputs_embeds=words, attention_mask=batch["attention_mask"],
                  token_type_ids=batch["token_type_ids"]).logits
    target = labels if labels is not None else logits.argmax(-1)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, target), words)
    return grad


def expected_masks(batch: dict, grad: torch.Tensor, topk: int, m: int) -> list[list[int]]:
    scores = grad.norm(dim=-1)
    out = []
    for b in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][b].sum())
        order = torch.argsort(scores[b, :n], descending=True)[:topk].tolist()
        out.append([p for p in order if p not in (0, n - 1)][:m])
    return out


def test_everything_off_is_the_plain_model() -> None:
    method = make_rsmi(noise_sigma=0.0, multi_mask=0, w_gn=0.0, num_ensemble=1)
    batch = make_batch(seed=1)
    method.adapter.core.eval()
    with torch.no_grad():
        plain = method.adapter.logits(batch)
    torch.testing.assert_close(predict(method, batch), plain)
    torch.testing.assert_close(predict(method, batch), plain)
    core = method.adapter.core.train()
    method.training_step(batch)
    got = {n: p.grad.clone() for n, p in core.named_parameters() if p.grad is not None}
    core.zero_grad(set_to_none=True)
    F.cross_entropy(core(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits,
                    batch["labels"]).backward()
    for name, param in core.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(got[name], param.grad)


def test_training_forward_carries_the_hidden_layer_noise() -> None:
    """Gradient = ∇CE of the model with h_i + σ·ε_i at layers 0 and 3 (i % 3 == 0), the ε drawn
    in layer order from the global RNG: fails when training runs without the noise."""
    sigma = 0.5
    method = make_rsmi(noise_sigma=sigma, multi_mask=0, w_gn=0.0)  # no saliency: noise only
    batch = make_batch(seed=2)
    core = method.adapter.core.train()
    torch.manual_seed(4)
    method.training_step(batch)
    got = {n: p.grad.clone() for n, p in core.named_parameters() if p.grad is not None}

    def add_noise(_module, _args, out):
        return (out[0] + sigma * torch.randn_like(out[0]), *out[1:]) if isinstance(out, tuple) \
            else out + sigma * torch.randn_like(out)

    def hand_grads(noisy: bool) -> dict[str, torch.Tensor]:
        core.zero_grad(set_to_none=True)
        layers = [core.bert.encoder.layer[i] for i in (0, 3)] if noisy else []
        handles = [layer.register_forward_hook(add_noise) for layer in layers]
        torch.manual_seed(4)
        logits = core(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
        F.cross_entropy(logits, batch["labels"]).backward()
        for handle in handles:
            handle.remove()
        return {n: p.grad.clone() for n, p in core.named_parameters() if p.grad is not None}

    want, plain = hand_grads(True), hand_grads(False)
    assert got.keys() == want.keys()
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, msg=name)
    assert max((want[n] - plain[n]).abs().max().item() for n in want) > 1e-3  # noise matters


@pytest.mark.parametrize(("knobs", "layers"), [
    ({"nth_layers": 3}, {0, 3}),
    ({"nth_layers": 2}, {0, 2}),
    ({"nth_layers": 1}, {0, 1, 2, 3}),
    ({"nth_layers": 2, "single_layer": True}, {0}),
])
def test_noise_hits_exactly_the_configured_layers_in_eval_mode(knobs: dict, layers: set[int]) -> None:
    method = make_rsmi(noise_sigma=0.5, multi_mask=1, num_ensemble=2, binom_ensemble=0, **knobs)
    core = method.adapter.core
    outputs: dict[int, list[torch.Tensor]] = {i: [] for i in range(4)}
    inputs: dict[int, list[torch.Tensor]] = {i: [] for i in range(4)}
    handles = []
    for i, layer in enumerate(core.bert.encoder.layer):  # registered first: sees pre-noise outputs
        handles.append(layer.register_forward_hook(
            lambda _m, _a, out, i=i: outputs[i].append((out[0] if isinstance(out, tuple) else out).detach())))
    nexts = [*core.bert.encoder.layer[1:], core.bert.pooler]
    for i, module in enumerate(nexts):
        handles.append(module.register_forward_pre_hook(
            lambda _m, args, kwargs, i=i: inputs[i].append(
                (args[0] if args else kwargs["hidden_states"]).detach()), with_kwargs=True))
    predict(method, long_batch())
    for handle in handles:
        handle.remove()
    noisy = set()
    for i in range(4):
        assert len(outputs[i]) == len(inputs[i]) == 2  # saliency pass + one stage-1 ensemble pass
        diffs = [(a - b).abs().max().item() for a, b in zip(inputs[i], outputs[i])]
        if all(d > 0.1 for d in diffs):
            noisy.add(i)
        else:
            assert all(d == 0 for d in diffs)
    assert noisy == layers
    assert method.noise_layers() == sorted(layers)


def test_fixed_noise_depends_on_seed_not_on_batching() -> None:
    method = make_rsmi(noise_sigma=0.5, binom_ensemble=0)
    batch = long_batch()
    with method.fixed_noise_mode(1):
        first, again = predict(method, batch), predict(method, batch)
        alone = predict(method, {k: v[2:3, :13] if v.dim() == 2 else v[2:3] for k, v in batch.items()})
    with method.fixed_noise_mode(2):
        other = predict(method, batch)
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(alone[0], first[2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first, other)
    torch.manual_seed(0)
    stochastic = predict(method, batch)
    assert not torch.allclose(stochastic, predict(method, batch))  # the paper's default
    knob_fixed = RSMI(RSMIKnobs(noise_sigma=0.5, binom_ensemble=0, fixed_noise=True, noise_seed=1))
    knob_fixed.setup(method.adapter)
    torch.testing.assert_close(predict(knob_fixed, batch), first)


def test_inference_masks_the_most_salient_tokens_of_the_predicted_label() -> None:
    method = make_rsmi(noise_sigma=0.0, multi_mask=2, num_ensemble=3, binom_ensemble=0)
    batch = long_batch(seed=3)
    want = expected_masks(batch, independent_saliency(method, batch, None), 5, 2)
    with record_ids(method) as seen:
        predict(method, batch)
    assert len(seen) == 2
    stage1 = seen[1].view(6, 3, -1)
    for b in range(6):
        changed = (stage1[b] != batch["input_ids"][b]).nonzero()
        for copy in range(3):
            got = sorted(changed[changed[:, 0] == copy, 1].tolist())
            assert got == sorted(want[b]) and len(got) == 2
            assert all(stage1[b, copy, p] == MASK for p in got)


def test_training_masks_gold_label_saliency_and_adds_the_raw_gradient() -> None:
    method = make_rsmi(noise_sigma=0.0, multi_mask=3, w_gn=1.0)
    batch = long_batch(seed=4)
    labels = 1 - independent_saliency(method, batch, None).new_zeros(6, dtype=torch.long)  # all 1
    batch["labels"] = labels
    grad = independent_saliency(method, batch, labels)
    want = expected_masks(batch, grad, 5, 3)
    core = method.adapter.core
    captured: list[torch.Tensor] = []
    handle = core.bert.embeddings.register_forward_pre_hook(
        lambda _m, _a, kwargs: captured.append(kwargs["inputs_embeds"].detach()), with_kwargs=True)
    with record_ids(method) as seen:
        core.train()
        method.training_step(batch)
    handle.remove()
    masked = batch["input_ids"].clone()
    for b, cols in enumerate(want):
        masked[b, cols] = MASK
    torch.testing.assert_close(seen[-1], masked)
    embeds = core.get_input_embeddings()(masked).detach() + grad
    torch.testing.assert_close(captured[-1], embeds)


def test_mask_rule_never_touches_ends_or_padding() -> None:
    method = make_rsmi()
    batch = make_batch(batch_size=8, length=14, seed=5)
    scores = torch.rand(8, 14)
    scores[:, 0] = 10.0  # [CLS] most salient: must still be skipped
    candidates = method.mask_candidates(batch["input_ids"], batch["attention_mask"], scores)
    for b, cands in enumerate(candidates):
        n = int(batch["attention_mask"][b].sum())
        assert all(0 < p < n - 1 for p in cands)
        assert len(cands) <= (1 if n <= 10 else 5)
        order = scores[b, cands]
        assert torch.all(order[:-1] >= order[1:])


def test_binomial_gate() -> None:
    assert binom_cdf(4, 5) == pytest.approx(0.96875)
    assert binom_cdf(5, 5) == 1.0
    assert binom_cdf(3, 5) == pytest.approx(0.8125)
    batch = long_batch(seed=6)

    def rows_seen(alpha_p: float) -> tuple[int, torch.Tensor]:
        method = make_rsmi(noise_sigma=5.0, num_ensemble=5, binom_ensemble=7, alpha_p=alpha_p,
                           fixed_noise=True)
        with record_ids(method) as seen:
            logits = predict(method, batch)
        return sum(t.shape[0] for t in seen), logits

    never, _ = rows_seen(0.0)
    assert never == 6 + 6 * 5  # saliency + stage 1 only
    always, _ = rows_seen(1.0)  # every non-unanimous vote goes to stage 2
    uncertain = (always - never) // 8  # per uncertain example: 1 saliency row + 7 copies
    assert always - never == 8 * uncertain and uncertain > 0


def test_max_vote_returns_log_smoothed_shares() -> None:
    method = make_rsmi(vote_type="max")
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.5]]])
    out = method.aggregate(logits)
    torch.testing.assert_close(out, torch.tensor([[4 / 6, 2 / 6]]).log())


@pytest.fixture(scope="module")
def trained_method() -> RSMI:
    """A tiny model trained by RSMI itself on a learnable rule: label = first token >= 66."""
    torch.manual_seed(0)
    method = make_rsmi(noise_sigma=0.2, multi_mask=0, w_gn=0.0)
    optimizer = torch.optim.AdamW(method.adapter.core.parameters(), lr=2e-3)
    method.adapter.core.train()
    for step in range(150):
        batch = make_batch(batch_size=32, length=10, seed=100 + step)
        batch["labels"] = (batch["input_ids"][:, 1] >= 66).long()
        method.training_step(batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return method


def test_majority_vote_is_stable_across_seeds(trained_method: RSMI) -> None:
    """σ = 2 at inference: large enough that single noisy samples of this (confident) tiny
    model flip; the 25-sample majority must not."""
    batch = make_batch(batch_size=100, length=10, seed=7)

    def votes(n: int, seed: int) -> torch.Tensor:
        method = RSMI(RSMIKnobs(noise_sigma=2.0, multi_mask=0, num_ensemble=n, binom_ensemble=0,
                                vote_type="max", fixed_noise=True, noise_seed=seed))
        method.setup(trained_method.adapter)
        return predict(method, batch).argmax(-1)

    single = (votes(1, 1) == votes(1, 2)).float().mean().item()
    many = (votes(25, 1) == votes(25, 2)).float().mean().item()
    accuracy = (votes(25, 1) == (batch["input_ids"][:, 1] >= 66).long()).float().mean().item()
    assert accuracy > 0.9
    assert many >= 0.95
    assert single < 0.97 and single < many


def test_registry_costs_and_search_space() -> None:
    assert isinstance(build("rsmi", {"noise_sigma": 0.1}), RSMI)
    assert RSMI.wants_grad_at_inference
    assert make_rsmi().passes_per_step() == 2.0
    assert make_rsmi(multi_mask=0, w_gn=0.0).passes_per_step() == 1.0
    assert next(iter(load_space("rsmi").knobs)) == "noise_sigma"
    assert TINY_VOCAB > MASK


def test_fit_and_evaluation_run_through_the_smoothed_prediction() -> None:
    """The real loop + evaluation suite (eval mode, grads enabled for the saliency)."""
    from conftest import make_tiny_task
    from robustsweep.config import JobConfig
    from robustsweep.train.loop import fit

    cfg = JobConfig.model_validate({
        "method": {"name": "rsmi", "knobs": {"num_ensemble": 3, "binom_ensemble": 4}},
        "train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2},
    })
    adapter = make_tiny_adapter(layers=4)
    method = build("rsmi", cfg.method.knobs)
    method.setup(adapter)
    state = fit(adapter, method, make_tiny_task(n_train=16, n_eval=8), cfg, progress=None)
    metrics = state.history[-1]
    assert 0 <= metrics["clean_accuracy"] <= 1 and "train/masked_tokens" in metrics  # 9-token texts: top-1 rule
    assert all(p.grad is None for p in adapter.core.parameters())  # no saliency grad leaks
