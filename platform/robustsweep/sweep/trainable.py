"""What runs inside one Tune trial: the trial's job on Ray Train, resumable by Tune trial id.

The trial directory is ``<sweep dir>/trials/<tune trial id>``; Tune keeps trial ids across
``Tuner.restore``, so a restarted trial finds its own ``trial.json`` (and MLflow child run) and
newest checkpoint there, and a trial that had already written ``results.json`` is not re-run.
Epoch metrics reach Tune through Train's controller; the final evaluation's metrics are sent
once more from here, marked with ``FINAL_KEY``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from robustsweep.sweep.params import FINAL_KEY, METHOD_KEY, NUMBER_KEY, trial_job

logger = logging.getLogger(__name__)
# The loop marks its last epoch report ``done``; Tune treats ``done`` as "trial finished" and
# would stop the trial before its final evaluation (attacks, results.json) ran.
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


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def _reopen_run(uri: str | None, trial_dir: Path) -> None:
    """A resumed trial's child run goes back to RUNNING (resume marked it KILLED meanwhile)."""
    import json

    from robustsweep import tracking

    record_file = trial_dir / "trial.json"
    run_id = (
        json.loads(record_file.read_text()).get("mlflow_run_id") if record_file.is_file() else None
    )
    if not (uri and run_id):
        return
    try:
        mlf = tracking.client(uri)
        run = mlf.get_run(run_id)
        if run.info.status != "RUNNING":
            mlf.update_run(run_id, status="RUNNING")
        if "robustsweep.status" in run.data.tags:
            mlf.delete_tag(run_id, "robustsweep.status")
        tracking.set_tags(uri, run_id, {"robustsweep.resumed": "true"})
    except Exception as exc:  # noqa: BLE001 - status cosmetics must not fail a trial
        logger.warning("could not reopen MLflow run %s: %s", run_id, exc)


def sweep_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """The Tune function trainable: train (or resume, or just re-report) one trial."""
    import ray
    import ray.tune

    from robustsweep.config import JobConfig
    from robustsweep.train.results import read_results
    from robustsweep.train.trial import TRIAL_FILE, run_trial

    sweep_dir = Path(context["sweep_dir"])
    trial_id = ray.tune.get_context().get_trial_id()
    trial_dir = sweep_dir / "trials" / trial_id
    node_id = ray.get_runtime_context().get_node_id()
    record = read_results(trial_dir)
    if record is None:
        cfg = trial_job(
            JobConfig.model_validate(context["job"]),
            config,
            output_dir=sweep_dir,
            tracking_uri=context["tracking_uri"],
            cpus_per_worker=context["cpus_per_worker"],
        )
        resume = (trial_dir / TRIAL_FILE).is_file()
        if resume:
            _reopen_run(context["tracking_uri"], trial_dir)
        tags = {
            "robustsweep.trial_id": trial_id,
            "robustsweep.optuna_trial": str(config[NUMBER_KEY]),
            "robustsweep.sweep": context["sweep_name"],
            "robustsweep.kind": "trial",
            "robustsweep.node_id": node_id,
        }
        result = run_trial(
            cfg,
            trial_dir=trial_dir,
            resume=resume,
            parent_run_id=context["parent_run_id"],
            run_name=run_name(config),
            tags=tags,
            callbacks=[EpochReportCallback()],
            max_failures=context["max_failures"],
        )
        record = result.record
    final = _numeric(record.get("metrics", {}))
    final.update({FINAL_KEY: 1.0, "epoch": float(record.get("epochs", 0))})
    ray.tune.report({**final, "node_id": node_id, "run_id": record.get("run_id") or ""})
