"""Phase timer for ``benchmarks/trial_overhead.py``: loaded by every Python process of a run.

``trial_overhead.py`` puts this folder first on PYTHONPATH and sets TRIAL_TIMING_LOG, so the
CLI process, Tune's trial drivers, Train's controller and Train workers all append one JSON line
per timed call (pid, name, start, end; wall-clock seconds) to that log. It wraps robustsweep's
own functions from outside, so the same timings come from the code before and after a change.
Without TRIAL_TIMING_LOG it does nothing.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

LOG = os.environ.get("TRIAL_TIMING_LOG")
STARTED = time.time()
# module -> functions to time ("Class.method" allowed); the module's own import is timed too.
TIMED: dict[str, tuple[str, ...]] = {
    "robustsweep.train.trial": ("run_trial", "open_trial"),
    "robustsweep.train.ray_trainer": ("train_worker", "build_trainer", "ensure_ray"),
    "robustsweep.train.loop": ("prepare_trial", "fit"),
    "robustsweep.train.results": ("finish_trial",),
    "robustsweep.data": ("load_task",),
    "robustsweep.task_cache": ("cached_task",),
    "robustsweep.evaluate.suite": ("clean_metrics", "final_metrics"),
    "robustsweep.tracking": ("start_run", "log_artifacts", "log_metrics", "set_tags", "end_run",
                             "reopen_run"),
    "robustsweep.sweep.trainable": ("sweep_trial",),
    "robustsweep.sweep.tuner": ("_fit",),
}


def record(name: str, start: float, end: float) -> None:
    """Append one event; a single short O_APPEND write, so processes never interleave lines."""
    if not LOG:
        return
    line = json.dumps({"pid": os.getpid(), "name": name, "t0": start, "t1": end}) + "\n"
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(fn, "__trial_timed__", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if getattr(fn, "__trial_timed__", False):  # unpickled by value in a process that timed it
            return fn(*args, **kwargs)
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            record(name, start, time.time())

    wrapper.__trial_timed__ = True  # type: ignore[attr-defined]
    return wrapper


class _TimingFinder(importlib.abc.MetaPathFinder):
    """Wraps the TIMED functions of a module right after it is executed."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if name not in TIMED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            start = time.time()
            original(module)
            record(f"import:{name}", start, time.time())
            for attr in TIMED[name]:
                owner_name, _, method = attr.rpartition(".")
                owner = getattr(module, owner_name) if owner_name else module
                target_name = method or attr
                if hasattr(owner, target_name):
                    setattr(owner, target_name, timed(f"{name.rsplit('.', 1)[-1]}.{attr}",
                                                       getattr(owner, target_name)))

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if LOG:
    record("process", STARTED, STARTED)
    sys.meta_path.insert(0, _TimingFinder())
