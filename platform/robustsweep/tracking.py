"""MLflow helpers: we own run creation (parent/child, stable ids) and log in batches.

Ray's and Optuna's MLflow callbacks give flat runs and lose the tracking URI on workers, so
every process here talks to MLflow through an explicit absolute URI and an explicit run id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from robustsweep.errors import RobustSweepError

T = TypeVar("T")
PARAM_LIMIT = 6000
BATCH_LIMIT = 100
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class TrackingError(RobustSweepError):
    """MLflow could not be reached or refused a write (after retries)."""


def _retry(fn: Callable[[], T], what: str, attempts: int = 4) -> T:
    """Retry transient failures (sqlite 'database is locked', a restarting server)."""
    delay = 0.5
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # MLflow raises many types; re-raised below
            if attempt == attempts - 1:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise TrackingError(f"MLflow {what} failed: {first}") from exc
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def client(uri: str) -> Any:
    import mlflow

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


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log finite numeric metrics in batches (one call per 100 values, not one per value)."""
    import math

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
             if isinstance(v, (int, float)) and math.isfinite(float(v))]
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


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on ``uri`` (bound to localhost)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
