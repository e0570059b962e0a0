"""A real sweep through the CLI: kill -9 of the driver mid-sweep, --resume, MLflow, Optuna, report.

One scenario keeps the suite short: a 2-trial sweep (vanilla, pgd; one trial at a time) is
killed while its second trial trains, then resumed. Checked afterwards: MLflow has one parent
run and exactly one FINISHED child per trial (the interrupted trial continued in its own run,
from its checkpoint), the finished trial was not re-run, the Optuna study has two COMPLETE
trials, and the report's files exist and were logged to the parent run.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import optuna
import pytest
from sweep_procs import CLI, env, kill_session, manifest, start, tail, tiny_job, wait_for

pytestmark = pytest.mark.slow


def epochs_in(attempt: Path) -> set[str]:
    return {p.name for p in attempt.glob("epoch_*")}


@pytest.mark.timeout(900)
def test_sweep_killed_mid_trial_resumes_without_rerun_or_duplicate_runs(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    job = tiny_job(tmp_path / "job.yaml", sweep_dir, max_concurrent_trials=1)
    # 3 epochs of 2 steps: a wide window to kill the second trial between two checkpoints
    job.write_text(
        job.read_text()
        .replace("epochs: 2", "epochs: 3")
        .replace("max_steps_per_epoch: 1", "max_steps_per_epoch: 2")
    )
    log = tmp_path / "sweep.log"
    driver = start([*CLI, "sweep", str(job)], log)
    try:

        def one_done_one_checkpointed() -> bool:
            trials = manifest(sweep_dir)["trials"].values()
            return any(t["status"] == "FINISHED" for t in trials) and any(
                t["status"] == "RUNNING" and t.get("epochs_done", 0) >= 1 for t in trials
            )

        wait_for(one_done_one_checkpointed, driver, log, timeout_s=420)
        driver.kill()  # kill -9 of the driver
        driver.wait(timeout=30)
    finally:
        kill_session(driver.pid)  # Ray's agents outlive a killed driver: stop them by PID

    before = manifest(sweep_dir)["trials"]
    (done_id,) = [tid for tid, t in before.items() if t["status"] == "FINISHED"]
    (cut_id,) = [tid for tid, t in before.items() if t["status"] == "RUNNING"]
    done_results = (sweep_dir / "trials" / done_id / "results.json").read_bytes()
    cut_run = json.loads((sweep_dir / "trials" / cut_id / "trial.json").read_text())[
        "mlflow_run_id"
    ]
    (first_attempt,) = (sweep_dir / "trials" / cut_id / "ray").glob("attempt_*")
    checkpointed = epochs_in(first_attempt)

    resume = subprocess.run(
        [*CLI, "sweep", "--resume", str(sweep_dir)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
        check=False,
    )
    assert resume.returncode == 0, resume.stdout[-4000:] + resume.stderr[-4000:] + tail(log)
    assert (
        "Leaderboard" in resume.stdout
        and "mlflow ui --backend-store-uri sqlite:///" in resume.stdout
    )

    after = manifest(sweep_dir)
    assert after["status"] == "FINISHED" and len(after["resumes"]) == 1
    assert {t["status"] for t in after["trials"].values()} == {"FINISHED"} and len(
        after["trials"]
    ) == 2
    # the finished trial was not re-run
    assert after["trials"][done_id]["attempts"] == 1
    assert (sweep_dir / "trials" / done_id / "results.json").read_bytes() == done_results
    # the interrupted trial resumed from its checkpoint into its own run
    assert after["trials"][cut_id]["attempts"] == 2
    attempts = sorted((sweep_dir / "trials" / cut_id / "ray").glob("attempt_*"))
    assert len(attempts) == 2
    resumed = epochs_in(attempts[1])
    assert resumed and not (resumed & checkpointed)
    assert checkpointed | resumed == {"epoch_001", "epoch_002", "epoch_003"}

    client = mlflow.MlflowClient(after["tracking"]["uri"])
    parent_id = after["tracking"]["parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["robustsweep.kind"] == "sweep"
    runs = client.search_runs([parent.info.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(runs) == 3 and len(children) == 2  # no duplicate child run
    assert {r.info.status for r in children} == {"FINISHED"}
    by_trial = {r.data.tags["robustsweep.trial_id"]: r for r in children}
    assert by_trial[cut_id].info.run_id == cut_run
    assert {r.data.tags["robustsweep.method"] for r in children} == {"vanilla", "pgd"}
    steps = {m.step for m in client.get_metric_history(cut_run, "train_loss")}
    assert steps == {1, 2, 3}
    for run in children:  # method, knobs, per-epoch and final metrics, cost
        assert {
            "clean_accuracy",
            "ood_accuracy/imdb",
            "cost/fwd_bwd_passes",
            "cost/train_time_s",
        } <= set(run.data.metrics)
        assert run.data.params["method.name"] == run.data.tags["robustsweep.method"]
    pgd = next(r for r in children if r.data.tags["robustsweep.method"] == "pgd")
    assert (
        pgd.data.params["method.knobs.adv_steps"] == "1"
        and "method.knobs.adv_lr" in pgd.data.params
    )

    study = optuna.load_study(study_name=after["study"]["name"], storage=after["study"]["storage"])
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]

    for name in ("leaderboard.md", "leaderboard.csv", "trials.csv", "pareto.png"):
        assert (sweep_dir / "report" / name).is_file()
    logged = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert {"report/leaderboard.md", "report/pareto.png"} <= logged
