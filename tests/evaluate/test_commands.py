"""CLI: doctor, prefetch and `eval --run` on a trial dir written in the runner's layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustsweep.cli import main
from robustsweep.resources import textattack_env


def test_doctor_reports_offline_attacks_runnable(capsys: pytest.CaptureFixture[str]) -> None:
    textattack_env.provision(verify_deep=False)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("deepwordbug", "pwws", "textfooler-glove"):
        assert f"{name}" in out
    assert "[offline]" in out and "[connected]" in out and "needs:" in out


def test_doctor_fails_on_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ROBUSTSWEEP_CACHE", str(tmp_path))
    assert main(["doctor"]) == 1
    assert "robustsweep prefetch" in capsys.readouterr().out


def test_prefetch_is_idempotent(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prefetch"]) == 0
    assert main(["prefetch"]) == 0
    assert "import textattack (offline)" in capsys.readouterr().out


def test_eval_unknown_run_is_one_line_error(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--run", "0123abcd", "--search", str(tmp_path)]) == 2
    assert "no trial dir with that run id" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_logs_into_the_trials_mlflow_run(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A trial dir + MLflow run made by hand; `eval` finds it by run id, resumes, logs."""
    import mlflow

    from robustsweep.data import load_task
    from robustsweep.evaluate.trial import write_trial
    from robustsweep.jobfile import validate_job
    from robustsweep.methods import build
    from robustsweep.models import load_model

    textattack_env.provision(verify_deep=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    cfg = validate_job({"data": {"train_size": 20, "eval_size": 12, "max_length": 32,
                                 "split_seed": 1},
                        "eval": {"anomaly": [{"name": "news", "source": "builtin:news_headlines",
                                              "size": 12}]}})
    task = load_task(cfg.data)
    method = build("vanilla")
    method.setup(load_model(cfg.model, task.num_labels, cfg.data.max_length), task)
    trial_dir = tmp_path / "runs" / "trial_0"
    write_trial(trial_dir, cfg, method, run_id=run_id, tracking_uri=uri)

    args = ["eval", "--run", run_id, "--search", str(tmp_path / "runs"), "--attack",
            "deepwordbug", "--num-examples", "3", "--timeout", "60"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "robust_accuracy/deepwordbug" in out and "anomaly_auroc/news" in out
    data = client.get_run(run_id).data
    assert {"robust_accuracy/deepwordbug", "attack_success_rate/deepwordbug",
            "anomaly_auroc/news", "anomaly_fpr95_energy/news"} <= set(data.metrics)
    assert data.tags["attack_profile/deepwordbug"].startswith("deepwordbug v1 sha256:")
    artifacts = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert "eval/deepwordbug" in artifacts
    table = trial_dir / "eval" / "attacks" / "deepwordbug" / "examples.csv"
    assert len(table.read_text().splitlines()) == 4
    # a second run resumes from the table: nothing is attacked again, same numbers
    before = data.metrics["robust_accuracy/deepwordbug"]
    assert main([*args, "--no-log"]) == 0
    assert f"{before:.4f}" in capsys.readouterr().out
