"""Around Tune: the sweep's MLflow parent run and Optuna study, reconciling what a stopped
driver left open, and clearing an output dir (only what a manifest of ours proves is ours).

One MLflow parent run per sweep; each trial's child run is created by ``run_trial`` and closed
by the trial or, when the trial's process was killed (pruned, crashed), by the driver. After
Tune returns, ``reconcile`` closes what a killed driver left open (RUNNING child runs, RUNNING
Optuna trials) so the MLflow UI and optuna-dashboard agree with the manifest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from robustsweep import tracking
from robustsweep.config import JobConfig
from robustsweep.errors import ConfigError
from robustsweep.state import manifest as mf
from robustsweep.sweep.monitor import close_child_run, console
from robustsweep.sweep.plan import sweep_of

# --------------------------------------------------------------------------------------------
# MLflow parent run and Optuna study


def open_parent_run(
    cfg: JobConfig, sweep_dir: Path, study_name: str, storage: str, knobs: dict[str, list]
) -> str | None:
    """The sweep's MLflow parent run: sweep + base job params, report settings as tags (so a
    report can be built from the run alone), the job YAML as artifact."""
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
        **tracking.report_tags(sweep_of(cfg).model_dump(mode="json"), knobs),
    }
    run_id = tracking.start_run(
        uri,
        cfg.tracking.experiment,
        f"{cfg.name}-sweep",
        params=params,
        tags=tags,
        artifact_root=sweep_dir / "mlartifacts",
    )
    tracking.log_artifacts(uri, run_id, [sweep_dir / mf.SWEEP_JOB_FILE])
    return run_id


def study_exists(storage: str, name: str) -> bool:
    import optuna

    from robustsweep.sweep.search import make_storage

    return name in optuna.get_all_study_names(storage=make_storage(storage))


def set_parent_status(manifest: mf.Manifest, status: str) -> None:
    uri, run_id = manifest.tracking_uri, manifest.parent_run_id
    if not (uri and run_id):
        return
    try:
        if status == "RUNNING":
            tracking.reopen_run(uri, run_id)
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
    fail_orphan_study_trials(manifest)


def _close_orphan_runs(manifest: mf.Manifest) -> None:
    """Child runs of this sweep still RUNNING though no trial owns them (lost Tune state)."""
    uri, parent = manifest.tracking_uri, manifest.parent_run_id
    if not (uri and parent):
        return
    try:
        tracking.close_running_children(uri, parent, "orphaned")
    except Exception as exc:  # noqa: BLE001
        console.print(f"[yellow]warning:[/] could not check for orphaned MLflow runs: {exc}")


def fail_orphan_study_trials(manifest: mf.Manifest) -> None:
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
# The output dir


def clear_output_dir(sweep_dir: Path, overwrite: bool) -> None:
    """Refuse to start over an earlier sweep unless ``overwrite``; never delete other files.

    ``--overwrite`` deletes only what a sweep of ours wrote: the directory must hold a manifest
    that parses as robustsweep's own, and nothing but the entries a sweep creates. Anything else
    (a stray file, a lookalike ``manifest.json``) is refused, so a mistyped ``output_dir`` can
    never cost a user their files.
    """
    if not sweep_dir.is_dir() or not any(sweep_dir.iterdir()):
        return
    unexpected = mf.unexpected_entries(sweep_dir)
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
