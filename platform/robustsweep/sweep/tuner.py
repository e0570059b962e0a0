"""Build, run and restore a sweep's Tuner; own its MLflow parent run and Optuna study.

A sweep is a Ray Tune ``Tuner`` over ``sweep_trial`` (one Ray Train run per trial) with
``SweepSearch`` (Optuna, define-by-run, RDB/journal storage) and optional ASHA. Around Tune:

- the manifest (``sweep.manifest``) records every trial, so resume and reports never depend on
  Tune's experiment state alone;
- one MLflow parent run per sweep; each trial's child run is created by ``run_trial`` and
  closed by the trial or, when the trial's process was killed (pruned, crashed), by the driver;
- after Tune returns, ``reconcile`` closes what a killed driver left open (RUNNING child runs,
  RUNNING Optuna trials) so the MLflow UI and optuna-dashboard agree with the manifest.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustsweep import tracking
from robustsweep.config import JobConfig, SweepConfig, job_to_yaml
from robustsweep.errors import ConfigError
from robustsweep.jobfile import validate_job
from robustsweep.sweep import manifest as mf
from robustsweep.sweep.monitor import SweepMonitor, attach, close_child_run, console
from robustsweep.sweep.params import (
    GridCell,
    TrialSpace,
    grid_cells,
    knob_space,
    resolve_spaces,
)

# Set in the driver before Tune starts (users can override them in their environment).
TUNE_ENV_DEFAULTS = {
    # Epoch reports carry no final-only objectives (robust_accuracy/<attack>); Tune must not
    # reject them. SweepSearch checks the final report instead.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Save Tune's experiment state often: a killed driver then loses little.
    "TUNE_GLOBAL_CHECKPOINT_S": "5",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "60",
    "RAY_AIR_NEW_OUTPUT": "0",
    # Fewer glibc malloc arenas in the many threaded Ray processes a local sweep starts: less
    # resident memory on small machines (set it yourself to override).
    "MALLOC_ARENA_MAX": "2",
}
TUNE_NAME = "tune"


@dataclass
class ResourcePlan:
    """How trials share the cluster."""

    cpus_per_worker: float
    max_concurrent: int
    trial_resources: dict[str, float]


@dataclass
class SweepOutcome:
    sweep_dir: Path
    manifest: mf.Manifest
    complete: bool


# --------------------------------------------------------------------------------------------
# Planning


def sweep_of(cfg: JobConfig) -> SweepConfig:
    if cfg.sweep is None:
        raise ConfigError(
            f"job {cfg.name!r} has no sweep: section (see jobs/quickstart_sweep.yaml)"
        )
    return cfg.sweep


def check_asha(cfg: JobConfig) -> None:
    """ASHA needs an epoch to stop at: grace_period < train.epochs."""
    sweep = sweep_of(cfg)
    if sweep.asha.enabled and sweep.asha.grace_period >= cfg.train.epochs:
        raise ConfigError(
            f"sweep.asha.grace_period ({sweep.asha.grace_period}) must be below "
            f"train.epochs ({cfg.train.epochs}) for ASHA to stop anything"
        )


def plan_resources(cfg: JobConfig, total: int) -> ResourcePlan:
    """CPUs per worker and concurrency = floor(free CPUs / (workers x CPUs per worker)).

    Trial drivers take only ``sweep.trial_resources`` (a custom resource by default), never the
    CPUs their own Train workers wait for (the 2-core deadlock in offline.md).
    """
    import ray

    sweep = sweep_of(cfg)
    cluster, free = ray.cluster_resources(), ray.available_resources()
    for key, amount in sweep.trial_resources.items():
        if cluster.get(key, 0.0) < amount:
            raise ConfigError(
                f"the Ray cluster has no {key!r} resource for trial drivers: start every node with "
                f"--resources='{{\"{key}\": 100}}' or set sweep.trial_resources (e.g. {{CPU: 0.1}})"
            )
    cpw = sweep.cpus_per_trial_worker or cfg.scaling.cpus_per_worker or 1.0
    workers = cfg.scaling.num_workers
    if cluster.get("CPU", 0.0) < cpw * workers:
        raise ConfigError(
            f"a trial needs {workers} x {cpw:g} CPUs but the cluster has "
            f"{cluster.get('CPU', 0.0):g}"
        )
    limits = [math.floor(free.get("CPU", 0.0) / (cpw * workers) + 1e-9)]
    if cfg.scaling.use_gpu:
        if cluster.get("GPU", 0.0) < workers:
            raise ConfigError(
                f"scaling.use_gpu: a trial needs {workers} GPUs but the cluster has "
                f"{cluster.get('GPU', 0.0):g}"
            )
        limits.append(math.floor(free.get("GPU", 0.0) / workers))
    for key, amount in sweep.trial_resources.items():
        limits.append(math.floor(cluster[key] / amount + 1e-9))
    concurrent = sweep.max_concurrent_trials or max(1, min(limits))
    return ResourcePlan(cpw, max(1, min(concurrent, total)), dict(sweep.trial_resources))


def build_scheduler(cfg: JobConfig) -> Any:
    """ASHA on one per-epoch metric (time = epochs), or FIFO.

    ``max_t`` is the last epoch *before* the final one and ``stop_last_trials`` is off, so a
    trial that survives every rung always reaches its final evaluation.
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sweep = sweep_of(cfg)
    if not sweep.asha.enabled:
        return FIFOScheduler()
    check_asha(cfg)
    metric, mode = sweep.asha_metric_mode()
    return ASHAScheduler(
        time_attr="epoch",
        metric=metric,
        mode=mode,
        max_t=cfg.train.epochs - 1,
        grace_period=sweep.asha.grace_period,
        reduction_factor=sweep.asha.reduction_factor,
        stop_last_trials=False,
    )


