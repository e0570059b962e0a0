"""Every family x every method: a training step, a checkpoint round trip, predict_logits and one
attacked example through the TextAttack wrapper; LoRA for one encoder and one decoder family.

Refused combinations must be refused by the family table (and so at ``validate``)."""

from __future__ import annotations

import io

import pytest
import torch
from tiny_families import CHEAP_KNOBS, METHODS, MODEL_TYPES, family_for, make_adapter

from conftest import make_tiny_task
from robustsweep.config import PeftConfig, TrainConfig
from robustsweep.evaluate.inference import inference_mode
from robustsweep.evaluate.profiles import AttackProfile
from robustsweep.evaluate.runner import AttackRunner, Example
from robustsweep.methods import build
from robustsweep.methods.base import RobustMethod
from robustsweep.models.adapter import EncoderAdapter
from robustsweep.train.loop import build_optimizer, train_step, trainable_parameters

LORA = PeftConfig(r=4, alpha=8, dropout=0.0)
LORA_FAMILIES = ("bert", "llama")
TEXTS = ["good film", "the plot was awful and bad", "a great movie", "this was poor"]


def _combos(model_types: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(m, name) for m in model_types for name in METHODS]


def _setup(model_type: str, name: str, *, seed: int, lora: PeftConfig | None,
           lora_seed: int = 0) -> tuple[EncoderAdapter, RobustMethod]:
    adapter = make_adapter(model_type, seed=seed, lora=lora, lora_seed=lora_seed)
    method = build(name, CHEAP_KNOBS[name])
    torch.manual_seed(seed)
    method.setup(adapter, make_tiny_task(n_train=8, n_eval=4))
    return adapter, method


def _predict(method: RobustMethod, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with inference_mode(method):
        return method.predict_logits(batch).detach()


def _exercise(model_type: str, name: str, lora: PeftConfig | None) -> None:
    if family_for(model_type).missing_for(name) is not None:
        pytest.skip("refused by the family table (test_families checks validate refuses it)")
    adapter, method = _setup(model_type, name, seed=0, lora=lora)
    batch = adapter.encode(TEXTS, labels=[1, 0, 1, 0])
    params = trainable_parameters(adapter, method)
    optimizer = build_optimizer(params, TrainConfig(lr=1e-2))
    frozen = {n: p.detach().clone() for n, p in adapter.core.named_parameters()
              if not p.requires_grad}
    adapter.core.train()
    terms = train_step(method, batch, [p for _, p in params], optimizer, max_grad_norm=1.0)
    assert torch.isfinite(torch.tensor(terms["loss"])), terms
    if lora is not None:  # the base stayed frozen, and only adapter/head/method tensors train
        assert frozen and all(torch.equal(p, frozen[n]) for n, p in adapter.core.named_parameters()
                              if n in frozen)
        assert all("lora_" in n or "modules_to_save" in n or "mvp_mlm_head" in n
                   for n, p in adapter.core.named_parameters() if p.requires_grad)

    buffer = io.BytesIO()
    torch.save({"model": adapter.checkpoint_state(), "method": method.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored_adapter, restored = _setup(model_type, name, seed=0 if lora else 1, lora=lora,
                                        lora_seed=1)
    restored_adapter.load_checkpoint_state(state["model"])
    restored.load_state_dict(state["method"])
    logits = _predict(method, batch)
    assert logits.shape == (len(TEXTS), 2) and torch.isfinite(logits).all()
    torch.testing.assert_close(_predict(restored, batch), logits, atol=1e-5, rtol=1e-4)

    profile = AttackProfile(name="tiny", recipe="deepwordbug", query_budget=8, num_examples=1,
                            only_correct=False)
    runner = AttackRunner(method, profile)
    result = runner.run(Example(0, TEXTS[1], int(logits[1].argmax())))  # attacked, not skipped
    assert result.outcome in {"successful", "failed"}, result
    assert runner.wrapper.stats.forwards > 0


@pytest.mark.usefixtures("textattack_ready")
@pytest.mark.parametrize(("model_type", "name"), _combos(MODEL_TYPES))
def test_family_method(model_type: str, name: str) -> None:
    _exercise(model_type, name, None)


@pytest.mark.slow
@pytest.mark.usefixtures("textattack_ready")
@pytest.mark.parametrize(("model_type", "name"), _combos(LORA_FAMILIES))
def test_family_method_lora(model_type: str, name: str) -> None:
    _exercise(model_type, name, LORA)
