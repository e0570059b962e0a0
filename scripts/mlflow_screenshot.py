"""Screenshot of what a user sees on first opening a sweep in MLflow: docs/img/mlflow.png.

Starts ``mlflow ui`` on the sweep's store (127.0.0.1 only), saves the sweep's runs view (the
same one ``robustsweep sweep`` prints a link to), opens that link in headless Chromium and
writes the screenshot; the server is stopped by its PID afterwards.

    .venv/bin/python scripts/mlflow_screenshot.py runs/quickstart_sweep
    .venv/bin/python scripts/mlflow_screenshot.py runs/quickstart_sweep --port 5731 --out /tmp/m.png

Needs Chromium (Debian: ``apt-get install -y chromium``). A sweep whose ``tracking_uri`` is an
MLflow server is shot against that server (no local ``mlflow ui`` is started).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from robustsweep import tracking

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1600,1000", "--virtual-time-budget=15000",
]


def sweep_store(sweep_dir: Path) -> tuple[str, str, str, list[str]]:
    """Tracking URI, parent run id, sweep name and objective metrics from the manifest."""
    from robustsweep.state.manifest import Manifest  # the owner of the manifest's layout

    manifest = Manifest.load(sweep_dir)
    uri, parent = manifest.tracking_uri, manifest.parent_run_id
    if not (uri and parent):
        sys.exit(f"{sweep_dir}: the sweep was run without MLflow tracking")
    job = manifest.data["job"]
    objectives = [o["metric"] for o in (job.get("sweep") or {}).get("objectives", [])]
    return uri, parent, job["name"], objectives


def wait_until_up(base: str, seconds: float) -> None:
    """Poll the UI until it answers (``mlflow ui`` takes a few seconds to start)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"the MLflow UI at {base} did not answer within {seconds:.0f} s")


def start_ui(uri: str, port: int) -> subprocess.Popen:
    """``mlflow ui`` on 127.0.0.1 in its own process group (so it can be stopped as a whole)."""
    command = [tracking.mlflow_executable(), "ui", "--backend-store-uri", uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """Stop the server we started (its own process group, by its PID)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def screenshot(url: str, out: Path, chromium: str) -> None:
    """Headless Chromium with a throw-away profile; the page gets 15 s of virtual time."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rs-chromium-") as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                        f"--screenshot={out.resolve()}", url],
                       check=True, timeout=120, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="A sweep's output dir (with manifest.json)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "mlflow.png")
    parser.add_argument("--port", type=int, default=tracking.UI_PORT)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    if not Path(args.chromium).exists():
        sys.exit("Chromium not found: apt-get install -y chromium (or pass --chromium PATH)")
    uri, parent, name, objectives = sweep_store(args.sweep_dir.resolve())
    local = not uri.startswith(("http://", "https://"))
    base = f"http://127.0.0.1:{args.port}" if local else tracking.ui_base(uri)
    url = tracking.sweep_view_url(uri, parent, name, objectives, base=base)
    server = start_ui(uri, args.port) if local else None
    try:
        wait_until_up(base, 180)
        screenshot(url, args.out, args.chromium)
    finally:
        if server is not None:
            stop(server)
    print(f"{url}\n-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
