"""What a checkpoint holds besides the model and the method: every RNG a trial draws from.

Where checkpoints go on disk (their files, the newest complete one, retention) is
``state.trial``'s business.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


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
