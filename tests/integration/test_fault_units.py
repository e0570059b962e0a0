"""Fault handling without Ray: the divergence guard and the checkpoint fallback on resume.

The end-to-end versions (a diverging trial in a real sweep, a worker SIGKILL, an MLflow server
restart, two jobs at once) are in ``test_faults.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_adapter, make_tiny_task
from robustsweep.jobfile import validate_job
from robustsweep.methods.vanilla import Vanilla
from robustsweep.state.trial import STATE_FILE, write_checkpoint
from robustsweep.train.loop import DivergenceGuard, TrainingDiverged, fit, seed_everything
from robustsweep.train.ray_trainer import load_resume_state


def job(lr: float = 1e-3, epochs: int = 2, max_grad_norm: float | None = 1.0):
    return validate_job({"seed": 0, "method": {"name": "vanilla"},
                         "train": {"epochs": epochs, "batch_size": 8, "lr": lr,
                                   "max_grad_norm": max_grad_norm}})


class NaNAtStep(Vanilla):
    """Vanilla whose loss turns NaN from one step on (a bad batch, an overflow)."""

    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.bad_step, self.steps = bad_step, 0

    def training_step(self, batch):
        self.steps += 1
        loss = F.cross_entropy(self.adapter.logits(batch), batch["labels"])
        if self.steps >= self.bad_step:
            loss = loss * float("nan")
        loss.backward()
        return {"loss": loss.item()}


def run_fit(cfg, method, epochs_seen: list[int]) -> None:
    seed_everything(cfg.seed)
    adapter = make_tiny_adapter(seed=cfg.seed)
    task = make_tiny_task(n_train=40, n_eval=16)
    method.setup(adapter, task)
    fit(adapter, method, task, cfg, progress=None,
        on_epoch_end=lambda e, m, s: epochs_seen.append(e))


def test_nan_loss_stops_the_trial_at_that_step_naming_step_and_loss() -> None:
    epochs: list[int] = []
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 7 \(epoch 2\)"):
        run_fit(job(), NaNAtStep(bad_step=7), epochs)  # 5 steps per epoch: step 7 is in epoch 2
    assert epochs == [1]  # the diverged epoch is never reported (no metrics, no checkpoint)


def test_absurd_learning_rate_diverges_within_a_few_steps() -> None:
    epochs: list[int] = []
    with pytest.raises(TrainingDiverged, match=r"training diverged: loss is (nan|inf|-inf)"):
        run_fit(job(lr=1e6, epochs=3, max_grad_norm=None), Vanilla(), epochs)
    assert epochs == []


def test_guard_on_accelerator_tensors_syncs_every_n_steps_and_at_epoch_end() -> None:
    guard = DivergenceGuard(sync_every=4, defer_cpu_tensors=True)
    guard.check(torch.tensor(0.5), step=1, epoch=1)
    guard.check(torch.tensor(float("inf")), step=2, epoch=1)  # deferred: no sync yet
    guard.check(torch.tensor(0.5), step=3, epoch=1)
    with pytest.raises(TrainingDiverged, match="by step 4"):
        guard.check(torch.tensor(0.5), step=4, epoch=1)
    late = DivergenceGuard(sync_every=100, defer_cpu_tensors=True)
    late.check(torch.tensor(float("nan")), step=1, epoch=1)
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        late.flush(step=1, epoch=1)  # the end of the epoch always reads the flag


def test_finite_losses_pass_the_guard() -> None:
    guard = DivergenceGuard()
    for step, loss in enumerate([1e30, -3.0, 0.0, torch.tensor(2.0)], start=1):
        guard.check(loss, step, epoch=1)
    guard.flush(step=4, epoch=1)
    assert math.isfinite(1e30)


def make_checkpoints(trial_dir: Path) -> dict[int, Path]:
    """Epochs 1-3 in one attempt, as Ray Train stores them."""
    dirs = {}
    for epoch in (1, 2, 3):
        directory = trial_dir / "ray" / "attempt_1" / f"epoch_{epoch:03d}"
        write_checkpoint(directory, {"fit_state": {"epoch": epoch}, "w": torch.ones(64) * epoch},
                         epoch)
        dirs[epoch] = directory
    return dirs


def test_truncated_and_corrupt_checkpoints_fall_back_to_the_previous_complete_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = make_checkpoints(tmp_path)
    newest = dirs[3] / STATE_FILE  # cut short: a worker killed while Ray copied it
    newest.write_bytes(newest.read_bytes()[:100])
    middle = dirs[2] / STATE_FILE  # same size, garbage bytes: size checks cannot see this
    middle.write_bytes(b"\x00" * middle.stat().st_size)

    state, used = load_resume_state(tmp_path, [dirs[3]])  # Ray's pick: the newest one

    assert used == dirs[1] and state is not None and state["fit_state"]["epoch"] == 1
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is incomplete" in err
    assert f"checkpoint {middle} cannot be loaded" in err


def test_a_good_newest_checkpoint_is_used_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = make_checkpoints(tmp_path)
    state, used = load_resume_state(tmp_path, [dirs[3]])
    assert used == dirs[3] and state["fit_state"]["epoch"] == 3
    assert capsys.readouterr().err == ""


def test_no_loadable_checkpoint_says_training_restarts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = make_checkpoints(tmp_path)
    for directory in dirs.values():
        (directory / STATE_FILE).unlink()
    assert load_resume_state(tmp_path, [dirs[3]]) == (None, None)
    assert "training starts again from epoch 1" in capsys.readouterr().err
