"""Start, resume and run a sweep: a Ray Tune ``Tuner`` over ``sweep_trial`` (one Ray Train run
per trial) with ``SweepSearch`` (Optuna, define-by-run, RDB/journal storage) and optional ASHA.

Around Tune, the manifest (``state.manifest``) records every trial, so resume and reports never
depend on Tune's experiment state alone; ``plan`` sizes the trials, ``lifecycle`` owns the
MLflow parent run, the Optuna study, reconciling and clearing the output dir.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustsweep.config import JobConfig, SweepConfig, job_to_yaml
from robustsweep.errors import ConfigError
from robustsweep.jobfile import validate_job
from robustsweep.state import manifest as mf
from robustsweep.sweep.lifecycle import (
    clear_output_dir,
    fail_orphan_study_trials,
    open_parent_run,
    reconcile,
    set_parent_status,
    study_exists,
)
from robustsweep.sweep.monitor import SweepMonitor, attach, close_child_run, console
from robustsweep.sweep.params import (
    GridCell,
    TrialSpace,
    grid_cells,
    knob_space,
    resolve_spaces,
)
from robustsweep.sweep.plan import (
    ResourcePlan,
    build_scheduler,
    check_asha,
    plan_resources,
    sweep_of,
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


@dataclass
class SweepOutcome:
    sweep_dir: Path
    manifest: mf.Manifest
    complete: bool


# --------------------------------------------------------------------------------------------
# The trainable and the Tuner


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


def build_tuner(cfg: JobConfig, manifest: mf.Manifest, plan: ResourcePlan, trainable: Any,
                grid: list[GridCell] | None, seed_offset: int = 0) -> Any:
    """The Tuner of a new run of the sweep: its Optuna searcher on the manifest's study, the
    scheduler, the manifest's remaining budget, Tune's experiment in the manifest's tune dir."""
    from ray import tune

    from robustsweep.sweep.search import build_searcher

    sweep = sweep_of(cfg)
    study = manifest.data["study"]
    searcher = build_searcher(
        sweep,
        space=TrialSpace(
            resolve_spaces(sweep),
            _train_space(sweep),
            balanced=sweep.num_samples_per_method is not None,
            seeds=sweep.seeds,
            base_seed=cfg.seed,
            grid=grid,
        ),
        seed=(sweep.seed if sweep.seed is not None else cfg.seed) + seed_offset,
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
            # One trial-driver process for the whole sweep: each new trial skips a process
            # start, importing robustsweep/torch/mlflow and opening the MLflow store (~5-10 s on
            # 2 cores). Function trainables reset cleanly (Tune waits for the old thread); the
            # trial's state lives in its trial dir and Ray Train, not in the driver process.
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=_run_config(cfg, manifest, manifest.data["tune_dir"]),
    )


# --------------------------------------------------------------------------------------------
# Start, resume, fit


def prepare_environment() -> None:
    for key, value in TUNE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def start_sweep(
    cfg: JobConfig, *, job_file: str | None = None, overwrite: bool = False
) -> SweepOutcome:
    """Start a new sweep in ``cfg``'s output dir."""
    from robustsweep.sweep.search import storage_url
    from robustsweep.train.ray_trainer import ensure_ray

    sweep = sweep_of(cfg)
    spaces = resolve_spaces(sweep)
    check_asha(cfg)
    sweep_dir = cfg.resolved_output_dir()
    clear_output_dir(sweep_dir, overwrite)
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
    if sweep.storage and study_exists(storage, study_name):
        raise ConfigError(
            f"Optuna study {study_name!r} already exists in {storage}; "
            "set sweep.study_name or resume its sweep"
        )
    (sweep_dir / mf.SWEEP_JOB_FILE).write_text(job_to_yaml(cfg))
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
    trainable = build_trainable(trial_context(cfg, manifest, plan), plan)
    tuner = build_tuner(cfg, manifest, plan, trainable, grid)
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
    set_parent_status(manifest, "RUNNING")
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
    resumes = len(manifest.data["resumes"])
    manifest.update(tune_dir=mf.resumed_tune_dir(resumes))
    study = manifest.data["study"]
    console.print(
        f"[bold]Resuming[/] {manifest.sweep_dir} without Tune state: "
        f"{manifest.remaining()} trials left on study {study['name']!r}"
    )
    fail_orphan_study_trials(manifest)
    return build_tuner(cfg, manifest, plan, trainable, _pending_grid(cfg)[0], seed_offset=resumes)


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
        f"{objectives}; "
        + ("grid (methods x seeds)" if sweep.mode == "grid" else f"sampler {sweep.sampler}")
        + (f"; ASHA on {sweep.asha_metric_mode()[0]}" if sweep.asha.enabled else "")
    )
    console.print(
        f"  {plan.max_concurrent} trials at once, {cfg.scaling.num_workers} worker(s) x "
        f"{plan.cpus_per_worker:g} CPU"
        + (f" + {plan.gpus_per_worker:g} GPU" if plan.gpus_per_worker else "")
        + f" each; dir {manifest.sweep_dir}"
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
        set_parent_status(manifest, "FAILED")
        raise
    complete = not interrupted and manifest.remaining() == 0
    reconcile(manifest, complete)
    manifest.update(status=mf.FINISHED if complete else mf.INTERRUPTED)
    set_parent_status(manifest, "FINISHED" if complete else "KILLED")
    if not complete:
        console.print(
            f"[yellow]sweep interrupted[/]: continue with "
            f"`robustsweep sweep --resume {manifest.sweep_dir}`"
        )
    return SweepOutcome(manifest.sweep_dir, manifest, complete)
