"""What one trial leaves on disk, and the only module that spells its layout.

::

    <trial dir>/
      trial.json            the trial record: resolved job, MLflow run id + tracking URI, git SHA
      config.yaml           the job as YAML (also an MLflow artifact)
      results.json          the results record of a finished trial (train/results.py)
      artifacts/            evaluation tables and plots of the trial's final evaluation
      eval/                 what ``robustsweep eval`` adds later (per-example tables resume)
      ray/<attempt>/epoch_NNN/state.pt + meta.json
                            Ray Train checkpoints: one ``attempt_<time>`` per (re)start, the
                            newest ``train.keep_checkpoints`` epochs of each (the final one
                            among them); ``--resume`` picks the
                            complete checkpoint with the highest epoch across attempts

``state.pt`` is a torch state (loaded with ``weights_only=True``); ``meta.json`` holds its
epoch and byte size, so a copy cut short by a killed worker is never taken for a checkpoint.
Every JSON record is written atomically (``state.files.atomic_write_json``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustsweep.errors import ConfigError, ResourceError
from robustsweep.state.files import atomic_write_json, read_json

TRIAL_FILE = "trial.json"
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.yaml"
ARTIFACTS_DIR = "artifacts"
EVAL_DIR = "eval"
CHECKPOINTS_DIR = "ray"
STATE_FILE = "state.pt"
META_FILE = "meta.json"


# ---- one checkpoint directory ------------------------------------------------------------------
def checkpoint_name(epoch: int) -> str:
    """The directory name of the checkpoint taken after ``epoch``."""
    return f"epoch_{epoch:03d}"


def attempt_name() -> str:
    """A new attempt's directory under ``ray/`` (one per start or resume of a trial)."""
    return time.strftime("attempt_%Y%m%d_%H%M%S")


def write_checkpoint(directory: Path, state: dict[str, Any], epoch: int) -> Path:
    """``state.pt`` (torch) + ``meta.json`` (epoch, byte size) in ``directory``."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / STATE_FILE)
    size = (directory / STATE_FILE).stat().st_size
    (directory / META_FILE).write_text(json.dumps({"epoch": epoch, "state_bytes": size}))
    return directory


def read_checkpoint(directory: Path | str) -> dict[str, Any]:
    """Load a checkpoint's state with ``weights_only=True`` (no arbitrary unpickling); a
    checkpoint directory or its ``state.pt``."""
    import torch

    path = Path(directory)
    path = path if path.name == STATE_FILE and path.is_file() else path / STATE_FILE
    return torch.load(path, map_location="cpu", weights_only=True)


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
    """``TrialDir(trial_dir).latest_checkpoint()``."""
    return TrialDir(trial_dir).latest_checkpoint()


def state_file(directory: Path) -> Path | None:
    """The ``state.pt`` directly in ``directory``, if there is one."""
    path = directory / STATE_FILE
    return path if path.is_file() else None


# ---- one trial directory -----------------------------------------------------------------------
@dataclass(frozen=True)
class TrialDir:
    """A trial's directory: its files, records and checkpoints."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # files
    @property
    def trial_file(self) -> Path:
        return self.path / TRIAL_FILE

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def artifacts_dir(self) -> Path:
        return self.path / ARTIFACTS_DIR

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    @property
    def checkpoints_dir(self) -> Path:
        """Ray Train's storage path for this trial (``ray/<attempt>/epoch_NNN``)."""
        return self.path / CHECKPOINTS_DIR

    # the trial record (trial.json)
    def has_record(self) -> bool:
        return self.trial_file.is_file()

    def read_record(self) -> dict[str, Any] | None:
        """trial.json, or None when it is missing or unreadable."""
        return read_json(self.trial_file)

    def write_record(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.trial_file, record)

    @property
    def run_id(self) -> str | None:
        """The trial's MLflow run (None without tracking or without a record)."""
        return (self.read_record() or {}).get("mlflow_run_id")

    # the results record (results.json)
    @property
    def finished(self) -> bool:
        return self.results_file.is_file()

    def read_results(self) -> dict[str, Any] | None:
        """results.json, or None when the trial has not written it (or it is unreadable)."""
        return read_json(self.results_file) if self.finished else None

    def write_results(self, record: dict[str, Any]) -> Path:
        atomic_write_json(self.results_file, record)
        return self.results_file

    # checkpoints
    def checkpoints(self) -> dict[Path, int]:
        """Every complete checkpoint under ``ray/`` with its epoch."""
        metas = self.checkpoints_dir.glob(f"*/*/{META_FILE}")
        epochs = {meta.parent: checkpoint_epoch(meta.parent) for meta in metas}
        return {directory: epoch for directory, epoch in epochs.items() if epoch >= 0}

    def latest_checkpoint(self) -> Path | None:
        """The complete checkpoint with the highest epoch (newest first on ties); None if none."""
        complete = self.checkpoints()
        if not complete:
            return None
        return max(complete, key=lambda d: (complete[d], d.stat().st_mtime))

    def latest_state_file(self) -> Path:
        """The ``state.pt`` to evaluate: one directly in the trial dir, else the latest complete
        checkpoint's, else the newest ``ray/*/*/state.pt`` by mtime (a checkpoint written
        without meta.json); ResourceError when there is none."""
        direct = state_file(self.path)
        if direct is not None:
            return direct
        newest = self.latest_checkpoint()
        if newest is not None:
            return newest / STATE_FILE
        found = sorted(self.checkpoints_dir.glob(f"*/*/{STATE_FILE}"),
                       key=lambda p: p.stat().st_mtime)
        if not found:
            raise ResourceError(f"{self.path}: no checkpoint "
                                f"(expected {CHECKPOINTS_DIR}/<run>/<checkpoint>/{STATE_FILE})")
        return found[-1]

    def manual_checkpoint_dir(self, epoch: int) -> Path:
        """Where a checkpoint made outside Ray Train goes (tests, benchmarks, hand-made victims)."""
        return self.checkpoints_dir / "manual" / checkpoint_name(epoch)

    # finding a trial
    @classmethod
    def find(cls, path: Path) -> TrialDir:
        """The trial holding ``path``: ``path`` itself or one of its parents (a checkpoint dir)."""
        for candidate in [path, *path.parents]:
            if (candidate / TRIAL_FILE).is_file():
                return cls(candidate)
        raise ConfigError(f"{path}: no {TRIAL_FILE} here or in a parent directory")

    @classmethod
    def find_by_run_id(cls, run_id: str, roots: Iterable[Path]) -> TrialDir:
        """The trial whose record names MLflow run ``run_id`` (searched under ``roots``)."""
        roots = list(roots)
        for root in roots:
            if not root.is_dir():
                continue
            for trial_file in root.rglob(TRIAL_FILE):
                if (read_json(trial_file) or {}).get("mlflow_run_id") == run_id:
                    return cls(trial_file.parent)
        searched = ", ".join(str(r) for r in roots)
        raise ConfigError(f"MLflow run {run_id}: no trial dir with that run id under {searched} "
                          "(pass the trial or checkpoint directory, or --search DIR)")