def _trial_name(trial: Any) -> str:
    config = trial.config
    return f"{config.get('method', 'trial')}-{int(config.get('optuna_trial', 0)):03d}"


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


def build_trainable(context: dict[str, Any], plan: ResourcePlan) -> Any:
    from ray import tune

    from robustsweep.sweep.trainable import sweep_trial

    return tune.with_resources(
        tune.with_parameters(sweep_trial, context=context), plan.trial_resources
    )


def trial_context(cfg: JobConfig, manifest: mf.Manifest, plan: ResourcePlan) -> dict[str, Any]:
    """What every trial needs from the driver (plain data; travels through the object store)."""
    return {
        "job": cfg.model_dump(mode="json"),
        "sweep_dir": str(manifest.sweep_dir),
        "sweep_name": cfg.name,
        "tracking_uri": manifest.tracking_uri,
        "parent_run_id": manifest.parent_run_id,
        "cpus_per_worker": plan.cpus_per_worker,
        "max_failures": sweep_of(cfg).max_failures,
    }


# --------------------------------------------------------------------------------------------
# MLflow parent run and Optuna study


def open_parent_run(
    cfg: JobConfig, sweep_dir: Path, study_name: str, storage: str, knobs: dict[str, list]
) -> str | None:
    """The sweep's MLflow parent run: sweep + base job params, report settings as tags (so a
    report can be built from the run alone), the job YAML as artifact."""
    from robustsweep.report.records import report_tags
    from robustsweep.sweep.search import dashboard_command

    if not cfg.tracking.enabled:
        return None
    uri = cfg.resolved_tracking_uri()
    params = tracking.sweep_params(cfg.model_dump(mode="json"), sweep_of(cfg).total_samples())
    tags = {
        "robustsweep.kind": "sweep",
        "robustsweep.sweep_dir": str(sweep_dir),
        "robustsweep.study": study_name,
        "robustsweep.storage": storage,
        "robustsweep.dashboard": dashboard_command(storage),
        **report_tags(sweep_of(cfg).model_dump(mode="json"), knobs),
    }
    run_id = tracking.start_run(
        uri,
        cfg.tracking.experiment,
        f"{cfg.name}-sweep",
        params=params,
        tags=tags,
        artifact_root=sweep_dir / "mlartifacts",
    )
    tracking.log_artifacts(uri, run_id, [sweep_dir / "sweep.yaml"])
    return run_id


