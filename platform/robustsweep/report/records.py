"""Trial records for reports, from a sweep dir (results.json + manifest) or an MLflow parent run.

The sweep dir is the primary source (RobustBench-style: results as data), so a report can be
built when MLflow is unreachable; from a parent run id the same records come from MlflowClient.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustsweep.errors import ConfigError
from robustsweep.sweep import manifest as mf

# Parent-run tags that carry the report settings (JSON values).
OBJECTIVES_TAG = "robustsweep.objectives"
RANK_TAG = "robustsweep.rank_by"
RANK_MIN_TAG = "robustsweep.rank_min"
KNOBS_TAG = "robustsweep.knob_space"
# MLflow run status -> trial status, when no robustsweep.status tag says more.
_RUN_TO_TRIAL = {
    "FINISHED": mf.FINISHED,
    "FAILED": mf.FAILED,
    "KILLED": mf.INTERRUPTED,
    "RUNNING": mf.RUNNING,
    "SCHEDULED": mf.PENDING,
}


@dataclass
class TrialRecord:
    """One trial as reports see it."""

    trial_id: str
    method: str
    status: str
    knobs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    run_id: str | None = None
    optuna_trial: int | None = None
    node_id: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == mf.FINISHED

    @property
    def label(self) -> str:
        number = f"{self.optuna_trial:03d}" if self.optuna_trial is not None else self.trial_id
        return f"{self.method}-{number}"


@dataclass
class SweepRecords:
    """Every trial of a sweep plus what it optimised."""

    name: str
    trials: list[TrialRecord]
    objectives: list[tuple[str, str]]
    rank_by: str
    source: str
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    rank_min: dict[str, float] = field(default_factory=dict)
    # method -> [[knob, log scale], ...] in search-space order (empty: unknown)
    knob_space: dict[str, list] = field(default_factory=dict)

    def mode_of(self, metric: str) -> str:
        return dict(self.objectives).get(metric, "min" if _lower_is_better(metric) else "max")

    def finished(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.finished]


def _lower_is_better(metric: str) -> bool:
    return metric.startswith(("ece", "attack_success_rate", "cost/", "train_loss", "avg_queries"))


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


# --------------------------------------------------------------------------------------------
# From a sweep directory


def _settings(sweep: dict[str, Any]) -> tuple[list[tuple[str, str]], str, dict[str, float]]:
    """Objectives, ranking metric and ranking floors from a sweep config dict."""
    objectives = [(o["metric"], o.get("mode", "max")) for o in sweep.get("objectives", [])] or [
        ("clean_accuracy", "max")
    ]
    return objectives, sweep.get("rank_by") or objectives[0][0], dict(sweep.get("rank_min") or {})


def report_tags(sweep: dict[str, Any], knob_space: dict[str, list]) -> dict[str, str]:
    """Parent-run tags from which ``from_mlflow`` rebuilds the report settings."""
    objectives, rank_by, rank_min = _settings(sweep)
    return {
        OBJECTIVES_TAG: json.dumps(objectives),
        RANK_TAG: rank_by,
        RANK_MIN_TAG: json.dumps(rank_min),
        KNOBS_TAG: json.dumps(knob_space),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def from_sweep_dir(sweep_dir: Path) -> SweepRecords:
    """Records from ``manifest.json`` and each trial's ``results.json`` (authoritative)."""
    manifest = mf.Manifest.load(sweep_dir)
    objectives, rank_by, rank_min = _settings(manifest.data["job"].get("sweep") or {})
    trials: list[TrialRecord] = []
    seen: set[str] = set()
    for trial_id, entry in manifest.trials.items():
        seen.add(trial_id)
        params = entry.get("params", {})
        train_knobs = {k: v for k, v in params.items() if k.startswith("train.")}
        results = _read_json(manifest.trial_dir(trial_id) / "results.json")
        trial_json = _read_json(manifest.trial_dir(trial_id) / "trial.json") or {}
        run_id = entry.get("run_id") or trial_json.get("mlflow_run_id")
        if results is not None:
            trials.append(
                TrialRecord(
                    trial_id,
                    results.get("method") or entry.get("method", "?"),
                    mf.FINISHED,
                    knobs={**results.get("knobs", {}), **train_knobs},
                    metrics=_finite(results.get("metrics", {})),
                    seed=results.get("seed"),
                    run_id=results.get("run_id") or run_id,
                    optuna_trial=entry.get("optuna_trial"),
                    node_id=entry.get("node_id"),
                )
            )
        else:
            trials.append(
                TrialRecord(
                    trial_id,
                    entry.get("method", "?"),
                    entry["status"],
                    knobs={**entry.get("knobs", {}), **train_knobs},
                    metrics=_finite(entry.get("metrics", {})),
                    seed=entry.get("seed"),
                    run_id=run_id,
                    optuna_trial=entry.get("optuna_trial"),
                    node_id=entry.get("node_id"),
                )
            )
    # Trials Tune lost track of (driver killed before it saved state) still count if they ended.
    for results_file in sorted((manifest.sweep_dir / "trials").glob("*/results.json")):
        trial_id = results_file.parent.name
        results = _read_json(results_file)
        if trial_id in seen or results is None:
            continue
        trials.append(
            TrialRecord(
                trial_id,
                results.get("method", "?"),
                mf.FINISHED,
                knobs=results.get("knobs", {}),
                metrics=_finite(results.get("metrics", {})),
                seed=results.get("seed"),
                run_id=results.get("run_id"),
            )
        )
    name = manifest.data["job"].get("name", manifest.sweep_dir.name)
    return SweepRecords(
        name,
        trials,
        objectives,
        rank_by,
        source=str(manifest.sweep_dir),
        parent_run_id=manifest.parent_run_id,
        tracking_uri=manifest.tracking_uri,
        rank_min=rank_min,
        knob_space=manifest.data.get("knob_space", {}),
    )


