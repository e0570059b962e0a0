"""Driver side of one trial: trial dir, MLflow run, Ray Train fit, status, results.

Used by ``robustsweep train`` and, inside each Tune trial, by the sweep.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustsweep import tracking
from robustsweep.config import JobConfig, flatten, job_to_yaml
from robustsweep.errors import RobustSweepError
from robustsweep.state.trial import TrialDir, attempt_name
from robustsweep.train.ray_trainer import build_trainer, ensure_ray
from robustsweep.train.results import config_hash, git_sha


class TrialFailed(RobustSweepError):
    """The Ray Train run of a trial failed (the MLflow run is marked FAILED)."""


@dataclass
class TrialResult:
    trial_dir: Path
    run_id: str | None
    tracking_uri: str | None
    metrics: dict[str, float]
    record: dict[str, Any]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip() and "Traceback" not in line:
            return line.strip()[:300]
    return type(exc).__name__


def _root_cause(exc: BaseException) -> BaseException:
    """The user-facing error inside Ray's wrappers (TrainingFailedError -> worker exception)."""
    seen = exc
    for _ in range(10):
        failures = getattr(seen, "worker_failures", None)
        inner = next(iter(failures.values()), None) if failures else None
        inner = inner or getattr(seen, "cause", None) or seen.__cause__
        if inner is None:
            break
        seen = inner
    return seen


def open_trial(cfg: JobConfig, trial_dir: Path, *, resume: bool, parent_run_id: str | None,
               run_name: str, tags: dict[str, str] | None) -> dict[str, Any]:
    """Create (or, on resume, reload) the trial record and its MLflow run."""
    trial = TrialDir(trial_dir)
    if resume and trial.has_record():
        record = trial.read_record()
        if record is None:
            raise RobustSweepError(f"{trial.trial_file}: unreadable trial record")
        return record
    uri = cfg.resolved_tracking_uri() if cfg.tracking.enabled else None
    run_id = None
    if uri:
        params = flatten(cfg.model_dump(mode="json", exclude={"sweep", "tracking", "cluster"}))
        run_id = tracking.start_run(
            uri, cfg.tracking.experiment, run_name, params=params,
            tags={"robustsweep.method": cfg.method.name, "robustsweep.config_hash": config_hash(cfg),
                  **(tags or {})},
            parent_run_id=parent_run_id, artifact_root=cfg.resolved_output_dir() / "mlartifacts",
        )
        config_file = trial.config_file
        trial_dir.mkdir(parents=True, exist_ok=True)
        config_file.write_text(job_to_yaml(cfg))
        tracking.log_artifacts(uri, run_id, [config_file])
    record = {"job": cfg.model_dump(mode="json"), "mlflow_run_id": run_id, "tracking_uri": uri,
              "git_sha": git_sha(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    trial.write_record(record)
    return record


def run_trial(
    cfg: JobConfig,
    *,
    trial_dir: Path | None = None,
    resume: bool = False,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    callbacks: list[Any] | None = None,
    max_failures: int = 0,
    data_cache: Path | None = None,
) -> TrialResult:
    """Train and evaluate one configuration on Ray Train; returns its final metrics.

    With ``resume=True`` the newest checkpoint under ``trial_dir`` is loaded (model, optimizer,
    scheduler, method state, RNG) and training continues from the next epoch, logging into the
    same MLflow run. ``data_cache`` (a sweep's) lets trials share one loaded copy of the data.
    """
    trial_dir = (trial_dir or cfg.resolved_output_dir()).resolve()
    trial_dir.mkdir(parents=True, exist_ok=True)
    record = open_trial(cfg, trial_dir, resume=resume, parent_run_id=parent_run_id,
                        run_name=run_name or cfg.name, tags=tags)
    uri, run_id = record["tracking_uri"], record["mlflow_run_id"]
    trial = TrialDir(trial_dir)
    resume_path = trial.latest_checkpoint() if resume else None
    payload = {"job": cfg.model_dump(mode="json"), "trial_dir": str(trial_dir),
               "tracking_uri": uri, "run_id": run_id, "git_sha": record.get("git_sha"),
               "trial_id": trial_dir.name,
               "data_cache": str(data_cache) if data_cache is not None else None,
               "resume_path": str(resume_path) if resume_path else None,
               # fault injection for resume tests and chaos drills: fail after this epoch
               "fail_after_epoch": int(os.environ.get("ROBUSTSWEEP_FAIL_AFTER_EPOCH", "0") or 0)}
    ensure_ray(cfg.cluster)
    trainer = build_trainer(cfg, payload, trial.checkpoints_dir, attempt_name(), callbacks,
                            max_failures)
    try:
        trainer.fit()
    except BaseException as exc:
        if uri and run_id:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            try:
                tracking.end_run(uri, run_id, status)
            except tracking.TrackingError:
                pass
        if isinstance(exc, KeyboardInterrupt):
            raise
        cause = _root_cause(exc)
        if isinstance(cause, RobustSweepError):
            raise type(cause)(str(cause)) from None
        raise TrialFailed(f"trial {trial_dir.name} failed: {_first_line(cause)}") from exc
    results = trial.read_results()
    if results is None:
        raise TrialFailed(f"trial {trial_dir.name}: finished without writing "
                          f"{trial.results_file.name}")
    if uri and run_id:
        tracking.end_run(uri, run_id, "FINISHED")
    return TrialResult(trial_dir, run_id, uri, results["metrics"], results)