def _study_exists(storage: str, name: str) -> bool:
    import optuna

    from robustsweep.sweep.search import make_storage

    return name in optuna.get_all_study_names(storage=make_storage(storage))


def _set_parent_status(manifest: mf.Manifest, status: str) -> None:
    uri, run_id = manifest.tracking_uri, manifest.parent_run_id
    if not (uri and run_id):
        return
    try:
        if status == "RUNNING":
            tracking.client(uri).update_run(run_id, status="RUNNING")
        else:
            tracking.end_run(uri, run_id, status)
    except Exception as exc:  # noqa: BLE001 - a status update must not lose the sweep
        console.print(f"[yellow]warning:[/] could not set the MLflow parent run to {status}: {exc}")


def reconcile(manifest: mf.Manifest, complete: bool) -> None:
    """Close what the sweep left open: trials not ended, RUNNING child runs, RUNNING Optuna trials.

    Child runs of unfinished trials become KILLED (a resumed trial sets its run back to
    RUNNING). Only a complete sweep fails leftover Optuna trials: in an interrupted one they
    may still be told their result after ``--resume``.
    """
    for trial_id, entry in list(manifest.trials.items()):
        if entry["status"] not in mf.TERMINAL:
            manifest.update_trial(trial_id, status=mf.INTERRUPTED)
            close_child_run(manifest, trial_id, mf.INTERRUPTED)
        elif entry["status"] in (mf.PRUNED, mf.FAILED):
            close_child_run(manifest, trial_id, entry["status"])
    if not complete:
        return
    _close_orphan_runs(manifest)
    _fail_orphan_study_trials(manifest)


def _close_orphan_runs(manifest: mf.Manifest) -> None:
    """Child runs of this sweep still RUNNING though no trial owns them (lost Tune state)."""
    uri, parent = manifest.tracking_uri, manifest.parent_run_id
    if not (uri and parent):
        return
    try:
        mlf = tracking.client(uri)
        experiment = mlf.get_run(parent).info.experiment_id
        runs = mlf.search_runs(
            [experiment], f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'"
        )
        for run in runs:
            tracking.set_tags(uri, run.info.run_id, {"robustsweep.status": "orphaned"})
            tracking.end_run(uri, run.info.run_id, "KILLED")
    except Exception as exc:  # noqa: BLE001
        console.print(f"[yellow]warning:[/] could not check for orphaned MLflow runs: {exc}")


def _fail_orphan_study_trials(manifest: mf.Manifest) -> None:
    import optuna

    from robustsweep.sweep.search import make_storage

    study_info = manifest.data["study"]
    try:
        study = optuna.load_study(
            study_name=study_info["name"], storage=make_storage(study_info["storage"])
        )
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    except Exception as exc:  # noqa: BLE001
        console.print(f"[yellow]warning:[/] could not close leftover Optuna trials: {exc}")


# --------------------------------------------------------------------------------------------
# Start, resume, fit


def prepare_environment() -> None:
    for key, value in TUNE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


# What a sweep writes at the top of its output dir (a dir holding only these is a sweep's).
SWEEP_ENTRIES = frozenset(
    {
        mf.MANIFEST_FILE,
        "sweep.yaml",
        "optuna.db",
        "mlflow.db",
        "mlartifacts",
        "trials",
        "report",
        TUNE_NAME,
    }
)


