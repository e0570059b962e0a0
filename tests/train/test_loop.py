"""The framework-free loop: it learns, resumes bit-exactly, shards and pads per batch."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_batch, make_tiny_adapter, make_tiny_task
from robustsweep.jobfile import validate_job
from robustsweep.methods import build
from robustsweep.methods.vanilla import Vanilla
from robustsweep.state.trial import read_checkpoint, write_checkpoint
from robustsweep.train.loop import (
    Sharding,
    fit,
    iter_batches,
    seed_everything,
    train_step,
    trainable_parameters,
)


def job(epochs: int = 2, method: str = "vanilla", train: dict | None = None, **knobs):
    return validate_job({"seed": 3, "method": {"name": method, "knobs": knobs},
                         "train": {"epochs": epochs, "batch_size": 8, "lr": 1e-3,
                                   "max_grad_norm": 1.0, **(train or {})}})


class RandomlyWeighted(Vanilla):
    """CE scaled by draws from Python's and NumPy's RNGs: a stand-in for any code that uses
    them (augmentation, sampling), so a resume must restore those streams too."""

    def training_step(self, batch):
        scale = 1.0 + random.random() + float(np.random.rand())
        loss = scale * F.cross_entropy(self.adapter.logits(batch), batch["labels"])
        loss.backward()
        return {"loss": loss.item()}


def run(cfg, resume=None, on_epoch_end=None, method_class=None):
    seed_everything(cfg.seed)
    adapter = make_tiny_adapter(dropout=0.1, seed=cfg.seed)
    method = method_class() if method_class else build(cfg.method.name, cfg.method.knobs)
    task = make_tiny_task(n_train=40, n_eval=16)
    method.setup(adapter, task)
    state = fit(adapter, method, task, cfg, resume=resume, on_epoch_end=on_epoch_end, progress=None)
    return adapter, state


def test_fit_learns_and_reports_every_epoch() -> None:
    seen = []
    cfg = job(epochs=6)
    cfg.train.lr = 3e-3
    _, state = run(cfg, on_epoch_end=lambda e, m, s: seen.append((e, m)))
    assert [e for e, _ in seen] == [1, 2, 3, 4, 5, 6]
    first, last = seen[0][1], seen[-1][1]
    assert last["train_loss"] < first["train_loss"]
    assert last["clean_accuracy"] >= 0.75
    for key in ("train_loss", "clean_accuracy", "ece", "epoch_time_s", "cost/fwd_bwd_passes"):
        assert key in last
    assert state.global_step == 6 * 5 and last["cost/fwd_bwd_passes"] == 6 * 40


def test_accumulation_counts_optimizer_steps_and_every_row() -> None:
    """40 rows, micro-batches of 4, 3 per step: 4 steps an epoch (the last of 1 micro-batch);
    the lr schedule and global_step count steps, the cost counts every row once."""
    cfg = job(epochs=2, train={"batch_size": 4, "grad_accumulation_steps": 3})
    _, state = run(cfg)
    assert state.global_step == 2 * 4
    assert state.history[-1]["cost/fwd_bwd_passes"] == 2 * 40
    assert state.history[-1]["lr"] == pytest.approx(0.0)  # the schedule ended with the last step


def test_step_level_metrics_every_n_steps() -> None:
    cfg = job(epochs=2, train={"log_every_steps": 2})
    seen: list[tuple[int, dict]] = []
    epochs: list[dict] = []
    seed_everything(cfg.seed)
    adapter = make_tiny_adapter(dropout=0.1, seed=cfg.seed)
    method = build("smart", {})
    task = make_tiny_task(n_train=40, n_eval=16)
    method.setup(adapter, task)
    fit(adapter, method, task, cfg, progress=None, on_steps=lambda s, m: seen.append((s, m)),
        on_epoch_end=lambda e, m, s: epochs.append(m))
    assert [s for s, _ in seen] == [2, 4, 6, 8, 10]  # 5 steps an epoch, a flush every 2
    keys = set(seen[0][1])
    assert {"step/train_loss", "step/lr", "step/grad_norm", "step/ce", "step/smart_reg"} <= keys
    assert all(set(m) == keys and all(math.isfinite(v) for v in m.values()) for _, m in seen)
    assert not any(k.startswith("step/") or k == "train/grad_norm" for k in epochs[-1])


class Interrupt(Exception):
    pass


ACCUMULATE = {"grad_accumulation_steps": 2, "batch_size": 4}


@pytest.mark.parametrize("method, knobs, method_class, train", [
    ("vanilla", {}, None, {}), ("freelb", {"adv_steps": 2}, None, {}),
    ("vanilla", {}, RandomlyWeighted, {}),
    ("vanilla", {}, None, ACCUMULATE),
    ("roast", {"alpha": 0.5, "fisher_batches": 1, "fisher_batch_size": 4}, None, ACCUMULATE),
    ("vanilla", {}, None, {"precision": "fp16"}),  # the loss scale is part of the checkpoint
])
def test_resume_after_epoch_one_equals_uninterrupted(tmp_path: Path, method: str, knobs: dict,
                                                     method_class: type | None, train: dict) -> None:
    cfg = job(epochs=2, method=method, train=train, **knobs)
    full_adapter, full_state = run(cfg, method_class=method_class)

    def stop_after_first(epoch, metrics, state_fn):
        write_checkpoint(tmp_path / f"epoch_{epoch:03d}", state_fn(), epoch)
        raise Interrupt

    with pytest.raises(Interrupt):
        run(cfg, on_epoch_end=stop_after_first, method_class=method_class)
    resumed_epochs = []
    resumed_adapter, resumed_state = run(
        cfg, resume=read_checkpoint(tmp_path / "epoch_001"),
        on_epoch_end=lambda e, m, s: resumed_epochs.append(e), method_class=method_class)
    assert resumed_epochs == [2]  # epoch 1 is not trained again
    assert resumed_state.global_step == full_state.global_step
    assert [h["train_loss"] for h in resumed_state.history] == [h["train_loss"] for h in full_state.history]
    for (name, p), (_, q) in zip(full_adapter.core.named_parameters(), resumed_adapter.core.named_parameters()):
        assert torch.equal(p, q), name


def test_sharding_is_disjoint_equal_and_seeded() -> None:
    shards = [Sharding(seed=1, rank=r, world_size=3).epoch_indices(31, epoch=1) for r in range(3)]
    assert all(len(s) == 10 for s in shards)
    assert len(set().union(*shards)) == 30
    assert Sharding(1, 0, 3).epoch_indices(31, 1) == shards[0]
    assert Sharding(1, 0, 3).epoch_indices(31, 2) != shards[0]


def test_batches_are_padded_to_their_own_longest_text() -> None:
    adapter = make_tiny_adapter()
    task = make_tiny_task()
    task.train.texts[0] = " ".join(["word"] * 25)
    widths = [b["input_ids"].shape[1] for b in iter_batches(adapter, task.train, list(range(16)), 8)]
    assert widths == [27, 9]


class RecordingOptimizer:
    """Stands in for the optimizer: keeps the gradients ``step`` would apply."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params, self.applied = params, []

    def step(self) -> None:
        self.applied = [p.grad.clone() if p.grad is not None else None for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


def test_infobert_clips_the_model_gradient_only_not_the_critic() -> None:
    """InfoBERT's official trainer clips ``model.parameters()``: the model's joint norm is cut to
    max_grad_norm, the critic's gradient passes unchanged."""
    method = build("infobert", {"adv_steps": 2, "alpha_anchor": 1.0})
    method.setup(make_tiny_adapter())
    batch = make_batch(batch_size=6)
    params = [p for _, p in trainable_parameters(method.adapter, method)]
    critic = {id(p) for p in method.extra_parameters()}
    torch.manual_seed(1)
    method.training_step(batch)
    raw = [p.grad.clone() if p.grad is not None else None for p in params]
    for p in params:
        p.grad = None
    optimizer = RecordingOptimizer(params)
    torch.manual_seed(1)
    train_step(method, batch, params, optimizer, max_grad_norm=1e-3)
    def joint_norm(in_critic: bool) -> torch.Tensor:
        return torch.stack([g.norm() for p, g in zip(params, raw)
                            if g is not None and (id(p) in critic) == in_critic]).norm()

    model_norm = joint_norm(False)
    assert model_norm > 1e-2 and joint_norm(True) > 1e-2  # clipping is active on both
    for p, before, after in zip(params, raw, optimizer.applied):
        if before is None:
            assert after is None
        elif id(p) in critic:
            torch.testing.assert_close(after, before)
        else:
            torch.testing.assert_close(after, before * (1e-3 / (model_norm + 1e-6)))
