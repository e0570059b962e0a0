"""Checkpoint files: the newest *complete* checkpoint wins; truncated copies are skipped."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from robustsweep.state.trial import STATE_FILE, latest_checkpoint, read_checkpoint, write_checkpoint
from robustsweep.train.checkpoints import restore_rng_state, rng_state


def test_latest_complete_checkpoint_skips_truncated_copies(tmp_path: Path) -> None:
    state = {"w": torch.arange(1000, dtype=torch.float32)}
    write_checkpoint(tmp_path / "ray" / "attempt_a" / "epoch_001", state, epoch=1)
    second = write_checkpoint(tmp_path / "ray" / "attempt_a" / "epoch_002", state, epoch=2)
    assert latest_checkpoint(tmp_path) == second
    data = (second / STATE_FILE).read_bytes()
    (second / STATE_FILE).write_bytes(data[: len(data) // 2])  # a copy cut short by a killed worker
    assert latest_checkpoint(tmp_path).name == "epoch_001"
    assert torch.equal(read_checkpoint(latest_checkpoint(tmp_path))["w"], state["w"])


def test_no_checkpoint(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None


def draws() -> tuple[list[float], list[float], list[float], list[float]]:
    """The next values of every stream a trial uses (gauss draws exercise the cached state)."""
    return (torch.rand(4).tolist(), np.random.rand(4).tolist(),
            [random.random() for _ in range(4)], [np.random.randn(), random.gauss(0, 1)])


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    np.random.randn()  # leaves a cached gaussian in NumPy's state
    random.gauss(0, 1)  # and in Python's
    write_checkpoint(tmp_path, {"model": {}, **rng_state()}, epoch=1)
    want = draws()
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    restore_rng_state(read_checkpoint(tmp_path))  # weights_only=True
    assert draws() == want


def test_old_checkpoint_with_only_the_cpu_rng_still_restores(tmp_path: Path) -> None:
    torch.manual_seed(0)
    write_checkpoint(tmp_path, {"torch_rng": torch.get_rng_state()}, epoch=1)
    want = torch.rand(4)
    np.random.seed(5)
    numpy_next = np.random.rand()
    np.random.seed(5)
    restore_rng_state(read_checkpoint(tmp_path))
    assert torch.equal(torch.rand(4), want)
    assert np.random.rand() == numpy_next  # streams the checkpoint lacks are left alone


def test_ray_keeps_train_keep_checkpoints_per_attempt(tmp_path: Path, monkeypatch) -> None:
    """train.keep_checkpoints reaches Ray Train's retention (newest N: the final one stays)."""
    from robustsweep.jobfile import validate_job
    from robustsweep.train import ray_trainer
    from robustsweep.train.ray_trainer import build_trainer

    monkeypatch.setattr(ray_trainer, "cpus_per_worker", lambda cfg: 1.0)  # no cluster to ask

    for keep in (1, 3):
        cfg = validate_job({"train": {"keep_checkpoints": keep}})
        trainer = build_trainer(cfg, {"trial_dir": str(tmp_path)}, tmp_path, "attempt_x")
        assert trainer.run_config.checkpoint_config.num_to_keep == keep
