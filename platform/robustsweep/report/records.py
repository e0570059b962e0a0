"""Trial records for reports: from a sweep dir, a plain dir of results records, or MLflow.

The sweep dir is the primary source (RobustBench-style: results as data), so a report can be
built when MLflow is unreachable; from a parent run id the same records come from MLflow
through ``tracking`` (each finished run's results record artifact when it can be read). Every source only gathers
``TrialSource``s; ``trial_record`` turns them into ``TrialRecord``s the one same way, so the
report of a sweep reads the same whichever way it is asked for.
"""

from __future__ import annotations

import ast
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustsweep import tracking
from robustsweep.errors import ConfigError
from robustsweep.report.stats import complete_intervals
from robustsweep.state import manifest as mf
from robustsweep.state.files import read_json
from robustsweep.state.trial import RESULTS_FILE, TrialDir
from robustsweep.tracking import (
    KNOBS_TAG,
    OBJECTIVES_TAG,
    RANK_MIN_TAG,
    RANK_TAG,
    SWEEP_DIR_TAG,
    report_settings,
)

TRAIN_PREFIX = "train."
# Bookkeeping that Tune results carry but MLflow and results record do not: never a metric.
_NOT_METRICS = frozenset({"epoch"})
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
    # profile -> {"ids": [...], "outcomes": [...], "profile_hash": ...} (results record only)
    attack_outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # config hash without the seed (results record only): the same setup over several seeds
    setup_hash: str | None = None

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
    sweep_dir: str | None = None

    def mode_of(self, metric: str) -> str:
        return dict(self.objectives).get(metric, "min" if _lower_is_better(metric) else "max")

    def finished(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.finished]


def _lower_is_better(metric: str) -> bool:
    return metric.startswith(("ece", "attack_success_rate", "cost/", "train_loss", "avg_queries"))


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    return tracking.finite_metrics(metrics, skip=_NOT_METRICS)


# --------------------------------------------------------------------------------------------
# One code path from whatever was loaded to a TrialRecord


@dataclass
class TrialSource:
    """What a source knows about one trial, before it becomes a TrialRecord.

    ``results`` (the trial's results record) wins over everything else when present; ``train``
    holds the trial's ``train.*`` settings, of which only the searched ones become knobs.
    """

    trial_id: str
    method: str
    status: str
    results: dict[str, Any] | None = None
    knobs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    run_id: str | None = None
    optuna_trial: int | None = None
    node_id: str | None = None


def canonical_knobs(method: str, knobs: dict[str, Any]) -> dict[str, Any]:
    """All of a method's knobs, defaults filled and typed by its schema (as a results record has
    them, keys sorted), so a run's params and its results record give the same knobs; as
    given (sorted) when the schema rejects them."""
    from robustsweep.errors import MethodError
    from robustsweep.methods import registry

    try:
        full = registry.validate_knobs(method, knobs).model_dump(mode="json")
    except (MethodError, ValueError, TypeError):
        full = dict(knobs)
    return dict(sorted(full.items()))


def searched_train(knob_space: dict[str, list], method: str) -> list[str]:
    """The ``train.*`` settings the sweep searched for ``method`` (the others are constants)."""
    return [k for k, _ in knob_space.get(method, []) if k.startswith(TRAIN_PREFIX)]


def trial_record(source: TrialSource, knob_space: dict[str, list]) -> TrialRecord:
    """The TrialRecord of a source: results record first, then what the sweep/MLflow recorded."""
    results = source.results
    method = (results or {}).get("method") or source.method
    knobs = canonical_knobs(method, results.get("knobs", {}) if results else source.knobs)
    knobs.update({k: source.train[k] for k in searched_train(knob_space, method)
                  if k in source.train})
    metrics = _finite(results.get("metrics", {}) if results else source.metrics)
    return TrialRecord(
        source.trial_id,
        method,
        mf.FINISHED if results is not None else source.status,
        knobs=knobs,
        metrics=complete_intervals(metrics),
        seed=results.get("seed", source.seed) if results else source.seed,
        run_id=(results or {}).get("run_id") or source.run_id,
        optuna_trial=source.optuna_trial,
        node_id=source.node_id,
        attack_outcomes=dict((results or {}).get("attack_outcomes") or {}),
        setup_hash=(results or {}).get("setup_hash"),
    )