def _unexpected_entries(sweep_dir: Path) -> list[str]:
    """Entries of ``sweep_dir`` a sweep never writes (our own atomic-write temp files allowed)."""
    return sorted(
        p.name
        for p in sweep_dir.iterdir()
        if p.name not in SWEEP_ENTRIES
        and not mf.is_temp_file(p.name)
        and not re.fullmatch(rf"{TUNE_NAME}-\d+", p.name)  # resumed without Tune state
    )


def _clear(sweep_dir: Path, overwrite: bool) -> None:
    """Refuse to start over an earlier sweep unless ``overwrite``; never delete other files.

    ``--overwrite`` deletes only what a sweep of ours wrote: the directory must hold a manifest
    that parses as robustsweep's own, and nothing but the entries a sweep creates. Anything else
    (a stray file, a lookalike ``manifest.json``) is refused, so a mistyped ``output_dir`` can
    never cost a user their files.
    """
    if not sweep_dir.is_dir() or not any(sweep_dir.iterdir()):
        return
    unexpected = _unexpected_entries(sweep_dir)
    has_manifest = mf.Manifest.exists(sweep_dir)
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        what = "a sweep" if has_manifest else "no sweep"
        raise ConfigError(
            f"{sweep_dir} is not empty and holds {what} plus files a sweep never writes "
            f"({shown}); choose another output_dir (nothing was deleted)"
        )
    if not overwrite:
        hint = (
            f"continue it with `robustsweep sweep --resume {sweep_dir}`, or "
            if has_manifest
            else ""
        )
        raise ConfigError(
            f"{sweep_dir} already holds a sweep: {hint}pass --overwrite to start over"
        )
    if not has_manifest:
        raise ConfigError(
            f"{sweep_dir} holds sweep-like files but no robustsweep manifest, so robustsweep "
            "cannot tell they are its own; delete them yourself or choose another output_dir"
        )
    mf.Manifest.load(sweep_dir)  # raises one line unless the manifest is ours
    for entry in sweep_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def start_sweep(
    cfg: JobConfig, *, job_file: str | None = None, overwrite: bool = False
) -> SweepOutcome:
    """Start a new sweep in ``cfg``'s output dir."""
    from ray import tune

    from robustsweep.sweep.search import build_searcher, storage_url
    from robustsweep.train.ray_trainer import ensure_ray

    sweep = sweep_of(cfg)
    spaces = resolve_spaces(sweep)
    check_asha(cfg)
    sweep_dir = cfg.resolved_output_dir()
    _clear(sweep_dir, overwrite)
    grid, records_dir = _pending_grid(cfg)
    total = len(grid) if grid is not None else sweep.total_samples()
    if total == 0:
        raise ConfigError(
            f"every cell of grid sweep {cfg.name!r} already has a record in {records_dir}; "
            f"nothing to train (build the tables with `robustsweep report {records_dir}`)"
        )
    prepare_environment()
    ensure_ray(cfg.cluster)
    plan = plan_resources(cfg, total)
    study_name = sweep.study_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = storage_url(sweep, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if sweep.storage and _study_exists(storage, study_name):
        raise ConfigError(
            f"Optuna study {study_name!r} already exists in {storage}; "
            "set sweep.study_name or resume its sweep"
        )
    (sweep_dir / "sweep.yaml").write_text(job_to_yaml(cfg))
    knobs = knob_space(spaces, _train_space(sweep))
    parent = open_parent_run(cfg, sweep_dir, study_name, storage, knobs)
    manifest = mf.Manifest.create(
        sweep_dir,
        job=cfg.model_dump(mode="json"),
        job_file=job_file,
        num_samples=total,
        study_name=study_name,
        storage=storage,
        tracking_uri=cfg.resolved_tracking_uri() if cfg.tracking.enabled else None,
        experiment=cfg.tracking.experiment,
        parent_run_id=parent,
        knob_space=knobs,
        records_dir=str(records_dir) if records_dir else None,
    )
    searcher = build_searcher(
        sweep,
        space=TrialSpace(
            spaces,
            _train_space(sweep),
            balanced=sweep.num_samples_per_method is not None,
            seeds=sweep.seeds,
            base_seed=cfg.seed,
            grid=grid,
        ),
        seed=sweep.seed if sweep.seed is not None else cfg.seed,
        study_name=study_name,
        storage=storage,
    )
    tuner = tune.Tuner(
        build_trainable(trial_context(cfg, manifest, plan), plan),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=build_scheduler(cfg),
            num_samples=total,
            max_concurrent_trials=plan.max_concurrent,
            reuse_actors=False,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=_run_config(cfg, manifest, TUNE_NAME),
    )
    _announce(cfg, manifest, plan, total)
    return _fit(tuner, manifest)


def resume_sweep(
    sweep_dir: Path, *, address: str | None = None, retry_failed: bool = False
) -> SweepOutcome:
    """Finish a sweep whose driver stopped: finished trials are not re-run; interrupted trials
    continue from their checkpoints inside their own MLflow child runs."""
    from ray import tune

    from robustsweep.train.ray_trainer import ensure_ray

    sweep_dir = Path(sweep_dir).expanduser().resolve()
    manifest = mf.Manifest.load(sweep_dir)
    raw = manifest.data["job"]
    if address:
        raw = {**raw, "cluster": {**raw["cluster"], "address": address}}
    cfg = validate_job(raw, origin=str(mf.Manifest.path_in(sweep_dir)))
    failed = manifest.counts().get(mf.FAILED, 0)
    if manifest.remaining() == 0 and not (retry_failed and failed):
        console.print(f"sweep {sweep_dir} is already complete")
        manifest.update(status=mf.FINISHED)
        return SweepOutcome(sweep_dir, manifest, True)
    for trial_id in manifest.mark_interrupted():
        close_child_run(manifest, trial_id, mf.INTERRUPTED)
    if retry_failed:
        for trial_id, entry in manifest.trials.items():
            if entry["status"] == mf.FAILED:
                manifest.update_trial(trial_id, status=mf.INTERRUPTED)
    _set_parent_status(manifest, "RUNNING")
    prepare_environment()
    ensure_ray(cfg.cluster)
    plan = plan_resources(cfg, manifest.remaining())
    trainable = build_trainable(trial_context(cfg, manifest, plan), plan)
    attach(manifest)
    if tune.Tuner.can_restore(str(manifest.tune_dir)):
        console.print(
            f"[bold]Resuming[/] {sweep_dir} from Tune's experiment state "
            f"({len(manifest.terminal())}/{manifest.data['num_samples']} trials done)"
        )
        tuner = tune.Tuner.restore(
            str(manifest.tune_dir),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=retry_failed,
        )
    else:
        tuner = _continue_without_tune_state(cfg, manifest, plan, trainable)
    return _fit(tuner, manifest)


def _continue_without_tune_state(
    cfg: JobConfig, manifest: mf.Manifest, plan: ResourcePlan, trainable: Any
) -> Any:
    """Tune saved no state before the driver died: run the remaining budget on the same study
    (Optuna keeps every told result), in a fresh Tune experiment dir."""
    from ray import tune

    from robustsweep.sweep.search import build_searcher

    sweep = sweep_of(cfg)
    name = f"{TUNE_NAME}-{len(manifest.data['resumes'])}"
    manifest.update(tune_dir=name)
    study = manifest.data["study"]
    console.print(
        f"[bold]Resuming[/] {manifest.sweep_dir} without Tune state: "
        f"{manifest.remaining()} trials left on study {study['name']!r}"
    )
    _fail_orphan_study_trials(manifest)
    searcher = build_searcher(
        sweep,
        space=TrialSpace(
            resolve_spaces(sweep),
            _train_space(sweep),
            balanced=sweep.num_samples_per_method is not None,
            seeds=sweep.seeds,
            base_seed=cfg.seed,
            grid=_pending_grid(cfg)[0],
        ),
        seed=(sweep.seed if sweep.seed is not None else cfg.seed) + len(manifest.data["resumes"]),
        study_name=study["name"],
        storage=study["storage"],
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=build_scheduler(cfg),
            num_samples=manifest.remaining(),
            max_concurrent_trials=plan.max_concurrent,
            reuse_actors=False,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=_run_config(cfg, manifest, name),
    )


def _pending_grid(cfg: JobConfig) -> tuple[list[GridCell] | None, Path | None]:
    """A grid sweep's cells still to train (those without a record in ``records_dir``)."""
    from robustsweep.sweep.collect import pending_cells

    sweep = sweep_of(cfg)
    records_dir = Path(sweep.records_dir).expanduser().resolve() if sweep.records_dir else None
    if sweep.mode != "grid":
        return None, records_dir
    cells = grid_cells(sweep, cfg.seed)
    pending = pending_cells(cfg, cells, records_dir)
    if len(pending) < len(cells):
        console.print(
            f"grid: {len(cells) - len(pending)} of {len(cells)} cells already recorded in "
            f"{records_dir}; training the other {len(pending)}"
        )
    return pending, records_dir


def _train_space(sweep: SweepConfig) -> dict[str, Any]:
    from robustsweep.sweep.spaces import KnobDistribution

    return {name: KnobDistribution.model_validate(raw) for name, raw in sweep.train_space.items()}


def _run_config(cfg: JobConfig, manifest: mf.Manifest, name: str) -> Any:
    from ray import tune

    sweep = sweep_of(cfg)
    shown = [o.metric for o in sweep.objectives]
    if sweep.asha.enabled:
        shown.append(sweep.asha_metric_mode()[0])
    monitor = SweepMonitor(
        manifest.sweep_dir,
        list(dict.fromkeys(["train_loss", *shown])),
        sweep.asha_metric_mode()[0] if sweep.asha.enabled else None,
    )
    return tune.RunConfig(
        name=name,
        storage_path=str(manifest.sweep_dir),
        callbacks=[monitor],
        failure_config=tune.FailureConfig(max_failures=0),
        verbose=0,
    )


def _announce(cfg: JobConfig, manifest: mf.Manifest, plan: ResourcePlan, total: int) -> None:
    sweep = sweep_of(cfg)
    objectives = ", ".join(f"{o.mode} {o.metric}" for o in sweep.objectives)
    console.print(
        f"[bold]Sweep[/] {cfg.name}: {total} trials over {', '.join(sweep.methods)}; "
        f"{objectives}; sampler {sweep.sampler}"
        + (f"; ASHA on {sweep.asha_metric_mode()[0]}" if sweep.asha.enabled else "")
    )
    console.print(
        f"  {plan.max_concurrent} trials at once, {cfg.scaling.num_workers} worker(s) x "
        f"{plan.cpus_per_worker:g} CPU each; dir {manifest.sweep_dir}"
    )


def _fit(tuner: Any, manifest: mf.Manifest) -> SweepOutcome:
    attach(manifest)
    interrupted = False
    try:
        tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    except Exception:
        # Tune itself broke: leave everything resumable, mark the parent run failed.
        reconcile(manifest, complete=False)
        manifest.update(status=mf.INTERRUPTED)
        _set_parent_status(manifest, "FAILED")
        raise
    complete = not interrupted and manifest.remaining() == 0
    reconcile(manifest, complete)
    manifest.update(status=mf.FINISHED if complete else mf.INTERRUPTED)
    _set_parent_status(manifest, "FINISHED" if complete else "KILLED")
    if not complete:
        console.print(
            f"[yellow]sweep interrupted[/]: continue with "
            f"`robustsweep sweep --resume {manifest.sweep_dir}`"
        )
    return SweepOutcome(manifest.sweep_dir, manifest, complete)
