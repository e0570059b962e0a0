"""Helpers of the slow sweep tests: tiny sweep jobs, CLI subprocesses and cleanup by PID.

Every process a test starts runs in its own session (``start_new_session``); Ray's processes
inherit it, including the agents that outlive a ``kill -9``'d driver. Cleanup kills exactly the
PIDs of that session, never processes by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "robustsweep"]


def tiny_job(path: Path, output_dir: Path, **sweep: Any) -> Path:
    """A 2-trial sweep on the smoke slice (32 MR sentences, 32 tokens, 1-2 steps per epoch)."""
    job = {
        "name": "sweeptest",
        "output_dir": str(output_dir),
        "data": {
            "source": "builtin:mr",
            "train_size": 32,
            "eval_size": 16,
            "max_length": 32,
            "ood": [{"name": "imdb", "source": "builtin:imdb", "size": 16}],
        },
        "train": {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 1, "eval_batch_size": 16},
        "sweep": {
            "methods": ["vanilla", "pgd"],
            "num_samples_per_method": 1,
            "objectives": [{"metric": "clean_accuracy"}, {"metric": "ood_accuracy/imdb"}],
            "spaces": {"pgd": {"adv_steps": 1}},
            **sweep,
        },
    }
    path.write_text(yaml.safe_dump(job))
    return path


def env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        **extra,
    }


def start(args: list[str], log: Path, **extra_env: str) -> subprocess.Popen:
    """Start a command in its own session, output to ``log``."""
    handle = open(log, "ab")  # noqa: SIM115 - the child writes to it until it exits
    return subprocess.Popen(
        args,
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=env(**extra_env),
        cwd=ROOT,
        start_new_session=True,
    )


def session_pids(sid: int) -> list[int]:
    pids = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.info["pid"]) == sid:
                pids.append(proc.info["pid"])
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return pids


def kill_session(sid: int, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process of session ``sid`` (ours: we created the session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while time.time() < deadline and session_pids(sid):
            time.sleep(0.2)


def wait_for(
    predicate: Callable[[], bool], proc: subprocess.Popen, log: Path, timeout_s: float
) -> None:
    """Poll ``predicate`` until true; fail with the log tail if ``proc`` exits or time runs out."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) early:\n{tail(log)}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s:\n{tail(log)}")


def tail(log: Path, lines: int = 60) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])


def manifest(sweep_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((sweep_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {"trials": {}}
