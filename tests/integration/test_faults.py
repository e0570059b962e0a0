"""Faults, each through the real CLI: a worker SIGKILL, an MLflow server restart while two jobs
train at once, a diverging trial in a two-node sweep on PostgreSQL, a failed attack-pool start.

Every process a test starts runs in its own session and is stopped by PID (``sweep_procs``).
The guard and checkpoint-fallback units are in ``test_fault_units.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import psutil
import pytest
import yaml
from sweep_procs import CLI, ROOT, kill_session, manifest, session_pids, start, tail, wait_for
from test_multinode import RAY, alive_nodes, free_port, node_args

from robustsweep.state.trial import checkpoint_epoch

pytestmark = pytest.mark.slow
MLFLOW = str(Path(sys.executable).parent / "mlflow")
MULTIPLE_INSTANCES = "multiple active Ray instances"


def train_job(path: Path, out: Path, *, epochs: int, steps: int, **sections: Any) -> Path:
    """A one-trial job on the smoke slice (32-token MR sentences, ``steps`` steps per epoch)."""
    job = {
        "name": path.stem,
        "output_dir": str(out),
        "data": {"source": "builtin:mr", "train_size": 64, "eval_size": 16, "max_length": 32},
        "train": {"epochs": epochs, "batch_size": 16, "max_steps_per_epoch": steps,
                  "eval_batch_size": 16},
        **sections,
    }
    path.write_text(yaml.safe_dump(job))
    return path


def checkpoints(out: Path, epoch: int) -> list[Path]:
    """Complete checkpoints of ``epoch``: ``meta.json`` lands before Ray has finished copying
    ``state.pt``, and a kill inside that copy rightly restarts from scratch (it failed CI once)."""
    return [meta for meta in out.glob(f"ray/*/epoch_{epoch:03d}/meta.json")
            if checkpoint_epoch(meta.parent) == epoch]


def record(out: Path) -> dict[str, Any]:
    return json.loads((out / "trial.json").read_text())


def train_workers(sid: int) -> list[psutil.Process]:
    """The Ray Train worker processes of session ``sid`` (their title names the actor)."""
    found = []
    for pid in session_pids(sid):
        try:
            proc = psutil.Process(pid)
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


# ---- 2. a Train worker SIGKILLed mid-epoch ------------------------------------------------------
@pytest.mark.timeout(600)
def test_worker_sigkill_mid_epoch_restarts_from_last_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # 20 steps an epoch: epoch 2 lasts seconds even on a fast machine, so the kill lands inside
    # it (with 3 steps, a fast CI machine finished the whole run inside the old 1 s sleep)
    job = train_job(tmp_path / "wkill.yaml", out, epochs=2, steps=20,
                    data={"source": "builtin:mr", "train_size": 320, "eval_size": 16,
                          "max_length": 32})
    log = tmp_path / "train.log"
    started = time.time()
    driver = start([*CLI, "train", str(job), "--max-failures", "1"], log, RAY_DEDUP_LOGS="0")
    try:
        wait_for(lambda: bool(checkpoints(out, 1)) and bool(train_workers(driver.pid)),
                 driver, log, timeout_s=400)
        time.sleep(0.3)  # into epoch 2's steps
        (worker,) = train_workers(driver.pid)
        killed_at = time.time()
        worker.send_signal(signal.SIGKILL)
        assert not checkpoints(out, 2), "epoch 2 had finished before the kill: not mid-epoch"
        next_epoch_at = None
        while driver.poll() is None and time.time() - started < 560:
            if next_epoch_at is None and checkpoints(out, 2):
                next_epoch_at = time.time()
            time.sleep(0.2)
        assert driver.wait(timeout=30) == 0, tail(log)
    finally:
        kill_session(driver.pid)

    trial = record(out)
    client = mlflow.MlflowClient(trial["tracking_uri"])
    run = client.get_run(trial["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["robustsweep.resumed"] == "worker_restart"
    resumed_from = int(run.data.tags["robustsweep.resumed_from_epoch"])
    assert resumed_from >= 1  # from a checkpoint, not from scratch
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == [1, 2]  # epoch 1 was not trained (or logged) twice
    assert (out / "results.json").is_file()
    resumed_at = client.get_metric_history(run.info.run_id, "resume/at_unix")[-1].value
    to_resume = resumed_at - killed_at
    to_next_epoch = (next_epoch_at or time.time()) - killed_at
    assert 0 < to_resume < 300
    print(f"\nworker SIGKILL: resumed from epoch {resumed_from} {to_resume:.1f} s after the kill, "
          f"next checkpoint {to_next_epoch:.1f} s after it; whole run "
          f"{time.time() - started:.0f} s")


# ---- 3 + 5. an MLflow server restart while two jobs train at once -------------------------------
def mlflow_server(port: int, backend: str, root: Path, log: Path):
    return start(
        [MLFLOW, "server", "--backend-store-uri", backend, "--artifacts-destination",
         str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        log,
    )


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 240) -> None:
    wait_for(lambda: healthy(url), server, log, timeout_s)


@pytest.mark.timeout(900)
def test_mlflow_restart_mid_trial_with_two_jobs_at_once(tmp_path: Path) -> None:
    """Two ``robustsweep train`` jobs start together, each with its own local Ray instance,
    both logging to one ``mlflow server`` that is stopped and restarted while they train.
    Both finish, no metric is lost and neither log shows Ray's "multiple active Ray
    instances" traceback (the PlacementGroupCleaner's State API client, ray_trainer)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    server_log = tmp_path / "mlflow.log"
    server = mlflow_server(port, backend, tmp_path, server_log)
    sessions = [server.pid]
    try:
        wait_healthy(url, server, server_log)
        jobs = {}
        for name in ("job_a", "job_b"):
            out = tmp_path / name
            path = train_job(tmp_path / f"{name}.yaml", out, epochs=2, steps=2,
                             tracking={"tracking_uri": url, "experiment": "faults"})
            log = tmp_path / f"{name}.log"
            jobs[name] = (start([*CLI, "train", str(path)], log), out, log)
            sessions.append(jobs[name][0].pid)
        for proc, out, log in jobs.values():
            wait_for(lambda out=out: (out / "trial.json").is_file(), proc, log, timeout_s=300)
        kill_session(server.pid)  # the runs exist; their metrics are still to come
        down_at = time.time()
        for proc, _, log in jobs.values():  # stay down into the first epoch's metric logging
            wait_for(lambda proc=proc: bool(train_workers(proc.pid)), proc, log, timeout_s=300)
        time.sleep(30)
        server = mlflow_server(port, backend, tmp_path, server_log)
        sessions.append(server.pid)
        wait_healthy(url, server, server_log)
        up_at = time.time()
        print(f"\nMLflow server was down {up_at - down_at:.0f} s")
        for proc, _, log in jobs.values():
            assert proc.wait(timeout=600) == 0, tail(log)
    finally:
        for sid in reversed(sessions):
            kill_session(sid)
    client = mlflow.MlflowClient(backend)  # the server's own store: what it kept
    during_outage = 0
    for name, (_, out, log) in jobs.items():
        text = log.read_text(errors="replace")
        assert MULTIPLE_INSTANCES not in text, f"{name}:\n{tail(log)}"
        run_id = record(out)["mlflow_run_id"]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", name
        history = client.get_metric_history(run_id, "train_loss")
        assert sorted(m.step for m in history) == [1, 2], name  # none lost, none doubled
        assert {"clean_accuracy", "ece", "cost/train_time_s"} <= set(run.data.metrics), name
        # a metric's timestamp is taken when it is logged: these were sent while it was down
        during_outage += sum(down_at * 1000 < m.timestamp < up_at * 1000 for m in history)
    assert during_outage >= 1, "no metric was logged during the outage: the test proved nothing"


