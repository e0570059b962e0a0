"""Checkpoint files: ``<dir>/state.pt`` (torch, weights_only-loadable) + ``<dir>/meta.json``.

Ray Train persists each reported checkpoint as ``<trial dir>/ray/<attempt>/epoch_NNN``; the
newest epoch across attempts is what ``--resume`` picks up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def write_checkpoint(directory: Path, state: dict[str, Any], epoch: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / STATE_FILE)
    size = (directory / STATE_FILE).stat().st_size
    (directory / META_FILE).write_text(json.dumps({"epoch": epoch, "state_bytes": size}))
    return directory


def read_checkpoint(directory: Path | str) -> dict[str, Any]:
    """Load a checkpoint's state with ``weights_only=True`` (no arbitrary unpickling)."""
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)


def checkpoint_epoch(directory: Path) -> int:
    """The epoch a checkpoint holds, or -1 when it is unreadable or incomplete.

    A worker killed while Ray copies a checkpoint into storage can leave ``meta.json`` next to
    a truncated ``state.pt``; the recorded size tells the two apart.
    """
    try:
        meta = json.loads((directory / META_FILE).read_text())
        if (directory / STATE_FILE).stat().st_size != int(meta["state_bytes"]):
            return -1
        return int(meta["epoch"])
    except (OSError, ValueError, KeyError):
        return -1


def latest_checkpoint(trial_dir: Path) -> Path | None:
    """The complete checkpoint with the highest epoch under ``trial_dir/ray`` (None if none)."""
    metas = (trial_dir / "ray").glob(f"*/*/{META_FILE}")
    epochs = {meta.parent: checkpoint_epoch(meta.parent) for meta in metas}
    complete = {directory: epoch for directory, epoch in epochs.items() if epoch >= 0}
    if not complete:
        return None
    return max(complete, key=lambda d: (complete[d], d.stat().st_mtime))
