"""What runs inside one Tune trial: the trial's job on Ray Train, resumable by Tune trial id.

The trial directory is the manifest's ``trial_dir(<tune trial id>)``; Tune keeps trial ids
across ``Tuner.restore``, so a restarted trial finds its own trial record (and MLflow child run)
and newest checkpoint there, and a trial that had already written its results is not re-run.
Epoch metrics reach Tune through Train's controller; the final evaluation's metrics are sent
once more from here, marked with ``FINAL_KEY``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from robustsweep.state.trial import TrialDir
from robustsweep.sweep.params import FINAL_KEY, METHOD_KEY, NUMBER_KEY, trial_job
from robustsweep.tracking import finite_metrics

logger = logging.getLogger(__name__)
# The loop marks its last epoch report ``done``; Tune treats ``done`` as "trial finished" and
# would stop the trial before its final evaluation (attacks, results record) ran.
_DROPPED_KEYS = frozenset({"done"})


class EpochReportCallback(TuneReportCallback):
    """TuneReportCallback that forwards rank 0's epoch metrics without the ``done`` flag."""

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        cleaned = [{k: v for k, v in m.items() if k not in _DROPPED_KEYS} for m in metrics]
        super().after_report(run_context, cleaned, checkpoint)


def run_name(params: dict[str, Any]) -> str:
    """MLflow run name of a trial: method and Optuna trial number (as optuna-dashboard shows)."""
    return f"{params[METHOD_KEY]}-{int(params[NUMBER_KEY]):03d}"


def _reopen_run(uri: str | None, trial: TrialDir) -> None:
    """A resumed trial's child run goes back to RUNNING (resume marked it KILLED meanwhile)."""
    from robustsweep import tracking

    run_id = trial.run_id
    if not (uri and run_id):
        return
    try:
        tracking.reopen_run(uri, run_id, drop_tags=["robustsweep.status"],
                            tags={"robustsweep.resumed": "true"})
    except Exception as exc:  # noqa: BLE001 - status cosmetics must not fail a trial
        logger.warning("could not reopen MLflow run %s: %s", run_id, exc)


def sweep_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """The Tune function trainable: train (or resume, or just re-report) one trial."""
    import ray
    import ray.tune

    from robustsweep.config import JobConfig
    from robustsweep.state.manifest import Manifest
    from robustsweep.train.trial import run_trial

    sweep_dir = Path(context["sweep_dir"])
    trial_id = ray.tune.get_context().get_trial_id()
    trial = TrialDir(Manifest.trial_dir_in(sweep_dir, trial_id))
    node_id = ray.get_runtime_context().get_node_id()
    record = trial.read_results()
    if record is None:
        cfg = trial_job(
            JobConfig.model_validate(context["job"]),
            config,
            output_dir=sweep_dir,
            tracking_uri=context["tracking_uri"],
            cpus_per_worker=context["cpus_per_worker"],
        )
        resume = trial.has_record()
        if resume:
            _reopen_run(context["tracking_uri"], trial)
        tags = {
            "robustsweep.trial_id": trial_id,
            "robustsweep.optuna_trial": str(config[NUMBER_KEY]),
            "robustsweep.sweep": context["sweep_name"],
            "robustsweep.kind": "trial",
            "robustsweep.node_id": node_id,
        }
        result = run_trial(
            cfg,
            trial_dir=trial.path,
            resume=resume,
            parent_run_id=context["parent_run_id"],
            run_name=run_name(config),
            tags=tags,
            callbacks=[EpochReportCallback()],
            max_failures=context["max_failures"],
            data_cache=Manifest.data_cache_in(sweep_dir),
        )
        record = result.record
    final = finite_metrics(record.get("metrics", {}))
    final.update({FINAL_KEY: 1.0, "epoch": float(record.get("epochs", 0))})
    ray.tune.report({**final, "node_id": node_id, "run_id": record.get("run_id") or ""})
