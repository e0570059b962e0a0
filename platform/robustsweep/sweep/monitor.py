"""Driver-side Tune callback: keeps the manifest, MLflow child-run statuses and the console in
step with trial events.

Tune pickles its callbacks into the experiment state and ``Tuner.restore`` brings back that
copy, so the monitor pickles only the sweep dir and finds the live manifest through
``attach`` (the resumed driver's one) rather than carrying a stale copy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune import Callback
from rich.console import Console

from robustsweep.state import manifest as mf
from robustsweep.state.trial import TrialDir
from robustsweep.sweep.params import FINAL_KEY, METHOD_KEY, NUMBER_KEY, SEED_KEY, searched_knobs
from robustsweep.tracking import finite_metrics

logger = logging.getLogger(__name__)
console = Console(highlight=False, soft_wrap=True)

_LIVE: dict[str, mf.Manifest] = {}
# Tune's own bookkeeping keys: never metrics.
_TUNE_KEYS = frozenset(
    {
        "training_iteration",
        "time_total_s",
        "time_this_iter_s",
        "time_since_restore",
        "timestamp",
        "iterations_since_restore",
        "timesteps_since_restore",
        "timesteps_total",
        "episodes_total",
        "pid",
        "hostname",
        "node_ip",
        "date",
        "trial_id",
        "experiment_tag",
        "done",
        "config",
        "checkpoint_dir_name",
        "checkpoint_path",
        "should_checkpoint",
        "node_id",
        "run_id",
        FINAL_KEY,
    }
)


def attach(manifest: mf.Manifest) -> None:
    """Make ``manifest`` the one every monitor of its sweep dir writes to."""
    _LIVE[str(manifest.sweep_dir)] = manifest


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The trial's own finite numeric metrics from a Tune result."""
    return finite_metrics(result, skip=_TUNE_KEYS | {k for k in result if k.startswith("config/")})


def child_run_id(manifest: mf.Manifest, trial_id: str) -> str | None:
    """A trial's MLflow child run: from the manifest, else from the trial's own record."""
    return (
        manifest.trials.get(trial_id, {}).get("run_id")
        or TrialDir(manifest.trial_dir(trial_id)).run_id
    )


def close_child_run(
    manifest: mf.Manifest, trial_id: str, status: str, *, only_if_running: bool = True
) -> None:
    """Set a trial's MLflow run to the status its trial status maps to (+ a status tag)."""
    from robustsweep import tracking

    uri = manifest.tracking_uri
    run_id = child_run_id(manifest, trial_id)
    if not (uri and run_id):
        return
    try:
        if only_if_running and tracking.run_status(uri, run_id) != "RUNNING":
            return
        tracking.set_tags(uri, run_id, {"robustsweep.status": status.lower()})
        tracking.end_run(uri, run_id, mf.RUN_STATUS[status])
    except tracking.TrackingError as exc:
        logger.warning("could not close MLflow run of trial %s: %s", trial_id, exc)


def tag_failure(manifest: mf.Manifest, trial_id: str, message: str) -> None:
    """Name a failed trial's reason on its MLflow run, whoever closed the run (run_trial
    closes it FAILED before Tune reports the error, so ``close_child_run`` skips it)."""
    from robustsweep import tracking

    uri = manifest.tracking_uri
    run_id = child_run_id(manifest, trial_id)
    if not (uri and run_id):
        return
    try:
        tracking.set_tags(uri, run_id, {"robustsweep.status": "failed",
                                        "robustsweep.error": message[:500]})
    except tracking.TrackingError as exc:
        logger.warning("could not tag the MLflow run of failed trial %s: %s", trial_id, exc)


def collect_trial_record(manifest: mf.Manifest, trial_id: str) -> None:
    """Copy a finished trial's results record into the sweep's ``records_dir``, if it has one."""
    from robustsweep.sweep.collect import collect

    records_dir = manifest.data.get("records_dir")
    if not records_dir:
        return
    record = TrialDir(manifest.trial_dir(trial_id)).read_results()
    if record is None or not record.get("config_hash"):
        logger.warning("trial %s finished without a results record to collect", trial_id)
        return
    try:
        target = collect(record, Path(records_dir))
    except OSError as exc:
        console.print(f"[yellow]warning:[/] could not copy trial {trial_id}'s record: {exc}")
        return
    console.print(f"  record   {target}")


