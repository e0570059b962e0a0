"""Every method's training step under bf16 and fp16 autocast on CPU (train.precision).

The step must stay the method's step: the same loss and nearly the same gradient as in fp32
from the same start (same seeds, so the same dropout masks and noise draws), finite updates,
and the parts precision.py keeps in fp32 really in fp32. fp16's loss scale must be undone
wherever a gradient is read (perturbations, saliency, Fisher scores), and an overflowed step
skipped without touching the weights or RoAST's scores.
"""

from __future__ import annotations

import pytest
import torch
from tiny_families import CHEAP_KNOBS, METHODS, make_adapter

from conftest import make_tiny_task
from robustsweep.config import TrainConfig
from robustsweep.methods import build
from robustsweep.methods._common import kl_per_example
from robustsweep.methods.base import RobustMethod
from robustsweep.models.adapter import EncoderAdapter
from robustsweep.precision import MixedPrecision
from robustsweep.train.loop import build_optimizer, train_step, trainable_parameters

TEXTS = ["good film", "the plot was awful and bad", "a great movie", "this was poor"]
LABELS = [1, 1, 1, 0]  # unbalanced: balanced labels at uniform predictions make the
# head gradient a sum of cancelling terms, which no bf16 step reproduces to 10 %


def _setup(name: str, knobs: dict | None = None) -> tuple[EncoderAdapter, RobustMethod, dict]:
    adapter = make_adapter("bert", seed=0)
    method = build(name, {**CHEAP_KNOBS[name], **(knobs or {})})
    torch.manual_seed(0)
    method.setup(adapter, make_tiny_task(n_train=8, n_eval=4))
    adapter.core.train()
    return adapter, method, adapter.encode(TEXTS, labels=LABELS)


def _grad_vector(adapter: EncoderAdapter, method: RobustMethod) -> torch.Tensor:
    params = [p for _, p in trainable_parameters(adapter, method)]
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in params])


def _one_step_grads(name: str, precision: str) -> tuple[float, torch.Tensor]:
    """Loss and true (unscaled) gradient of one training_step in ``precision``."""
    adapter, method, batch = _setup(name)
    amp = MixedPrecision(precision, "cpu")  # type: ignore[arg-type]
    method.amp = amp
    torch.manual_seed(1)
    with amp.autocast():
        terms = method.training_step(batch)
    grad = _grad_vector(adapter, method)
    if amp.scaler is not None:
        grad = grad / amp.scaler.get_scale()
    return terms["loss"], grad


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", METHODS)
def test_low_precision_step_matches_fp32(name: str, precision: str) -> None:
    loss32, grad32 = _one_step_grads(name, "fp32")
    loss, grad = _one_step_grads(name, precision)
    assert torch.isfinite(grad).all()
    assert abs(loss - loss32) <= 1e-3 * abs(loss32), (loss, loss32)
    cosine = torch.nn.functional.cosine_similarity(grad, grad32, dim=0)
    assert cosine > 0.999, f"{name} {precision}: gradient cosine {cosine:.5f} to fp32"
    ratio = grad.norm() / grad32.norm()
    assert 0.98 < ratio < 1.02, f"{name} {precision}: gradient norm ratio {ratio:.4f} (scale left in?)"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", METHODS)
def test_low_precision_train_step_updates_every_method(name: str, precision: str) -> None:
    adapter, method, batch = _setup(name)
    amp = MixedPrecision(precision, "cpu")  # type: ignore[arg-type]
    method.amp = amp
    named = trainable_parameters(adapter, method)
    optimizer = build_optimizer(named, TrainConfig(lr=1e-3))
    before = {n: p.detach().clone() for n, p in named}
    dtypes: set[torch.dtype] = set()
    linear = next(m for m in adapter.core.modules() if isinstance(m, torch.nn.Linear))
    hook = linear.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
    terms = train_step(method, batch, [p for _, p in named], optimizer, max_grad_norm=1.0, amp=amp)
    hook.remove()
    assert dtypes == {amp.autocast().fast_dtype}, dtypes  # the step really ran in low precision
    assert all(torch.isfinite(torch.tensor(float(v))) for v in terms.values()), terms
    if precision == "fp16":
        assert terms["amp_skipped"] == 0.0
    after = dict(named)
    assert all(torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(before[n], p) for n, p in after.items())


def test_logits_kl_and_mutual_information_stay_fp32_under_autocast() -> None:
    from robustsweep.methods.infobert import ib_upper_bound, infonce_lower_bound

    adapter, method, batch = _setup("infobert")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = adapter.forward(batch, output_hidden_states=True)
        assert out.logits.dtype == torch.float32
        low = out.logits.bfloat16()
        assert kl_per_example(low, low.flip(0)).dtype == torch.float32
        h = out.hidden_states[-1].bfloat16()  # as a bf16 layer output would reach the bounds
        assert ib_upper_bound(h, batch["attention_mask"]).dtype == torch.float32
        cls = adapter.pooled(h)
        assert infonce_lower_bound(method.critic, cls, cls).dtype == torch.float32


def test_fp16_input_gradients_are_unscaled() -> None:
    """method.grad returns true gradients: the loss scale (65536) is divided out."""
    adapter, method, batch = _setup("pgd")
    words = adapter.word_embeddings(batch["input_ids"]).detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(adapter.logits(batch, word_embeds=words), batch["labels"])
    (reference,) = torch.autograd.grad(loss, words, retain_graph=True)
    method.amp = MixedPrecision("fp16", "cpu")
    (grad,) = method.grad(loss, words)
    torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-9)


def test_fp16_overflow_skips_the_step_and_keeps_roast_scores_clean() -> None:
    adapter, method, batch = _setup("roast", {"alpha": 0.5})
    amp = MixedPrecision("fp16", "cpu")
    amp.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)  # scaled grads overflow
    method.amp = amp
    named = trainable_parameters(adapter, method)
    optimizer = build_optimizer(named, TrainConfig(lr=1e-3))
    before = {n: p.detach().clone() for n, p in named}
    fisher = {n: s.clone() for n, s in method.fisher_sum.items()}
    terms = train_step(method, batch, [p for _, p in named], optimizer, max_grad_norm=1.0, amp=amp)
    assert terms["amp_skipped"] == 1.0
    assert all(torch.equal(before[n], p) for n, p in named)  # no update
    assert method.fisher_steps == 0 and all(torch.equal(fisher[n], s) for n, s in method.fisher_sum.items())
    assert amp.scaler.get_scale() < 2.0**120  # backed off for the next step
