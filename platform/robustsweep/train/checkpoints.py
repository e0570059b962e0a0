"""Checkpoint files: ``<dir>/state.pt`` (torch, weights_only-loadable) + ``<dir>/meta.json``.

Ray Train persists each reported checkpoint as ``<trial dir>/ray/<attempt>/epoch_NNN``; the
newest epoch across attempts is what ``--resume`` picks up.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def rng_state() -> dict[str, Any]:
    """Every RNG a trial draws from: torch CPU, CUDA (all devices), NumPy and Python ``random``.

    Stored as tensors, ints, floats and None only, so the checkpoint still loads with
    ``weights_only=True``. Restoring all of them makes a resumed trial draw the same dropout
    masks, perturbations and samples as an uninterrupted one.
    """
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, mt, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python_rng": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64),
                       "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the RNGs ``rng_state`` saved; keys an older checkpoint lacks are left alone."""
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda_rng"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
    if "numpy_rng" in state:
        np_state = state["numpy_rng"]
        keys = np_state["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, np_state["pos"], np_state["has_gauss"],
                             np_state["cached_gaussian"]))
    if "python_rng" in state:
        py_state = state["python_rng"]
        random.setstate((py_state["version"], tuple(py_state["state"].tolist()),
                         py_state["gauss_next"]))


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