def trial_records(sources: list[TrialSource], knob_space: dict[str, list]) -> list[TrialRecord]:
    """TrialRecords in one order for every source: Optuna number, then trial id."""
    ordered = sorted(sources, key=lambda s: (s.optuna_trial is None, s.optuna_trial or 0,
                                             s.trial_id))
    return [trial_record(s, knob_space) for s in ordered]


# --------------------------------------------------------------------------------------------
# From a sweep directory


def _dir_source(trial_id: str, entry: dict[str, Any], trial: TrialDir) -> TrialSource:
    """A manifest entry plus the trial's results and trial records (the job it trained)."""
    params = entry.get("params", {})
    trial_json = trial.read_record() or {}
    job = trial_json.get("job") or {}
    return TrialSource(
        trial_id,
        entry.get("method") or (job.get("method") or {}).get("name", "?"),
        entry.get("status", mf.FINISHED),
        results=trial.read_results(),
        knobs=(job.get("method") or {}).get("knobs") or entry.get("knobs", {}),
        metrics=entry.get("metrics", {}),
        train={k: v for k, v in params.items() if k.startswith(TRAIN_PREFIX)},
        seed=entry["seed"] if entry.get("seed") is not None else job.get("seed"),
        run_id=entry.get("run_id") or trial_json.get("mlflow_run_id"),
        optuna_trial=entry.get("optuna_trial"),
        node_id=entry.get("node_id"),
    )


def from_sweep_dir(sweep_dir: Path) -> SweepRecords:
    """Records from the manifest and each trial's results record (authoritative)."""
    manifest = mf.Manifest.load(sweep_dir)
    objectives, rank_by, rank_min = report_settings(manifest.data["job"].get("sweep") or {})
    knob_space = manifest.data.get("knob_space", {})
    sources = [
        _dir_source(trial_id, entry, TrialDir(manifest.trial_dir(trial_id)))
        for trial_id, entry in manifest.trials.items()
    ]
    # Trials Tune lost track of (driver killed before it saved state) still count if they ended.
    for trial_dir in manifest.trial_dirs():
        if trial_dir.name not in manifest.trials:
            source = _dir_source(trial_dir.name, {}, TrialDir(trial_dir))
            if source.results is not None:
                sources.append(source)
    name = manifest.data["job"].get("name", manifest.sweep_dir.name)
    return SweepRecords(
        name,
        trial_records(sources, knob_space),
        objectives,
        rank_by,
        source=str(manifest.sweep_dir),
        parent_run_id=manifest.parent_run_id,
        tracking_uri=manifest.tracking_uri,
        rank_min=rank_min,
        knob_space=knob_space,
        sweep_dir=str(manifest.sweep_dir),
    )


# --------------------------------------------------------------------------------------------
# From a plain directory of results records


def is_results_record(data: dict[str, Any]) -> bool:
    """A results record as finish_trial writes it (not a manifest, trial record or config)."""
    return isinstance(data.get("method"), str) and isinstance(data.get("metrics"), dict) \
        and isinstance(data.get("knobs", {}), dict)


def _record_sources(root: Path, skip: Path | None) -> list[TrialSource]:
    """One source per results record under ``root`` (files ``*.json``, any depth)."""
    sources: list[TrialSource] = []
    seen: set[tuple[Any, ...]] = set()
    for path in sorted(root.rglob("*.json")):
        if skip is not None and skip in path.parents:
            continue
        data = read_json(path)
        if data is None or not is_results_record(data):
            continue
        identity = (data.get("trial_id"), data.get("run_id"), data.get("finished_at"))
        if identity in seen:  # the same record copied twice (records dir + sweep dir)
            continue
        seen.add(identity)
        trial_id = str(data.get("trial_id") or path.relative_to(root).with_suffix(""))
        if any(s.trial_id == trial_id for s in sources):
            trial_id = str(path.relative_to(root).with_suffix(""))
        sources.append(TrialSource(trial_id, data["method"], mf.FINISHED, results=data))
    return sources


def _records_settings(trials: list[TrialRecord]) -> tuple[list[tuple[str, str]], str]:
    """Without a sweep config: clean accuracy and the first robust accuracy, ranked by the
    latter (clean accuracy when no record was attacked)."""
    robust = sorted({k for t in trials for k in t.metrics if k.startswith("robust_accuracy/")})
    objectives = [("clean_accuracy", "max")] + ([(robust[0], "max")] if robust else [])
    return objectives, objectives[-1][0]