# --------------------------------------------------------------------------------------------
# From MLflow


def _param_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def from_mlflow(parent_run_id: str, tracking_uri: str) -> SweepRecords:
    """Records from a sweep's MLflow parent run and its nested child runs."""
    from robustsweep import tracking

    client = tracking.client(tracking_uri)
    try:
        parent = client.get_run(parent_run_id)
        children = client.search_runs(
            [parent.info.experiment_id],
            f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=50000,
        )
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"MLflow run {parent_run_id} at {tracking_uri}: {first}") from None
    tags = parent.data.tags
    objectives = [tuple(o) for o in json.loads(tags.get(OBJECTIVES_TAG, "[]"))] or [
        ("clean_accuracy", "max")
    ]
    trials = []
    for run in children:
        run_tags, params = run.data.tags, run.data.params
        knobs = {
            k.removeprefix("method.knobs."): _param_value(v)
            for k, v in params.items()
            if k.startswith("method.knobs.")
        }
        knobs.update({k: _param_value(v) for k, v in params.items() if k.startswith("train.")})
        tag = run_tags.get("robustsweep.status", "").upper()  # pruned/failed/interrupted/orphaned
        if tag:
            status = tag if tag in (mf.PRUNED, mf.FAILED, mf.INTERRUPTED) else mf.INTERRUPTED
        else:
            status = _RUN_TO_TRIAL.get(run.info.status, mf.RUNNING)
        number = run_tags.get("robustsweep.optuna_trial")
        trials.append(
            TrialRecord(
                run_tags.get("robustsweep.trial_id", run.info.run_id[:8]),
                run_tags.get("robustsweep.method") or params.get("method.name", "?"),
                status,
                knobs=knobs,
                metrics=_finite(dict(run.data.metrics)),
                seed=int(params["seed"]) if "seed" in params else None,
                run_id=run.info.run_id,
                optuna_trial=int(number) if number and number.isdigit() else None,
                node_id=run_tags.get("robustsweep.node_id"),
            )
        )
    trials.sort(
        key=lambda t: (t.optuna_trial if t.optuna_trial is not None else 1 << 30, t.trial_id)
    )
    name = parent.data.tags.get("mlflow.runName", parent_run_id).removesuffix("-sweep")
    return SweepRecords(
        name,
        trials,
        objectives,
        tags.get(RANK_TAG) or objectives[0][0],
        source=f"MLflow run {parent_run_id}",
        parent_run_id=parent_run_id,
        tracking_uri=tracking_uri,
        rank_min=json.loads(tags.get(RANK_MIN_TAG, "{}")),
        knob_space=json.loads(tags.get(KNOBS_TAG, "{}")),
    )


def load(target: str, tracking_uri: str | None = None) -> SweepRecords:
    """A sweep dir, or an MLflow parent run id (with ``tracking_uri`` or MLFLOW_TRACKING_URI)."""
    import os

    path = Path(target).expanduser()
    if path.is_dir():
        return from_sweep_dir(path.resolve())
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError(
            f"{target}: no such sweep dir; for a run id pass --tracking-uri "
            "(or set MLFLOW_TRACKING_URI)"
        )
    return from_mlflow(target, uri)
