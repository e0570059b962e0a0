"""MLflow helpers: we own run creation (parent/child, stable ids) and log in batches.

Ray's and Optuna's MLflow callbacks give flat runs and lose the tracking URI on workers, so
every process here talks to MLflow through an explicit absolute URI and an explicit run id.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from robustsweep.errors import RobustSweepError

T = TypeVar("T")
PARAM_LIMIT = 6000
BATCH_LIMIT = 100
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class TrackingError(RobustSweepError):
    """MLflow could not be reached or refused a write (after retries)."""


# How long one MLflow write may keep failing before the trial fails (seconds). Long enough to
# ride out a server restart (the fault test holds one down for ~150 s), short enough that a
# server that stays down fails the trial in minutes, not the ~16 that MLflow's own defaults
# (7 HTTP retries with back-off to 120 s) times our attempts used to take.
RETRY_BUDGET_ENV = "ROBUSTSWEEP_MLFLOW_RETRY_S"
DEFAULT_RETRY_BUDGET_S = 300.0
# MLflow's per-request retries, bounded so that each of our attempts returns within ~15 s
# (back-off 2 + 4 + 8 s) and our budget above is what decides; the user's environment wins.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
MAX_RETRY_DELAY_S = 15.0


def retry_budget_s() -> float:
    """The total retry time for one MLflow call (``ROBUSTSWEEP_MLFLOW_RETRY_S`` overrides)."""
    raw = os.environ.get(RETRY_BUDGET_ENV, "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_RETRY_BUDGET_S
    except ValueError:
        return DEFAULT_RETRY_BUDGET_S


def _retry(fn: Callable[[], T], what: str, budget_s: float | None = None) -> T:
    """Retry transient failures (sqlite 'database is locked', a restarting server) with
    exponential back-off until ``budget_s`` (default ``retry_budget_s()``) has passed."""
    budget = retry_budget_s() if budget_s is None else budget_s
    deadline = time.monotonic() + budget
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as exc:  # MLflow raises many types; re-raised below
            left = deadline - time.monotonic()
            if left <= 0:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise TrackingError(
                    f"MLflow {what} failed (gave up after {budget:.0f} s of retries): {first}"
                ) from exc
            time.sleep(min(delay, left))
            delay = min(delay * 2, MAX_RETRY_DELAY_S)


def client(uri: str) -> Any:
    import mlflow

    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return mlflow.MlflowClient(tracking_uri=uri)


def is_local_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:///")


def ensure_experiment(uri: str, name: str, artifact_root: Path | None = None) -> str:
    """Experiment id for ``name``, created if missing (artifacts next to a local sqlite store)."""
    mlf = client(uri)

    def get_or_create() -> str:
        found = mlf.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if artifact_root is not None and is_local_sqlite(uri):
            location = artifact_root.resolve().as_uri()
        try:
            # MLflow 3 opens GenAI pages for untagged experiments; ours are training runs.
            return mlf.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except Exception:  # a concurrent creator won the race (re-raised if not)
            found = mlf.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    return _retry(get_or_create, f"experiment {name!r}")


def start_run(
    uri: str,
    experiment: str,
    run_name: str,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    artifact_root: Path | None = None,
) -> str:
    """Create a run (child of ``parent_run_id`` when given) and log its params; returns run id."""
    from mlflow.entities import Param

    experiment_id = ensure_experiment(uri, experiment, artifact_root)
    all_tags = {"mlflow.runName": run_name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    mlf = client(uri)
    run = _retry(lambda: mlf.create_run(experiment_id, tags=all_tags, run_name=run_name), "create_run")
    run_id = run.info.run_id
    items = [Param(k, str(v)[:PARAM_LIMIT]) for k, v in (params or {}).items()]
    for start in range(0, len(items), BATCH_LIMIT):
        chunk = items[start:start + BATCH_LIMIT]
        _retry(lambda chunk=chunk: mlf.log_batch(run_id, params=chunk), "log params")
    return run_id


def finite_metrics(values: Mapping[str, Any], skip: Iterable[str] = ()) -> dict[str, float]:
    """The finite numbers of ``values`` as floats (no booleans, NaN, inf or other types): what
    MLflow, Tune and reports take as metrics; keys in ``skip`` are left out."""
    import math

    skipped = frozenset(skip)
    return {
        k: float(v)
        for k, v in values.items()
        if k not in skipped and isinstance(v, (int, float)) and not isinstance(v, bool)
        and math.isfinite(float(v))
    }


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log finite numeric metrics in batches (one call per 100 values, not one per value)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, step or 0) for k, v in finite_metrics(metrics).items()]
    mlf = client(uri)
    for start in range(0, len(items), BATCH_LIMIT):
        chunk = items[start:start + BATCH_LIMIT]
        _retry(lambda chunk=chunk: mlf.log_batch(run_id, metrics=chunk), "log metrics")


def set_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, str(v)) for k, v in tags.items()]
    _retry(lambda: client(uri).log_batch(run_id, tags=items), "set tags")


def log_artifacts(uri: str, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
    """Upload files (or directories) to the run's artifacts."""
    mlf = client(uri)
    for path in paths:
        path = Path(path)
        if path.is_dir():
            _retry(lambda p=path: mlf.log_artifacts(run_id, str(p), artifact_path), f"log {path.name}")
        elif path.is_file():
            _retry(lambda p=path: mlf.log_artifact(run_id, str(p), artifact_path), f"log {path.name}")


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Close a run as FINISHED, FAILED or KILLED (failed trials stay visible as failed)."""
    _retry(lambda: client(uri).set_terminated(run_id, status=status), "end run")


def run_status(uri: str, run_id: str) -> str:
    return _retry(lambda: client(uri).get_run(run_id).info.status, "get run")


def reopen_run(uri: str, run_id: str, *, drop_tags: Iterable[str] = (),
               tags: Mapping[str, str] | None = None) -> None:
    """Set a closed run back to RUNNING (a resumed trial or sweep), removing ``drop_tags`` (a
    status tag its closing left) and adding ``tags``."""
    mlf = client(uri)
    run = _retry(lambda: mlf.get_run(run_id), "get run")
    if run.info.status != "RUNNING":
        _retry(lambda: mlf.update_run(run_id, status="RUNNING"), "reopen run")
    for key in drop_tags:
        if key in run.data.tags:
            _retry(lambda key=key: mlf.delete_tag(run_id, key), "delete tag")
    if tags:
        set_tags(uri, run_id, tags)


def get_run(uri: str, run_id: str, budget_s: float | None = None) -> Any:
    """The MLflow run (info, data.params/metrics/tags); ``budget_s=0`` tries once."""
    return _retry(lambda: client(uri).get_run(run_id), f"get run {run_id}", budget_s)


def child_runs(uri: str, parent_run_id: str, *, status: str | None = None,
               budget_s: float | None = None) -> list[Any]:
    """The nested runs of ``parent_run_id`` (only those in ``status`` when given)."""
    mlf = client(uri)
    experiment = get_run(uri, parent_run_id, budget_s).info.experiment_id
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    if status:
        query += f" and attributes.status = '{status}'"
    return _retry(lambda: mlf.search_runs([experiment], query, max_results=50000),
                  "search runs", budget_s)


def close_running_children(uri: str, parent_run_id: str, status_tag: str) -> list[str]:
    """End every RUNNING child run of ``parent_run_id`` as KILLED, tagged
    ``robustsweep.status=<status_tag>``; their ids."""
    closed = []
    for run in child_runs(uri, parent_run_id, status="RUNNING"):
        set_tags(uri, run.info.run_id, {"robustsweep.status": status_tag})
        end_run(uri, run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed


def download_artifact(uri: str, run_id: str, name: str, directory: Path) -> Path | None:
    """The run's top-level artifact ``name`` downloaded into ``directory``; None if the run has
    none (no progress bar: one per download floods a terminal)."""
    import os

    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        mlf = client(uri)
        if name not in {a.path for a in mlf.list_artifacts(run_id)}:
            return None
        return Path(mlf.download_artifacts(run_id, name, str(directory)))
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


# ---- what a user sees on first open -------------------------------------------------------------
UI_HOST, UI_PORT = "127.0.0.1", 5000
# MLflow 3 picks GenAI vs machine-learning pages from this URL parameter (else from the
# browser's last choice, GenAI by default), whatever the experiment's tags say.
WORKFLOW_PARAM = "workflowType=machine_learning"
# The runs page's "saved views" live in experiment tags with this prefix; a link with
# ``viewStateShareKey=<key>`` opens one (columns, sort, filter) without a click.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
METHOD_TAG = "robustsweep.method"
# Run-table columns of a sweep's view, in this order (after the method and the objectives).
VIEW_METRIC_PATTERNS = ("clean_accuracy", "robust_accuracy/", "ece", "ood_accuracy/", "cost/")


def mlflow_executable() -> str:
    """The ``mlflow`` next to this interpreter (the venv's), so the command works unactivated."""
    candidate = Path(sys.executable).parent / "mlflow"
    return str(candidate) if candidate.is_file() else "mlflow"


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on ``uri`` (bound to localhost)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    # One worker: uvicorn's default four import MLflow at once and, on a small busy machine,
    # miss their health checks and get restarted in a loop.
    return (
        f"{mlflow_executable()} ui --backend-store-uri {uri} --host {UI_HOST} --port {UI_PORT}"
        " --workers 1"
    )


def ui_base(uri: str) -> str:
    """The UI's address: the server itself, or the ``mlflow ui`` that ``ui_command`` starts."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return f"http://{UI_HOST}:{UI_PORT}"


def experiment_url(
    uri: str, experiment_id: str, view_key: str | None = None, base: str | None = None
) -> str:
    """The experiment's runs table in machine-learning mode (and a saved view, when given).

    The runs tab is named in the path: MLflow redirects ``#/experiments/<id>`` to it and keeps
    only its own parameters, which would drop the view key.
    """
    query = WORKFLOW_PARAM + (f"&viewStateShareKey={quote(view_key)}" if view_key else "")
    return f"{base or ui_base(uri)}/#/experiments/{experiment_id}/runs?{query}"


def column(kind: str, key: str) -> str:
    """A runs-table column id as the MLflow UI spells it: ``metrics.`clean_accuracy```."""
    return f"{kind}.`{key}`"


def view_metrics(metric_keys: Iterable[str], objectives: Iterable[str]) -> list[str]:
    """The metrics a sweep's runs table shows: objectives first, then the patterns' metrics."""
    keys = sorted(set(metric_keys))
    chosen = [m for m in objectives if m in keys]
    for pattern in VIEW_METRIC_PATTERNS:
        if pattern.endswith("/"):
            chosen += [k for k in keys if k.startswith(pattern)]
        elif pattern in keys:
            chosen.append(pattern)
    return list(dict.fromkeys(chosen))


def view_state(metrics: list[str], *, search_filter: str = "", order_by: str | None = None,
               ascending: bool = False) -> dict[str, Any]:
    """The runs page state a saved view restores (search facets + table UI state)."""
    columns = [column("tags", METHOD_TAG)] + [column("metrics", m) for m in metrics]
    state: dict[str, Any] = {
        "selectedColumns": columns,
        "columnOrder": columns,  # method first, then objectives (else grouped by kind, A-Z)
        "searchFilter": search_filter,
        "orderByAsc": ascending,
        "runsHiddenMode": "SHOW_ALL",
    }
    if order_by:
        state["orderByKey"] = column("metrics", order_by)
    return state


def save_view(uri: str, experiment_id: str, key: str, name: str, state: Mapping[str, Any]) -> None:
    """Store ``state`` as the experiment's saved view ``key`` (the envelope MLflow 3 reads)."""
    import json

    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    _retry(
        lambda: client(uri).set_experiment_tag(
            experiment_id, VIEW_TAG_PREFIX + key, json.dumps(envelope)
        ),
        "save runs view",
    )


def child_metric_keys(uri: str, experiment_id: str, parent_run_id: str) -> set[str]:
    """Every metric name that the child runs of ``parent_run_id`` logged."""
    mlf = client(uri)
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    runs = _retry(lambda: mlf.search_runs([experiment_id], query, max_results=1000), "search runs")
    return {key for run in runs for key in run.data.metrics}


def sweep_view_url(
    uri: str, parent_run_id: str, name: str, objectives: list[str], base: str | None = None
) -> str:
    """Save a view of the sweep's trials (method, objectives, accuracies, ECE, OOD, cost
    columns; best first) and return the link that opens it."""
    experiment_id = _retry(
        lambda: client(uri).get_run(parent_run_id).info.experiment_id, "get parent run"
    )
    metrics = view_metrics(child_metric_keys(uri, experiment_id, parent_run_id), objectives)
    state = view_state(
        metrics,
        search_filter=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        order_by=objectives[0] if objectives else None,
    )
    save_view(uri, experiment_id, parent_run_id, f"{name} trials", state)
    return experiment_url(uri, experiment_id, parent_run_id, base)


def sweep_params(job: Mapping[str, Any], total_trials: int | None = None) -> dict[str, str]:
    """What a sweep's parent run logs as params: the search, not the base job's method knobs."""
    import json

    sweep = job.get("sweep") or {}
    objectives = [f"{o.get('mode', 'max')} {o['metric']}" for o in sweep.get("objectives", [])]
    asha = sweep.get("asha") or {}
    params: dict[str, Any] = {
        "methods": ",".join(sweep.get("methods", [])),
        "objectives": "; ".join(objectives),
        "sampler": sweep.get("sampler"),
        "mode": sweep.get("mode"),
        "num_samples": sweep.get("num_samples"),
        "num_samples_per_method": sweep.get("num_samples_per_method"),
        "total_trials": total_trials,
        "seeds": sweep.get("seeds"),
        "asha": (f"{asha.get('metric') or 'proxy'} grace={asha.get('grace_period')}"
                 if asha.get("enabled") else "off"),
        "data.source": (job.get("data") or {}).get("source"),
        "model.source": (job.get("model") or {}).get("source"),
        "train.epochs": (job.get("train") or {}).get("epochs"),
        "eval.attacks": ",".join((job.get("eval") or {}).get("attacks") or []),
        "seed": job.get("seed"),
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()
            if v not in (None, "", [])}


# ---- a sweep's report settings on its parent run --------------------------------------------------
# Parent-run tags that carry the report settings (JSON values), so a report can be built from
# the parent run alone (``report.records.from_mlflow``).
OBJECTIVES_TAG = "robustsweep.objectives"
RANK_TAG = "robustsweep.rank_by"
RANK_MIN_TAG = "robustsweep.rank_min"
KNOBS_TAG = "robustsweep.knob_space"
SWEEP_DIR_TAG = "robustsweep.sweep_dir"


def report_settings(sweep: Mapping[str, Any]) -> tuple[list[tuple[str, str]], str, dict[str, float]]:
    """Objectives, ranking metric and ranking floors from a sweep config dict."""
    objectives = [(o["metric"], o.get("mode", "max")) for o in sweep.get("objectives", [])] or [
        ("clean_accuracy", "max")
    ]
    return objectives, sweep.get("rank_by") or objectives[0][0], dict(sweep.get("rank_min") or {})


def report_tags(sweep: Mapping[str, Any], knob_space: Mapping[str, list]) -> dict[str, str]:
    """Parent-run tags from which a report rebuilds its settings."""
    import json

    objectives, rank_by, rank_min = report_settings(sweep)
    return {
        OBJECTIVES_TAG: json.dumps(objectives),
        RANK_TAG: rank_by,
        RANK_MIN_TAG: json.dumps(rank_min),
        KNOBS_TAG: json.dumps(knob_space),
    }
