"""The searcher tells Optuna final values only; samplers, storages, ASHA and resource planning."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from robustsweep.config import SweepConfig
from robustsweep.errors import ConfigError
from robustsweep.jobfile import validate_job
from robustsweep.state import manifest as mf
from robustsweep.sweep.lifecycle import clear_output_dir
from robustsweep.sweep.params import FINAL_KEY, TrialSpace, resolve_spaces
from robustsweep.sweep.plan import build_scheduler, plan_resources
from robustsweep.sweep.search import (
    build_searcher,
    dashboard_command,
    make_sampler,
    make_storage,
    startup_trials,
    storage_url,
)

TwoObjectives = [{"metric": "clean_accuracy"}, {"metric": "robust_accuracy/deepwordbug"}]


def searcher_for(tmp_path: Path, objectives=TwoObjectives, methods=("vanilla", "pgd")):
    sweep = SweepConfig(methods=list(methods), objectives=objectives, num_samples=6)
    space = TrialSpace(resolve_spaces(sweep), {}, balanced=False, seeds=[])
    url = storage_url(sweep, tmp_path)
    return build_searcher(sweep, space=space, seed=0, study_name="s", storage=url), url


def states(url: str) -> list[tuple[str, tuple | None]]:
    study = optuna.load_study(study_name="s", storage=url)
    return [(t.state.name, tuple(t.values) if t.values else None) for t in study.trials]


def test_final_results_complete_and_early_stopped_results_are_pruned(tmp_path: Path):
    searcher, url = searcher_for(tmp_path)
    for trial_id in ("a", "b", "c", "d"):
        assert searcher.suggest(trial_id)["method"] in ("vanilla", "pgd")
    epoch = {"clean_accuracy": 0.8, "epoch": 1}  # no final marker: ASHA stopped it
    searcher.on_trial_result("a", epoch)
    searcher.on_trial_complete("a", {**epoch, "robust_accuracy/deepwordbug": 0.3})
    final = {"clean_accuracy": 0.82, "robust_accuracy/deepwordbug": 0.4, FINAL_KEY: 1.0}
    searcher.on_trial_complete("b", final)
    searcher.on_trial_complete("c", None, error=True)
    searcher.on_trial_complete("d", {"clean_accuracy": 0.9, FINAL_KEY: 1.0})  # objective missing
    searcher.on_trial_complete("b", final)  # a second completion is ignored
    assert states(url) == [
        ("PRUNED", None),
        ("COMPLETE", (0.82, 0.4)),
        ("FAIL", None),
        ("FAIL", None),
    ]


def test_single_objective_intermediate_values_skip_results_without_the_metric(tmp_path: Path):
    searcher, url = searcher_for(tmp_path, objectives=[{"metric": "robust_accuracy/deepwordbug"}])
    searcher.suggest("a")
    searcher.on_trial_result("a", {"clean_accuracy": 0.5, "training_iteration": 1})  # no KeyError
    searcher.on_trial_result("a", {"robust_accuracy/deepwordbug": 0.2, "training_iteration": 2})
    searcher.on_trial_complete("a", {"robust_accuracy/deepwordbug": 0.25, FINAL_KEY: 1.0})
    trial = optuna.load_study(study_name="s", storage=url).trials[0]
    assert trial.state.name == "COMPLETE" and trial.value == 0.25
    assert trial.intermediate_values == {2: 0.2}


def test_searcher_survives_pickling_like_tune_restore(tmp_path: Path):
    import pickle

    searcher, url = searcher_for(tmp_path)
    searcher.suggest("a")
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    restored, _ = searcher_for(tmp_path / "other")
    restored.restore(str(path))
    restored.on_trial_complete(
        "a", {"clean_accuracy": 0.7, "robust_accuracy/deepwordbug": 0.2, FINAL_KEY: 1}
    )
    assert states(url) == [("COMPLETE", (0.7, 0.2))]
    pickle.dumps(restored)


def test_samplers_and_startup_trials():
    assert startup_trials(SweepConfig(num_samples=40)) == 10
    assert startup_trials(SweepConfig(num_samples=4)) == 2
    assert startup_trials(SweepConfig(num_samples=4, n_startup_trials=0)) == 0
    assert isinstance(make_sampler(SweepConfig(sampler="nsga2"), 0), optuna.samplers.NSGAIISampler)
    assert isinstance(make_sampler(SweepConfig(sampler="random"), 0), optuna.samplers.RandomSampler)
    assert isinstance(make_sampler(SweepConfig(), 0), optuna.samplers.TPESampler)


def test_storages_and_dashboard_commands(tmp_path: Path):
    assert storage_url(SweepConfig(), tmp_path) == f"sqlite:///{tmp_path}/optuna.db"
    journal = f"journal:{tmp_path}/j/optuna.log"
    assert isinstance(make_storage(journal), optuna.storages.JournalStorage)
    assert (tmp_path / "j").is_dir()
    assert (
        dashboard_command(journal)
        == f"optuna-dashboard {tmp_path}/j/optuna.log --host 127.0.0.1 --port 8080"
    )
    assert dashboard_command("sqlite:///a/b.db").startswith("optuna-dashboard sqlite:///a/b.db ")
    with pytest.raises(ConfigError, match="expected a database URL"):
        make_storage("optuna.db")


def job(**kw):
    raw = {"name": "t", "train": {"epochs": 3}, "sweep": {"methods": ["vanilla"]}}
    for key, value in kw.items():
        raw[key] = {**raw.get(key, {}), **value}
    return validate_job(raw)


def test_asha_never_stops_a_trial_at_its_last_epoch():
    scheduler = build_scheduler(
        job(
            sweep={
                "methods": ["vanilla"],
                "asha": {"enabled": True, "metric": "train_loss", "mode": "min", "grace_period": 1},
            }
        )
    )
    assert scheduler._time_attr == "epoch" and scheduler._max_t == 2
    assert scheduler._stop_last_trials is False and scheduler.metric == "train_loss"
    assert type(build_scheduler(job())).__name__ == "FIFOScheduler"
    with pytest.raises(ConfigError, match="grace_period"):
        build_scheduler(
            job(train={"epochs": 1}, sweep={"methods": ["vanilla"], "asha": {"enabled": True}})
        )


@pytest.mark.parametrize(
    ("cluster", "free", "scaling", "sweep", "expected"),
    [
        ({"CPU": 2, "trial_driver": 1000}, {"CPU": 2}, {}, {}, (1.0, 2)),
        (
            {"CPU": 8, "trial_driver": 1000},
            {"CPU": 8},
            {"num_workers": 2},
            {"cpus_per_trial_worker": 2},
            (2.0, 2),
        ),
        ({"CPU": 8, "trial_driver": 1000}, {"CPU": 5}, {"cpus_per_worker": 1.5}, {}, (1.5, 3)),
        ({"CPU": 16, "trial_driver": 2}, {"CPU": 16}, {}, {}, (1.0, 2)),  # two trial-driver slots
        (
            {"CPU": 16, "trial_driver": 1000},
            {"CPU": 16},
            {},
            {"max_concurrent_trials": 3},
            (1.0, 3),
        ),
        (
            {"CPU": 16, "GPU": 4, "trial_driver": 1000},
            {"CPU": 16, "GPU": 4},
            {"num_workers": 2, "use_gpu": True},
            {},
            (1.0, 2),
        ),
    ],
)
def test_concurrency_comes_from_free_cpus(monkeypatch, cluster, free, scaling, sweep, expected):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: cluster)
    monkeypatch.setattr(ray, "available_resources", lambda: free)
    cfg = job(scaling=scaling, sweep={"methods": ["vanilla"], **sweep})
    plan = plan_resources(cfg, total=10)
    assert (plan.cpus_per_worker, plan.max_concurrent) == expected
    assert plan_resources(cfg, total=1).max_concurrent == 1


def test_missing_trial_driver_resource_is_a_clear_error(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4})
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 4})
    with pytest.raises(ConfigError, match="--resources='{\"trial_driver\": 100}'"):
        plan_resources(job(), total=2)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1, "trial_driver": 5})
    with pytest.raises(ConfigError, match="a trial needs 2 x 1 CPUs"):
        plan_resources(job(scaling={"num_workers": 2}), total=2)


def _real_manifest(sweep_dir: Path) -> None:
    mf.Manifest.create(
        sweep_dir, job={}, job_file=None, num_samples=1, study_name="s",
        storage="sqlite:///x", tracking_uri=None, experiment="e", parent_run_id=None,
    )


def test_a_new_sweep_never_clobbers_other_files(tmp_path: Path):
    clear_output_dir(tmp_path / "fresh", overwrite=False)  # missing or empty: fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no sweep plus files a sweep never writes"):
        clear_output_dir(other, overwrite=True)
    old = tmp_path / "old"
    (old / "trials" / "t1").mkdir(parents=True)
    _real_manifest(old)
    with pytest.raises(ConfigError, match="--resume .* or pass --overwrite"):
        clear_output_dir(old, overwrite=False)
    clear_output_dir(old, overwrite=True)
    assert old.is_dir() and not any(old.iterdir())  # our entries gone, the directory kept
    partial = tmp_path / "partial"  # a start that died before its manifest
    partial.mkdir()
    (partial / "optuna.db").write_text("")
    with pytest.raises(ConfigError, match="pass --overwrite to start over"):
        clear_output_dir(partial, overwrite=False)
    with pytest.raises(ConfigError, match="no robustsweep manifest"):
        clear_output_dir(partial, overwrite=True)
    assert (partial / "optuna.db").exists()


def test_overwrite_never_deletes_a_project_with_a_lookalike_manifest(tmp_path: Path):
    """The data-loss report: a folder with src/app.py, a README and a manifest.json of its own."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "app.py").write_text("print('hi')\n")
    (project / "README.md").write_text("# mine\n")
    (project / "manifest.json").write_text('{"name": "my-app", "version": 1}')
    with pytest.raises(ConfigError, match="files a sweep never writes \\(README.md, src\\)"):
        clear_output_dir(project, overwrite=True)
    assert (project / "src" / "app.py").read_text() == "print('hi')\n"
    # Only sweep-named entries but a manifest that is not ours: still refused.
    lookalike = tmp_path / "lookalike"
    (lookalike / "trials").mkdir(parents=True)
    (lookalike / "trials" / "keep.txt").write_text("x")
    (lookalike / "manifest.json").write_text('{"version": 1}')
    with pytest.raises(ConfigError, match="not a robustsweep sweep manifest"):
        clear_output_dir(lookalike, overwrite=True)
    assert (lookalike / "trials" / "keep.txt").exists()
    # A real sweep next to a user's file: refused, nothing deleted.
    mixed = tmp_path / "mixed"
    (mixed / "trials").mkdir(parents=True)
    _real_manifest(mixed)
    (mixed / "thesis.tex").write_text("x")
    with pytest.raises(ConfigError, match="holds a sweep plus files a sweep never writes"):
        clear_output_dir(mixed, overwrite=True)
    assert (mixed / "thesis.tex").exists() and (mixed / "manifest.json").exists()