def from_records_dir(root: Path, skip: Path | None = None) -> SweepRecords:
    """Records from every results record under ``root`` (e.g. ``results/reproduce_mr``)."""
    sources = _record_sources(root, skip)
    if not sources:
        raise ConfigError(f"{root}: no sweep manifest and no results records (*.json) in it")
    trials = trial_records(sources, {})
    objectives, rank_by = _records_settings(trials)
    return SweepRecords(root.name, trials, objectives, rank_by, source=str(root),
                        sweep_dir=str(root))


# --------------------------------------------------------------------------------------------
# From MLflow


def _param_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _run_status(run: Any) -> str:
    tag = run.data.tags.get("robustsweep.status", "").upper()  # pruned/failed/interrupted/orphaned
    if tag:
        return tag if tag in (mf.PRUNED, mf.FAILED, mf.INTERRUPTED) else mf.INTERRUPTED
    return _RUN_TO_TRIAL.get(run.info.status, mf.RUNNING)


def _run_results(uri: str, run_id: str) -> dict[str, Any] | None:
    """The run's results record artifact (what finish_trial logged), or None."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracking.download_artifact(uri, run_id, RESULTS_FILE, Path(tmp))
        except Exception:  # noqa: BLE001 - unreachable artifact store: fall back to params
            return None
        data = read_json(path) if path is not None else None
    return data if data is not None and is_results_record(data) else None


def _run_source(uri: str, run: Any) -> TrialSource:
    """A child run's tags, params, metrics and results record artifact."""
    tags, params = run.data.tags, run.data.params
    number = tags.get("robustsweep.optuna_trial")
    return TrialSource(
        tags.get("robustsweep.trial_id", run.info.run_id[:8]),
        tags.get("robustsweep.method") or params.get("method.name", "?"),
        _run_status(run),
        results=_run_results(uri, run.info.run_id),
        knobs={k.removeprefix("method.knobs."): _param_value(v)
               for k, v in params.items() if k.startswith("method.knobs.")},
        metrics=dict(run.data.metrics),
        train={k: _param_value(v) for k, v in params.items() if k.startswith(TRAIN_PREFIX)},
        seed=int(params["seed"]) if params.get("seed", "").lstrip("-").isdigit() else None,
        run_id=run.info.run_id,
        optuna_trial=int(number) if number and number.isdigit() else None,
        node_id=tags.get("robustsweep.node_id"),
    )


def from_mlflow(parent_run_id: str, tracking_uri: str) -> SweepRecords:
    """Records from a sweep's MLflow parent run and its nested child runs."""
    try:
        parent = tracking.get_run(tracking_uri, parent_run_id, budget_s=0)
        children = tracking.child_runs(tracking_uri, parent_run_id, budget_s=0)
    except tracking.TrackingError as exc:
        cause = exc.__cause__ or exc
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ConfigError(f"MLflow run {parent_run_id} at {tracking_uri}: {first}") from None
    tags = parent.data.tags
    objectives = [tuple(o) for o in json.loads(tags.get(OBJECTIVES_TAG, "[]"))] or [
        ("clean_accuracy", "max")
    ]
    knob_space = json.loads(tags.get(KNOBS_TAG, "{}"))
    name = tags.get("mlflow.runName", parent_run_id).removesuffix("-sweep")
    return SweepRecords(
        name,
        trial_records([_run_source(tracking_uri, run) for run in children], knob_space),
        objectives,
        tags.get(RANK_TAG) or objectives[0][0],
        source=f"MLflow run {parent_run_id}",
        parent_run_id=parent_run_id,
        tracking_uri=tracking_uri,
        rank_min=json.loads(tags.get(RANK_MIN_TAG, "{}")),
        knob_space=knob_space,
        sweep_dir=tags.get(SWEEP_DIR_TAG),
    )


def load(target: str, tracking_uri: str | None = None, skip: Path | None = None) -> SweepRecords:
    """A sweep dir, a dir of results records, or an MLflow parent run id (with
    ``tracking_uri`` or MLFLOW_TRACKING_URI). ``skip``: a folder of a records dir to ignore."""
    path = Path(target).expanduser()
    if mf.Manifest.exists(path):
        return from_sweep_dir(path.resolve())
    if path.is_dir():
        return from_records_dir(path.resolve(), skip)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError(
            f"{target}: no such sweep dir; for a run id pass --tracking-uri "
            "(or set MLFLOW_TRACKING_URI)"
        )
    return from_mlflow(target, uri)
