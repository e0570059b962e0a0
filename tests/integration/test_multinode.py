"""A real 2-node Ray cluster on this machine (two ``ray start`` processes, one CPU each): a
2-trial sweep connects with ``--address`` and its trials run on both nodes.

Each node declares one ``trial_driver`` slot, so the two concurrent trials' drivers must land on
different nodes; each trial records its driver's node id in the manifest. Every process is
stopped by PID afterwards (each ``ray start --block`` runs in its own session).
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sweep_procs import CLI, env, kill_session, manifest, start, tail, tiny_job

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")
NODE_IDS = """
import json, ray
ray.init(address="{address}", logging_level="ERROR", log_to_driver=False)
print(json.dumps(sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_args(temp_dir: str) -> list[str]:
    """One CPU and one trial-driver slot per node; localhost only; its own ports and temp dir
    (``ray start`` records its address in <temp dir>/ray_current_cluster, which a plain
    ``ray.init()`` elsewhere on the machine would otherwise pick up)."""
    return [
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--num-gpus=0",
        f"--temp-dir={temp_dir}",
        '--resources={"trial_driver": 1}',
        "--disable-usage-stats",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


def alive_nodes(address: str, auth: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", NODE_IDS.format(address=address)],
        env=env(**auth),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
    return json.loads(lines[-1]) if out.returncode == 0 and lines else []


@pytest.mark.timeout(900)
def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    # token authentication with a token of this cluster's own (docs/multi-node.md)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    sessions = []
    temp_dir = tempfile.mkdtemp(prefix="rs-mn-", dir="/tmp")  # short: Ray's socket paths
    try:
        head = start(
            [
                RAY,
                "start",
                "--head",
                f"--port={port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={free_port()}",
                *node_args(temp_dir),
            ],
            tmp_path / "head.log",
            **auth,
        )
        sessions.append(head.pid)
        time.sleep(5)
        worker = start(
            [RAY, "start", f"--address={address}", *node_args(temp_dir)],
            tmp_path / "worker.log",
            **auth,
        )
        sessions.append(worker.pid)
        nodes: list[str] = []
        deadline = time.time() + 180
        while len(nodes) < 2 and time.time() < deadline:
            assert head.poll() is None, tail(tmp_path / "head.log")
            assert worker.poll() is None, tail(tmp_path / "worker.log")
            nodes = alive_nodes(address, auth)
        assert len(nodes) == 2, tail(tmp_path / "head.log") + tail(tmp_path / "worker.log")

        sweep_dir = tmp_path / "sweep"
        job = tiny_job(tmp_path / "job.yaml", sweep_dir)
        log = tmp_path / "sweep.log"
        driver = start([*CLI, "sweep", str(job), "--address", address], log, **auth)
        sessions.append(driver.pid)
        assert driver.wait(timeout=600) == 0, tail(log)

        trials = manifest(sweep_dir)["trials"].values()
        assert [t["status"] for t in trials] == ["FINISHED", "FINISHED"], tail(log)
        assert {t["node_id"] for t in trials} == set(nodes)  # one trial on each node
        for trial in trials:
            results = json.loads((sweep_dir / trial["trial_dir"] / "results.json").read_text())
            assert 0.0 <= results["metrics"]["clean_accuracy"] <= 1.0
        assert "2 trials at once" in log.read_text()
    finally:
        for sid in reversed(sessions):
            kill_session(sid)
        shutil.rmtree(temp_dir, ignore_errors=True)
