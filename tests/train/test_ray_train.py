"""Real trials on Ray Train with the builtin encoder and MR data, logged to MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from robustsweep.cli import main
from robustsweep.jobfile import load_job
from robustsweep.state.trial import latest_checkpoint
from robustsweep.train.trial import TrialFailed, run_trial

SMOKE = Path(__file__).parents[2] / "jobs" / "smoke.yaml"
pytestmark = pytest.mark.slow


def test_smoke_job_via_cli_leaves_a_complete_mlflow_run(ray_local, tmp_path: Path, capsys) -> None:
    out = tmp_path / "smoke"
    assert main(["train", str(SMOKE), "--set", f"output_dir={out}",
                 "--set", "train.log_every_steps=2"]) == 0
    printed = capsys.readouterr().out
    assert "clean_accuracy" in printed and "mlflow ui --backend-store-uri sqlite:///" in printed
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("robustsweep").experiment_id])
    assert run.info.status == "FINISHED"
    assert 0.0 <= run.data.metrics["clean_accuracy"] <= 1.0 and "ece" in run.data.metrics
    assert "ood_accuracy/imdb" in run.data.metrics
    assert run.data.params["method.name"] == "vanilla" and run.data.params["data.train_size"] == "64"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1]
    # step-level curve: 64 rows / 16 = 4 steps, a point every 2 (train.log_every_steps)
    for key in ("step/train_loss", "step/lr", "step/grad_norm"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [2, 4], key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "results.json", "evaluation"} <= artifacts
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/reliability_diagram.png" in evaluation


def test_two_worker_trial_interrupted_after_epoch_one_resumes(ray_local, tmp_path: Path, monkeypatch) -> None:
    cfg = load_job(SMOKE, [f"output_dir={tmp_path / 'trial'}", "scaling.num_workers=2",
                           "train.epochs=2", "data.ood=[]",
                           "train.grad_accumulation_steps=2"])  # DDP no_sync on micro-batch 1
    monkeypatch.setenv("ROBUSTSWEEP_FAIL_AFTER_EPOCH", "1")
    with pytest.raises(TrialFailed, match="injected failure after epoch 1"):
        run_trial(cfg)
    first = latest_checkpoint(cfg.resolved_output_dir())
    assert first is not None and first.name == "epoch_001"
    uri = cfg.resolved_tracking_uri()
    client = mlflow.MlflowClient(uri)
    (failed,) = client.search_runs([client.get_experiment_by_name("robustsweep").experiment_id])
    assert failed.info.status == "FAILED"

    monkeypatch.delenv("ROBUSTSWEEP_FAIL_AFTER_EPOCH")
    result = run_trial(cfg, resume=True)
    assert result.run_id == failed.info.run_id  # same MLflow run, not a new one
    assert [h["epoch"] for h in result.record["history"]] == [1.0, 2.0]
    # epoch 1 came from the checkpoint: only epoch 2 was trained by the resumed attempt
    attempts = sorted(p.name for p in (cfg.resolved_output_dir() / "ray").glob("attempt_*/epoch_*"))
    assert attempts == ["epoch_001", "epoch_002"]
    steps = [m.step for m in client.get_metric_history(result.run_id, "train_loss")]
    assert steps == [1, 2]
    assert client.get_run(result.run_id).info.status == "FINISHED"
