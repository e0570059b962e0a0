"""Checkpoint files: the newest *complete* checkpoint wins; truncated copies are skipped."""

from __future__ import annotations

from pathlib import Path

import torch

from robustsweep.train.checkpoints import (
    STATE_FILE,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)


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
