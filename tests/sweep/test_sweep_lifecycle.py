"""Trial events -> manifest + MLflow child-run status; reconcile after a killed driver."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from robustsweep import tracking
from robustsweep.state import manifest as mf
from robustsweep.sweep import monitor as mon
from robustsweep.sweep.lifecycle import reconcile
from robustsweep.sweep.params import FINAL_KEY


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One MLflow store for the module (creating a sqlite store costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def sweep(tmp_path: Path, mlflow_uri: str, request):
    """A manifest with an MLflow parent run and a study, like start_sweep leaves them."""
    experiment = request.node.name
    parent = tracking.start_run(
        mlflow_uri, experiment, "t-sweep", artifact_root=tmp_path / "mlartifacts"
    )
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="s", storage=storage, directions=["maximize", "maximize"])
    manifest = mf.Manifest.create(
        tmp_path,
        job={"name": "t"},
        job_file=None,
        num_samples=3,
        study_name="s",
        storage=storage,
        tracking_uri=mlflow_uri,
        experiment=experiment,
        parent_run_id=parent,
    )
    mon.attach(manifest)
    return manifest


def child(manifest: mf.Manifest, trial_id: str) -> str:
    """A RUNNING child run + trial.json, as run_trial creates them."""
    run_id = tracking.start_run(
        manifest.tracking_uri,
        manifest.data["tracking"]["experiment"],
        trial_id,
        parent_run_id=manifest.parent_run_id,
        tags={"robustsweep.trial_id": trial_id},
    )
    trial_dir = manifest.trial_dir(trial_id)
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "trial.json").write_text(json.dumps({"mlflow_run_id": run_id}))
    return run_id


def trial(trial_id: str, number: int, last_result=None, error_file=None):
    config = {"method": "pgd", "optuna_trial": number, "pgd.adv_lr": 0.05, "seed": 1}
    return SimpleNamespace(
        trial_id=trial_id, config=config, last_result=last_result or {}, error_file=error_file
    )


def status(manifest: mf.Manifest, run_id: str) -> tuple[str, str | None]:
    run = tracking.client(manifest.tracking_uri).get_run(run_id)
    return run.info.status, run.data.tags.get("robustsweep.status")


def test_monitor_records_a_finished_trial(sweep):
    monitor = mon.SweepMonitor(sweep.sweep_dir, ["clean_accuracy"], None)
    run_id = child(sweep, "a")
    t = trial("a", 0)
    monitor.on_trial_start(0, [], t)
    entry = sweep.trials["a"]
    assert entry["status"] == mf.RUNNING and entry["knobs"] == {"adv_lr": 0.05}
    assert entry["seed"] == 1 and entry["attempts"] == 1 and entry["optuna_trial"] == 0
    monitor.on_trial_result(
        0,
        [],
        t,
        {
            "clean_accuracy": 0.7,
            "epoch": 1,
            "training_iteration": 1,
            "node_ip": "127.0.0.1",
            "checkpoint_path": "/x",
            "pid": 3,
        },
    )
    assert sweep.trials["a"]["epochs_done"] == 1
    assert sweep.trials["a"]["metrics"] == {"clean_accuracy": 0.7, "epoch": 1.0}
    final = {
        "clean_accuracy": 0.8,
        "robust_accuracy/x": 0.3,
        FINAL_KEY: 1.0,
        "node_id": "n1",
        "run_id": run_id,
        "epoch": 2,
    }
    monitor.on_trial_result(0, [], t, final)
    t.last_result = final
    monitor.on_trial_complete(0, [], t)
    entry = mf.Manifest.load(sweep.sweep_dir).trials["a"]
    assert entry["status"] == mf.FINISHED and entry["node_id"] == "n1" and entry["run_id"] == run_id
    assert entry["metrics"]["robust_accuracy/x"] == 0.3 and FINAL_KEY not in entry["metrics"]
    assert status(sweep, run_id) == ("RUNNING", None)  # run_trial closes its own run


def test_monitor_closes_pruned_and_crashed_trials_runs(sweep, tmp_path: Path):
    monitor = mon.SweepMonitor(sweep.sweep_dir, ["clean_accuracy"], "proxy")
    pruned_run, failed_run = child(sweep, "p"), child(sweep, "f")
    pruned = trial("p", 1, last_result={"clean_accuracy": 0.5, "epoch": 1})
    monitor.on_trial_start(0, [], pruned)
    monitor.on_trial_result(0, [], pruned, pruned.last_result)
    assert monitor._warned  # the ASHA metric is missing from epoch results
    monitor.on_trial_complete(0, [], pruned)
    assert sweep.trials["p"]["status"] == mf.PRUNED
    assert status(sweep, pruned_run) == ("KILLED", "pruned")
    error = tmp_path / "error.txt"
    error.write_text(
        "Traceback (most recent call last):\n  File x\n"
        "robustsweep.train.trial.TrialFailed: trial f failed: loss is NaN\n"
    )
    crashed = trial("f", 2, error_file=str(error))
    monitor.on_trial_start(0, [], crashed)
    monitor.on_trial_error(0, [], crashed)
    assert sweep.trials["f"]["status"] == mf.FAILED
    assert sweep.trials["f"]["error"].endswith("trial f failed: loss is NaN")
    assert status(sweep, failed_run) == ("FAILED", "failed")


def test_monitor_pickles_without_state_and_uses_the_live_manifest(sweep):
    monitor = mon.SweepMonitor(sweep.sweep_dir, ["clean_accuracy"], None)
    restored = pickle.loads(pickle.dumps(monitor))  # what Tuner.restore brings back
    assert restored.manifest is sweep
    restored.on_trial_start(0, [], trial("r", 0))
    restored.on_trial_start(0, [], trial("r", 0))
    assert sweep.trials["r"]["attempts"] == 2


def test_reconcile_closes_what_a_killed_driver_left_open(sweep):
    finished, interrupted, orphan = child(sweep, "a"), child(sweep, "b"), child(sweep, "c")
    tracking.end_run(sweep.tracking_uri, finished, "FINISHED")
    sweep.update_trial("a", status=mf.FINISHED, run_id=finished)
    sweep.update_trial("b", status=mf.RUNNING)  # the driver died while it trained
    study = optuna.load_study(study_name="s", storage=sweep.data["study"]["storage"])
    done = study.ask()
    study.tell(done, [0.8, 0.3])
    study.ask()  # asked before the kill, never told

    reconcile(sweep, complete=False)  # an interrupted sweep: trials are resumable
    assert sweep.trials["b"]["status"] == mf.INTERRUPTED
    assert status(sweep, interrupted) == ("KILLED", "interrupted")
    assert status(sweep, orphan) == ("RUNNING", None)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "RUNNING"]

    reconcile(sweep, complete=True)  # a finished sweep: nothing may stay RUNNING
    assert status(sweep, orphan) == ("KILLED", "orphaned")
    assert status(sweep, finished) == ("FINISHED", None)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "FAIL"]


def test_result_metrics_drop_tune_bookkeeping():
    result = {
        "clean_accuracy": 0.5,
        "ece": float("nan"),
        "done": False,
        "training_iteration": 3,
        "config/method": "pgd",
        "hostname": "h",
        "flag": True,
        "cost/fwd_bwd_passes": 64,
    }
    assert mon.result_metrics(result) == {"clean_accuracy": 0.5, "cost/fwd_bwd_passes": 64.0}
