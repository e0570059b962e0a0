"""The pre-flight (resolve.py): what passes, what it resolves, and that it stays in step with the
modules it mirrors without importing them (models, anomaly metrics)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from robustsweep import resolve
from robustsweep.cli import main
from robustsweep.errors import ConfigError
from robustsweep.jobfile import load_job, validate_job

ROOT = Path(__file__).parents[2]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_shipped_jobs_pass_the_preflight(path: Path) -> None:
    resolved = resolve.resolve_job(load_job(path), probe=False)
    assert resolved.produces("clean_accuracy", per_epoch=True)
    if resolved.cfg.sweep is not None:
        assert set(resolved.spaces) == set(resolved.cfg.sweep.methods)


def test_metrics_follow_attacks_ood_anomaly_and_proxy() -> None:
    cfg = validate_job({
        "data": {"ood": [{"name": "imdb", "source": "builtin:imdb"}]},
        "eval": {"attacks": ["pwws"], "proxy_attack": "deepwordbug",
                 "anomaly": [{"name": "news", "source": "builtin:news_headlines"}]},
    })
    resolved = resolve.resolve_job(cfg, probe=False)
    assert resolved.produces("robust_accuracy/pwws")
    assert not resolved.produces("robust_accuracy/pwws", per_epoch=True)
    assert resolved.produces("proxy_robust_accuracy/deepwordbug", per_epoch=True)
    assert resolved.produces("ood_accuracy/imdb", per_epoch=True)
    assert resolved.produces("anomaly_auroc_energy/news")
    assert not resolved.produces("robust_accuracy/deepwordbug")
    assert [p.name for p in resolved.attacks] == ["pwws"]


def test_knobs_are_resolved_with_defaults(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    job = tmp_path / "j.yaml"
    job.write_text("method: {name: pgd, knobs: {adv_steps: 2}}\ntracking: {enabled: false}\n")
    assert main(["validate", str(job)]) == 0
    out = capsys.readouterr().out
    assert "knobs: {}" not in out and "adv_steps: 2" in out and "adv_lr:" in out
    assert "# pre-flight passed" in out


def test_builtin_model_names_match_models() -> None:
    from robustsweep.models import BUILTIN_MODELS

    assert set(resolve.BUILTIN_MODELS) == set(BUILTIN_MODELS)


def test_anomaly_families_match_anomaly_metrics() -> None:
    from robustsweep.evaluate.anomaly import detection_metrics

    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    names = {k.split("/")[0] for k in detection_metrics(logits, logits, "x")}
    assert names == set(resolve.ANOMALY_FAMILIES)


def test_validate_does_not_import_ray(tmp_path: Path) -> None:
    job = tmp_path / "j.yaml"
    job.write_text("tracking: {enabled: false}\nsweep: {methods: [vanilla, pgd]}\n")
    code = ("import sys; from robustsweep.cli import main; rc = main(['validate', sys.argv[1]]);"
            "print('RAY' if 'ray' in sys.modules else 'NO-RAY', rc, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, str(job)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.stderr.strip().splitlines()[-1] == "NO-RAY 0", out.stderr


def test_probe_of_a_silent_server_times_out_fast() -> None:
    """A server that accepts connections but never answers must not hang the pre-flight."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    port = silent.getsockname()[1]
    started = time.monotonic()
    try:
        with pytest.raises(ConfigError, match="not reachable"):
            resolve.probe_http(f"http://127.0.0.1:{port}", "tracking.tracking_uri", timeout=0.5)
    finally:
        silent.close()
    assert time.monotonic() - started < 3


def test_probe_accepts_any_http_answer() -> None:
    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        resolve.probe_http(f"http://127.0.0.1:{server.server_port}", "t", timeout=2)
    finally:
        server.shutdown()


@pytest.mark.parametrize("address", ["auto", "local", "10.0.0.5:6379", "ray://head:10001",
                                     "[::1]:6379", "node-1.cluster.local:6379"])
def test_valid_cluster_addresses(address: str) -> None:
    resolve.check_address("cluster.address", address)


@pytest.mark.parametrize("url", ["sqlite:///x/optuna.db", "postgresql+psycopg2://u:p@h:5432/db",
                                 "journal:/shared/optuna.log"])
def test_valid_storage_urls(url: str) -> None:
    resolve.check_storage(url)  # psycopg2-binary is in the test extra


def test_a_storage_url_whose_driver_is_missing_fails_at_preflight(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare postgresql:// means psycopg 3 to SQLAlchemy 2.1; without it the sweep used to
    fail only at start. The error names the driver, hides the password and gives the fix."""
    import builtins

    real_import = builtins.__import__

    def no_psycopg(name: str, *args: object, **kwargs: object) -> object:
        if name == "psycopg" or name.startswith("psycopg."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psycopg)
    with pytest.raises(resolve.ConfigError) as err:
        resolve.check_storage("postgresql://optuna:secret@h:5432/db")
    message = str(err.value)
    assert "sweep.storage" in message and "'psycopg' is not installed" in message
    assert "secret" not in message and "postgresql+psycopg2://" in message


def test_origin_starts_every_preflight_error() -> None:
    cfg = validate_job({"eval": {"attacks": ["nope"]}})
    with pytest.raises(ConfigError, match=r"^job\.yaml: eval\.attacks\.0: unknown attack profile"):
        resolve.resolve_job(cfg, origin="job.yaml", probe=False)