def _label(entry: dict[str, Any]) -> str:
    number = int(entry.get("optuna_trial", -1))
    return f"{entry.get('method', '?')}-{number:03d} [dim]({entry['trial_id']})[/]"


def _short(metrics: dict[str, float], keys: list[str]) -> str:
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


class SweepMonitor(Callback):
    """Records trial starts, epoch/final results, completions, prunes and errors."""

    def __init__(self, sweep_dir: Path, shown_metrics: list[str], asha_metric: str | None) -> None:
        self.sweep_dir = str(Path(sweep_dir).resolve())
        self.shown_metrics = list(shown_metrics)
        self.asha_metric = asha_metric
        self._warned = False

    def __getstate__(self) -> dict[str, Any]:
        return {
            "sweep_dir": self.sweep_dir,
            "shown_metrics": self.shown_metrics,
            "asha_metric": self.asha_metric,
            "_warned": False,
        }

    @property
    def manifest(self) -> mf.Manifest:
        live = _LIVE.get(self.sweep_dir)
        if live is None:
            live = _LIVE[self.sweep_dir] = mf.Manifest.load(Path(self.sweep_dir))
        return live

    # ---- Tune hooks -----------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = dict(trial.config)
        previous = self.manifest.trials.get(trial.trial_id, {})
        entry = self.manifest.update_trial(
            trial.trial_id,
            status=mf.RUNNING,
            method=params.get(METHOD_KEY),
            optuna_trial=params.get(NUMBER_KEY),
            seed=params.get(SEED_KEY),
            params=params,
            knobs=searched_knobs(params),
            attempts=int(previous.get("attempts", 0)) + 1,
            started=mf.now(),
        )
        knobs = ", ".join(f"{k}={_fmt(v)}" for k, v in entry["knobs"].items())
        again = " [yellow](resumed)[/]" if entry["attempts"] > 1 else ""
        console.print(f"[cyan]▶ start[/]  {_label(entry)}{again}  {knobs}")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        metrics = result_metrics(result)
        fields: dict[str, Any] = {"metrics": metrics, "node_ip": result.get("node_ip")}
        if result.get(FINAL_KEY):
            fields.update(
                final=True,
                node_id=result.get("node_id") or None,
                run_id=result.get("run_id") or None,
            )
        else:
            fields["epochs_done"] = int(metrics.get("epoch", 0))
            self._check_asha_metric(metrics)
        entry = self.manifest.update_trial(trial.trial_id, **fields)
        if not result.get(FINAL_KEY):
            console.print(
                f"  epoch {fields['epochs_done']}  {_label(entry)}  "
                f"{_short(metrics, self.shown_metrics)}"
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        final = bool((trial.last_result or {}).get(FINAL_KEY))
        status = mf.FINISHED if final else mf.PRUNED
        entry = self.manifest.update_trial(trial.trial_id, status=status, ended=mf.now())
        if final:
            console.print(
                f"[green]✔ done[/]   {_label(entry)}  "
                f"{_short(entry.get('metrics', {}), self.shown_metrics)}"
            )
            collect_trial_record(self.manifest, trial.trial_id)
        else:
            close_child_run(self.manifest, trial.trial_id, mf.PRUNED)
            console.print(
                f"[yellow]✂ pruned[/] {_label(entry)} after epoch {entry.get('epochs_done', 0)}"
            )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        message = _error_line(trial)
        entry = self.manifest.update_trial(
            trial.trial_id, status=mf.FAILED, ended=mf.now(), error=message
        )
        # run_trial closes its run as FAILED itself, unless its process died first.
        close_child_run(self.manifest, trial.trial_id, mf.FAILED)
        tag_failure(self.manifest, trial.trial_id, message)
        console.print(f"[red]✘ failed[/] {_label(entry)}  {message}")

    def _check_asha_metric(self, metrics: dict[str, float]) -> None:
        if self.asha_metric and not self._warned and self.asha_metric not in metrics:
            self._warned = True
            console.print(
                f"[yellow]warning:[/] ASHA metric {self.asha_metric!r} is not reported per "
                "epoch, so ASHA cannot stop trials (use a per-epoch proxy metric)"
            )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _error_line(trial: Any) -> str:
    """The last meaningful line of a trial's error file (the user-facing error)."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if any(word in line for word in ("Error", "Failed", "error", "diverged")):
            return line[:300]
    return lines[-1][:300] if lines else "trial failed"
