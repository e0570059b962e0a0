"""Start-up settings that keep a sweep trial's fixed cost low (issue 19)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from robustsweep.config import ClusterConfig
from robustsweep.jobfile import validate_job
from robustsweep.state import manifest as mf
from robustsweep.sweep import tuner
from robustsweep.sweep.plan import ResourcePlan
from robustsweep.train import ray_trainer


def _job(tmp_path: Path) -> Any:
    return validate_job({
        "name": "startup", "output_dir": str(tmp_path),
        "data": {"source": "builtin:mr", "train_size": 16, "eval_size": 8},
        "model": {"source": "builtin:minilm"},
        "sweep": {"methods": ["vanilla"], "num_samples": 2,
                  "objectives": [{"metric": "clean_accuracy", "mode": "max"}]},
    })


def test_tuner_reuses_the_trial_driver_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each new trial runs in the previous trial's driver process (no new process + imports)."""
    from ray import tune

    from robustsweep.sweep import search

    seen: dict[str, Any] = {}

    class RecordingTuner:
        def __init__(self, trainable: Any, *, tune_config: Any, run_config: Any) -> None:
            seen["tune_config"] = tune_config

    monkeypatch.setattr(tune, "Tuner", RecordingTuner)
    monkeypatch.setattr(search, "build_searcher", lambda *args, **kwargs: None)
    manifest = mf.Manifest.create(tmp_path, job={"name": "startup"}, job_file=None, num_samples=2,
                                  study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db",
                                  tracking_uri=None, experiment="e", parent_run_id=None)
    tuner.build_tuner(_job(tmp_path), manifest, ResourcePlan(1.0, 1, {"trial_driver": 1.0}),
                      trainable=object(), grid=None)
    assert seen["tune_config"].reuse_actors is True


def test_local_ray_forwards_a_short_train_health_check_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Train V2's controller (its own Ray process) polls workers every 0.25 s, not every 2 s;
    a value the user set wins."""
    import ray

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    for user_value, expected in ((None, "0.25"), ("1.5", "1.5")):
        env = {k: v for k, v in os.environ.items()
               if k not in (ray_trainer.HEALTH_CHECK_ENV, "RAY_ADDRESS")}
        if user_value:
            env[ray_trainer.HEALTH_CHECK_ENV] = user_value
        monkeypatch.setattr(os, "environ", env)
        ray_trainer.ensure_ray(ClusterConfig(num_cpus=1))
        forwarded = calls[-1]["runtime_env"]["env_vars"]
        assert forwarded[ray_trainer.HEALTH_CHECK_ENV] == expected
        assert float(expected) <= 2.0


def test_the_ray_setup_hook_module_imports_no_torch() -> None:
    """Every Ray process of the job imports SETUP_HOOK's module at start: it must stay light."""
    import subprocess
    import sys

    module = ray_trainer.SETUP_HOOK.rsplit(".", 1)[0]
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