# ---- 1 + 6. a diverging trial in a two-node sweep on PostgreSQL ---------------------------------
@pytest.fixture
def postgres() -> Iterator[str]:
    """A PostgreSQL server URL: .ci/run's (ROBUSTSWEEP_TEST_POSTGRES_URL), else a throw-away
    cluster of the installed Debian package; skipped, saying why, when there is none."""
    url = os.environ.get("ROBUSTSWEEP_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    script = ROOT / ".ci" / "postgres.sh"
    data = tempfile.mkdtemp(prefix="rs-pg-", dir="/tmp")  # the postgres user must reach it
    os.chmod(data, 0o755)
    started = subprocess.run(["bash", str(script), "start", data, str(free_port())],
                             capture_output=True, text=True, timeout=120, check=False)
    if started.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        reason = (started.stderr.strip() or "no output").splitlines()[-1]
        if os.environ.get("ROBUSTSWEEP_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required but not available: {reason}")
        pytest.skip(f"no PostgreSQL (install: bash .ci/postgres.sh install): {reason}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(script), "stop", data], timeout=60, check=False)
        shutil.rmtree(data, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """A fresh database on the server of ``server_url``; returns its SQLAlchemy URL (the
    psycopg2 driver named: SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3)."""
    import psycopg2

    connection = psycopg2.connect(server_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    base = server_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1)
    return f"{base}/{name}"


def sweep_job(path: Path, sweep_dir: Path, storage: str, tracking_uri: str) -> Path:
    """Two concurrent vanilla trials whose only difference is the sampled lr: 5e-5 trains,
    1e6 diverges at its second step (random sampler, seed 0: one of each)."""
    job = {
        "name": "faultsweep",
        "output_dir": str(sweep_dir),
        "data": {"source": "builtin:mr", "train_size": 32, "eval_size": 16, "max_length": 32},
        "train": {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 2, "eval_batch_size": 16},
        "tracking": {"tracking_uri": tracking_uri, "experiment": "faultsweep"},
        "sweep": {
            "methods": ["vanilla"],
            "num_samples": 2,
            "sampler": "random",
            "seed": 0,
            "storage": storage,
            "max_concurrent_trials": 2,
            "objectives": [{"metric": "clean_accuracy"}],
            "train_space": {"lr": {"type": "float", "choices": [5e-5, 1e6]}},
        },
    }
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.mark.timeout(900)
def test_diverging_trial_fails_cleanly_in_a_two_node_sweep_on_postgres(
    tmp_path: Path, postgres: str
) -> None:
    optuna_url = create_database(postgres, f"optuna_{secrets.token_hex(4)}")
    mlflow_url = create_database(postgres, f"mlflow_{secrets.token_hex(4)}")
    port, ml_port = free_port(), free_port()
    address, tracking_uri = f"127.0.0.1:{port}", f"http://127.0.0.1:{ml_port}"
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    temp_dir = tempfile.mkdtemp(prefix="rs-ft-", dir="/tmp")  # short: Ray's socket paths
    server_log = tmp_path / "mlflow.log"
    server = mlflow_server(ml_port, mlflow_url, tmp_path, server_log)
    sessions = [server.pid]
    try:
        head = start([RAY, "start", "--head", f"--port={port}", "--include-dashboard=true",
                      "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
                      *node_args(temp_dir)], tmp_path / "head.log", **auth)
        sessions.append(head.pid)
        time.sleep(5)
        node = start([RAY, "start", f"--address={address}", *node_args(temp_dir)],
                     tmp_path / "node.log", **auth)
        sessions.append(node.pid)
        deadline = time.time() + 180
        while len(alive_nodes(address, auth)) < 2 and time.time() < deadline:
            assert head.poll() is None and node.poll() is None, tail(tmp_path / "head.log")
        wait_healthy(tracking_uri, server, server_log)

        sweep_dir = tmp_path / "sweep"
        job = sweep_job(tmp_path / "job.yaml", sweep_dir, optuna_url, tracking_uri)
        log = tmp_path / "sweep.log"
        driver = start([*CLI, "sweep", str(job), "--address", address], log, **auth)
        sessions.append(driver.pid)
        driver.wait(timeout=600)
        text = log.read_text(errors="replace")
    finally:
        for sid in reversed(sessions):
            kill_session(sid)
        shutil.rmtree(temp_dir, ignore_errors=True)

    data = manifest(sweep_dir)
    trials = data["trials"]
    assert len(trials) == 2, tail(log)
    by_status = {t["status"]: t for t in trials.values()}
    assert set(by_status) == {"FINISHED", "FAILED"}, tail(log)
    failed = by_status["FAILED"]
    assert "training diverged: loss is" in failed["error"] and "step" in failed["error"]
    assert "metrics" not in failed or "clean_accuracy" not in failed.get("metrics", {})
    assert "✘ failed" in text and "training diverged" in text

    import optuna

    study = optuna.load_study(study_name=data["study"]["name"], storage=optuna_url)
    states = {t.params["train.lr"]: t.state.name for t in study.trials}
    assert len(study.trials) == 2 and states == {5e-5: "COMPLETE", 1e6: "FAIL"}

    client = mlflow.MlflowClient(mlflow_url)  # the server's PostgreSQL store itself
    parent_id = data["tracking"]["parent_run_id"]
    experiment = client.get_run(parent_id).info.experiment_id
    children = [r for r in client.search_runs([experiment])
                if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(children) == 2  # no trial lost or duplicated
    assert len({r.data.tags["robustsweep.trial_id"] for r in children}) == 2
    statuses = {r.info.status: r for r in children}
    assert set(statuses) == {"FINISHED", "FAILED"}
    bad = statuses["FAILED"].data.tags
    assert bad["robustsweep.status"] == "failed" and "training diverged" in bad["robustsweep.error"]

    trials_csv = (sweep_dir / "report" / "trials.csv").read_text()
    rows = [line for line in trials_csv.splitlines()[1:] if line.strip()]
    assert len(rows) == 2 and sum("FAILED" in row.upper() for row in rows) == 1, trials_csv
    assert "1/0/1" in (sweep_dir / "report" / "leaderboard.md").read_text()


# ---- 5. every Ray worker of a job knows its own instance ---------------------------------------
@pytest.mark.timeout(300)
def test_workers_of_a_local_instance_carry_its_address() -> None:
    """The setup hook that keeps Train's PlacementGroupCleaner on our instance when another
    job runs its own one on the machine (the end-to-end check is the two-jobs test above)."""
    import ray

    from robustsweep.config import ClusterConfig
    from robustsweep.train.ray_trainer import ensure_ray

    if ray.is_initialized():
        pytest.skip("needs to start its own Ray instance")
    ensure_ray(ClusterConfig(num_cpus=1))
    try:
        seen = ray.get(ray.remote(num_cpus=0)(lambda: os.environ.get("RAY_ADDRESS")).remote())
        assert seen == ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


# ---- 7. the attack pool cleans up after a failed start -----------------------------------------
@pytest.mark.timeout(300)
def test_attack_pool_start_failure_kills_its_actors_and_its_ray(monkeypatch) -> None:
    import ray

    from robustsweep.evaluate import attack_pool
    from robustsweep.evaluate.profiles import AttackProfile

    class Broken:
        """An actor whose attack cannot be built (defined here: pickled by value)."""

        def __init__(self, *args: Any) -> None:
            raise RuntimeError("injected: attack build failed")

        def ready(self) -> bool:
            return True

    if ray.is_initialized():
        pytest.skip("needs to start its own Ray instance")
    killed: list[Any] = []
    real_kill = ray.kill

    def spy_kill(actor: Any, **kwargs: Any) -> None:
        killed.append(actor)
        real_kill(actor, **kwargs)

    monkeypatch.setattr(ray, "kill", spy_kill)
    monkeypatch.setattr(attack_pool, "_Worker", Broken)
    # the actors never get to use the method: any picklable stand-in will do
    monkeypatch.setattr(attack_pool, "inference_mode", lambda method: contextlib.nullcontext())
    method = SimpleNamespace(name="stand-in")
    with pytest.raises(Exception, match="injected: attack build failed"):
        attack_pool.AttackPool(method, AttackProfile(name="broken", recipe="pwws"), workers=2)
    assert len(killed) == 2  # both actors, though only the first failure was raised
    assert not ray.is_initialized()  # the pool started Ray, so it shut it down again
