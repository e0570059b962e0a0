"""`robustsweep doctor` offline: each gap comes with the command that fixes it, and the network
checks give up after their timeout instead of hanging."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import yaml

from robustsweep.cli import main
from robustsweep.commands import doctor


def closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ray_address_parsing() -> None:
    assert doctor.ray_endpoint("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert doctor.ray_endpoint("ray://head") == ("head", 10001)
    assert doctor.ray_endpoint("head") == ("head", 6379)
    assert doctor.ray_endpoint("auto") is None


def test_unreachable_ray_and_mlflow_fail_fast_with_a_fix() -> None:
    port = closed_port()
    started = time.monotonic()
    ray = doctor.check_ray(f"127.0.0.1:{port}", timeout=1.0)
    mlflow = doctor.check_mlflow(f"http://127.0.0.1:{port}", timeout=1.0)
    assert time.monotonic() - started < 10
    assert ray.status == doctor.MISSING and "ray start --head" in ray.fix
    assert mlflow.status == doctor.MISSING and "mlflow server" in mlflow.fix


def test_no_address_means_a_local_instance_and_sqlite_store_is_ok(tmp_path: Path) -> None:
    assert doctor.check_ray(None, 1.0).status == doctor.OK
    assert doctor.check_mlflow(f"sqlite:///{tmp_path}/a/mlflow.db", 1.0).status == doctor.OK


def test_gpu_missing_fails_only_a_gpu_job() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert doctor.check_gpu(required=False).status == doctor.NOTE
    needed = doctor.check_gpu(required=True)
    assert needed.status == doctor.MISSING and needed.fix


def test_hub_cache_lookup(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--bert-base-uncased" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    glue = tmp_path / "datasets--nyu-mll--glue" / "snapshots" / "def" / "sst2"
    glue.mkdir(parents=True)
    assert doctor.in_hub_cache("bert-base-uncased", "models", tmp_path)
    assert doctor.in_hub_cache("glue", "datasets", tmp_path)  # canonical owner/name
    assert not doctor.in_hub_cache("roberta-base", "models", tmp_path)


def test_doctor_job_prints_each_gap_with_its_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(doctor, "hub_cache_dir", lambda: tmp_path / "empty-hub")
    port = closed_port()
    job = {
        "name": "gpujob",
        "data": {"source": "hf:glue:sst2", "text_fields": ["sentence"]},
        "model": {"source": "hf:bert-base-uncased"},
        "cluster": {"address": f"127.0.0.1:{port}"},
        "tracking": {"tracking_uri": f"http://127.0.0.1:{port}"},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    assert main(["doctor", str(path), "--timeout", "1"]) == 1
    out = capsys.readouterr().out
    assert "robustsweep prefetch --model hf:bert-base-uncased" in out
    assert "robustsweep prefetch --data hf:glue:sst2" in out
    assert "fix: ray start --head" in out and "fix: mlflow server" in out


def test_prefetch_offline_fails_with_one_line(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main(["prefetch", "--data", "hf:nosuchowner/nosuchset"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot download hf:nosuchowner/nosuchset" in err[0]
