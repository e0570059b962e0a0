"""What a user sees on first opening MLflow and optuna-dashboard: the printed link opens the
sweep's trials in machine-learning mode with the metric columns chosen (a saved view in the
experiment's tags, the envelope MLflow 3.17's runs page reads), the parent run logs the
sweep's params, and Optuna trials are named and linked to their MLflow runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna

from robustsweep import tracking
from robustsweep.config import SweepConfig
from robustsweep.sweep.params import FINAL_KEY, TrialSpace, resolve_spaces
from robustsweep.sweep.search import build_searcher, storage_url

OBJECTIVES = ["clean_accuracy", "robust_accuracy/deepwordbug"]


def test_ui_command_uses_this_venvs_mlflow_and_binds_localhost() -> None:
    command = tracking.ui_command("sqlite:////tmp/x/mlflow.db")
    assert command.startswith(str(Path(sys.executable).parent / "mlflow"))
    assert "--host 127.0.0.1" in command


def test_experiment_url_names_the_runs_tab_and_machine_learning_mode() -> None:
    url = tracking.experiment_url("sqlite:////tmp/x/mlflow.db", "3", "abc")
    assert url == ("http://127.0.0.1:5000/#/experiments/3/runs?"
                   "workflowType=machine_learning&viewStateShareKey=abc")
    assert tracking.experiment_url("http://10.0.0.1:5000/", "3").startswith("http://10.0.0.1:5000/#/")


def test_view_columns_method_objectives_then_accuracies_ece_ood_cost() -> None:
    keys = {"train_loss", "ece", "clean_accuracy", "ood_accuracy/imdb", "cost/train_time_s",
            "robust_accuracy/pwws", "robust_accuracy/deepwordbug", "avg_queries/pwws"}
    assert tracking.view_metrics(keys, OBJECTIVES) == [
        "clean_accuracy", "robust_accuracy/deepwordbug", "robust_accuracy/pwws", "ece",
        "ood_accuracy/imdb", "cost/train_time_s"]
    state = tracking.view_state(["clean_accuracy"], order_by="clean_accuracy")
    assert state["selectedColumns"] == ["tags.`robustsweep.method`", "metrics.`clean_accuracy`"]
    assert state["columnOrder"] == state["selectedColumns"]
    assert state["orderByKey"] == "metrics.`clean_accuracy`" and state["orderByAsc"] is False


def test_sweep_view_is_saved_in_the_experiment(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    job = {"seed": 0, "data": {"source": "builtin:mr"}, "model": {"source": "builtin:minilm"},
           "train": {"epochs": 1}, "eval": {"attacks": ["deepwordbug"]},
           "method": {"name": "vanilla"},
           "sweep": {"methods": ["vanilla", "pgd"], "mode": "search", "sampler": "tpe",
                     "num_samples_per_method": 2, "asha": {"enabled": False},
                     "objectives": [{"metric": m, "mode": "max"} for m in OBJECTIVES]}}
    params = tracking.sweep_params(job, total_trials=4)
    assert params["methods"] == "vanilla,pgd" and params["sampler"] == "tpe"
    assert params["objectives"] == "max clean_accuracy; max robust_accuracy/deepwordbug"
    assert "method.name" not in params
    parent = tracking.start_run(uri, "exp", "s-sweep", params=params, artifact_root=tmp_path)
    child = tracking.start_run(uri, "exp", "vanilla-000", parent_run_id=parent,
                               artifact_root=tmp_path, tags={"robustsweep.method": "vanilla"})
    tracking.log_metrics(uri, child, {"clean_accuracy": 0.7, "ece": 0.1, "extra/x": 1.0})
    url = tracking.sweep_view_url(uri, parent, "s", OBJECTIVES)
    experiment = tracking.client(uri).get_experiment_by_name("exp")
    assert url.endswith(f"/#/experiments/{experiment.experiment_id}/runs?"
                        f"workflowType=machine_learning&viewStateShareKey={parent}")
    envelope = json.loads(experiment.tags[tracking.VIEW_TAG_PREFIX + parent])
    assert envelope["name"] == "s trials" and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state["selectedColumns"] == ["tags.`robustsweep.method`", "metrics.`clean_accuracy`",
                                        "metrics.`ece`"]
    assert parent in state["searchFilter"]


def test_optuna_study_has_metric_names_and_trials_carry_label_and_run_id(tmp_path: Path) -> None:
    sweep = SweepConfig(methods=["vanilla", "pgd"], num_samples=2,
                        objectives=[{"metric": m} for m in OBJECTIVES])
    space = TrialSpace(resolve_spaces(sweep), {}, balanced=False, seeds=[])
    url = storage_url(sweep, tmp_path)
    searcher = build_searcher(sweep, space=space, seed=0, study_name="s", storage=url)
    config = searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"clean_accuracy": 0.8, "robust_accuracy/deepwordbug": 0.3,
                                      FINAL_KEY: 1.0, "run_id": "run123"})
    study = optuna.load_study(study_name="s", storage=url)
    assert study.metric_names == OBJECTIVES
    attrs = study.trials[0].user_attrs
    assert attrs["label"] == f"{config['method']}-000"
    assert attrs["mlflow_run_id"] == "run123" and attrs["tune_trial_id"] == "t1"
