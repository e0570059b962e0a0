"""A built wheel works from outside the checkout: search spaces and jobs ship as package data.

The wheel goes into a fresh venv with ``--no-deps``; the venv sees the test venv's installed
dependencies through a plain path line (not its .pth hooks, so the checkout's editable install
stays invisible), and every command runs from an empty directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], cwd: Path, timeout: int = 600) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.timeout(900)
def test_wheel_runs_methods_validate_and_a_smoke_train_outside_the_checkout(tmp_path: Path):
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)], cwd=tmp_path)
    (wheel,) = wheels.glob("robustsweep-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp_path).strip())
    (site / "test_venv_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
         str(wheel)], cwd=tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = run([str(py), "-c", "import robustsweep; print(robustsweep.__file__)"], cwd=outside)
    assert where.startswith(str(site)), where  # the wheel, not the checkout
    cli = str(venv / "bin" / "robustsweep")
    assert "rsmi" in run([cli, "methods"], cwd=outside)
    shipped = site / "robustsweep" / "jobs"
    assert (site / "robustsweep" / "search_spaces" / "roast.yaml").is_file()
    out = run([cli, "validate", str(shipped / "quickstart_sweep.yaml")], cwd=outside)
    assert "roast" in out
    out = run([cli, "train", str(shipped / "smoke.yaml"), "--set", f"output_dir={outside / 'runs'}",
               "--set", "train.max_steps_per_epoch=2"], cwd=outside)
    assert "clean_accuracy" in out
    assert list((outside / "runs").rglob("results.json"))
