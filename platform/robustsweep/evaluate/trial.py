"""Rebuild a trained trial from its output dir (the trial record + its newest checkpoint).

The layout is ``state.trial``'s: the record holds ``job`` (the resolved JobConfig),
``mlflow_run_id`` and ``tracking_uri``; a checkpoint's state holds ``model``
(``EncoderAdapter.checkpoint_state()``: the whole classifier, or under LoRA the adapter and head
only, the frozen base coming from the model source) and ``method`` (method.state_dict()).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustsweep.config import JobConfig
from robustsweep.data import Task
from robustsweep.methods.base import RobustMethod
from robustsweep.state.trial import (
    STATE_FILE,
    TrialDir,
    read_checkpoint,
    state_file,
    write_checkpoint,
)


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


def resolve(ref: str, search: list[Path]) -> tuple[Path, Path]:
    """(trial dir, state.pt) from a trial dir, a checkpoint dir or an MLflow run id."""
    path = Path(ref).expanduser()
    if path.exists():
        trial = TrialDir.find(path.resolve())
        return trial.path, state_file(path) or trial.latest_state_file()
    trial = TrialDir.find_by_run_id(ref, search)
    return trial.path, trial.latest_state_file()


def load_trial(trial_dir: Path, checkpoint: Path, anomaly: bool = True) -> LoadedTrial:
    """Config, data, model and method restored exactly as the trial trained them.

    The model and method are built the way every trial starts (``train.loop.prepare_trial``)
    on the CPU; unlike a trial, loading leaves the caller's RNGs as they were (no reseed), so
    evaluating a loaded trial draws what it would have drawn without the load.
    """
    from robustsweep.data import load_task
    from robustsweep.train.checkpoints import restore_rng_state, rng_state
    from robustsweep.train.loop import prepare_trial

    info = TrialDir(trial_dir).read_record() or {}
    cfg = JobConfig.model_validate(info.get("job"))
    task = load_task(cfg.data, cfg.eval.anomaly if anomaly else None)
    rngs = rng_state()
    try:
        adapter, method = prepare_trial(cfg, task, "cpu")
    finally:
        restore_rng_state(rngs)
    state = read_checkpoint(checkpoint)
    adapter.load_checkpoint_state(state["model"])
    method.load_state_dict(state.get("method", {}))
    return LoadedTrial(cfg, task, method, trial_dir, checkpoint, info)


def write_trial(trial_dir: Path, cfg: JobConfig, method: RobustMethod, run_id: str | None = None,
                tracking_uri: str | None = None) -> Path:
    """Write the runner's layout for a trained method (tests, benchmarks, hand-made victims)."""
    assert method.adapter is not None
    trial = TrialDir(trial_dir)
    checkpoint = write_checkpoint(
        trial.manual_checkpoint_dir(cfg.train.epochs),
        {"model": method.adapter.checkpoint_state(), "method": method.state_dict()},
        cfg.train.epochs)
    trial.write_record({"job": cfg.model_dump(mode="json"), "mlflow_run_id": run_id,
                        "tracking_uri": tracking_uri})
    return checkpoint / STATE_FILE
