"""Rebuild a trained trial from its output dir (``trial.json`` + Ray Train checkpoints).

Layout written by the trial runner: ``<out>/trial.json`` with ``job`` (the resolved JobConfig),
``mlflow_run_id`` and ``tracking_uri``; checkpoints at ``<out>/ray/<attempt>/epoch_NNN/state.pt``
(+ ``meta.json``, see ``train/checkpoints.py``) holding ``model`` (classifier state_dict) and
``method`` (method.state_dict()).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robustsweep.config import JobConfig
from robustsweep.data import Task
from robustsweep.errors import ConfigError, ResourceError
from robustsweep.methods.base import RobustMethod

TRIAL_FILE = "trial.json"
STATE_FILE = "state.pt"


@dataclass
class LoadedTrial:
    cfg: JobConfig
    task: Task
    method: RobustMethod
    trial_dir: Path
    checkpoint: Path
    info: dict[str, Any]

    @property
    def run_id(self) -> str | None:
        return self.info.get("mlflow_run_id")

    @property
    def tracking_uri(self) -> str:
        return self.info.get("tracking_uri") or self.cfg.resolved_tracking_uri()


def find_trial_dir(path: Path) -> Path:
    """The dir holding trial.json: ``path`` itself or one of its parents (a checkpoint dir)."""
    for candidate in [path, *path.parents]:
        if (candidate / TRIAL_FILE).is_file():
            return candidate
    raise ConfigError(f"{path}: no {TRIAL_FILE} here or in a parent directory")


def find_by_run_id(run_id: str, roots: list[Path]) -> Path:
    """The trial dir whose trial.json names ``run_id`` (searched under ``roots``)."""
    for root in roots:
        if not root.is_dir():
            continue
        for trial_file in root.rglob(TRIAL_FILE):
            try:
                if json.loads(trial_file.read_text()).get("mlflow_run_id") == run_id:
                    return trial_file.parent
            except (OSError, json.JSONDecodeError):
                continue
    searched = ", ".join(str(r) for r in roots)
    raise ConfigError(f"MLflow run {run_id}: no trial dir with that run id under {searched} "
                      "(pass the trial or checkpoint directory, or --search DIR)")


def latest_checkpoint(trial_dir: Path) -> Path:
    """The newest checkpoint's state.pt: by epoch (the runner's ``ray/<attempt>/epoch_NNN`` with
    meta.json), else by mtime under ``ray/*/*``; or a state.pt directly in ``trial_dir``."""
    from robustsweep.train import checkpoints

    direct = trial_dir / STATE_FILE
    if direct.is_file():
        return direct
    newest = checkpoints.latest_checkpoint(trial_dir)
    if newest is not None:
        return newest / STATE_FILE
    found = sorted(trial_dir.glob(f"ray/*/*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ResourceError(f"{trial_dir}: no checkpoint (expected ray/<run>/<checkpoint>/{STATE_FILE})")
    return found[-1]


def resolve(ref: str, search: list[Path]) -> tuple[Path, Path]:
    """(trial dir, state.pt) from a trial dir, a checkpoint dir or an MLflow run id."""
    path = Path(ref).expanduser()
    if path.exists():
        trial_dir = find_trial_dir(path.resolve())
        state = path / STATE_FILE if (path / STATE_FILE).is_file() else latest_checkpoint(trial_dir)
        return trial_dir, state
    trial_dir = find_by_run_id(ref, search)
    return trial_dir, latest_checkpoint(trial_dir)


def load_trial(trial_dir: Path, checkpoint: Path, anomaly: bool = True) -> LoadedTrial:
    """Config, data, model and method restored exactly as the trial trained them."""
    from robustsweep.data import load_task
    from robustsweep.methods import build
    from robustsweep.models import load_model

    info = json.loads((trial_dir / TRIAL_FILE).read_text())
    cfg = JobConfig.model_validate(info["job"])
    task = load_task(cfg.data, cfg.eval.anomaly if anomaly else None)
    adapter = load_model(cfg.model, task.num_labels, cfg.data.max_length, cfg.data.lowercase,
                         task.label_names)
    method = build(cfg.method.name, cfg.method.knobs)
    method.setup(adapter, task)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    adapter.core.load_state_dict(state["model"])
    method.load_state_dict(state.get("method", {}))
    return LoadedTrial(cfg, task, method, trial_dir, checkpoint, info)


def write_trial(trial_dir: Path, cfg: JobConfig, method: RobustMethod, run_id: str | None = None,
                tracking_uri: str | None = None) -> Path:
    """Write the runner's layout for a trained method (tests, benchmarks, hand-made victims)."""
    from robustsweep.train import checkpoints

    assert method.adapter is not None
    checkpoint = checkpoints.write_checkpoint(
        trial_dir / "ray" / "manual" / f"epoch_{cfg.train.epochs:03d}",
        {"model": method.adapter.core.state_dict(), "method": method.state_dict()},
        cfg.train.epochs)
    (trial_dir / TRIAL_FILE).write_text(json.dumps(
        {"job": cfg.model_dump(mode="json"), "mlflow_run_id": run_id, "tracking_uri": tracking_uri},
        indent=2))
    return checkpoint / STATE_FILE
