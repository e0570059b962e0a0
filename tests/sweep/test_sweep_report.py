"""Reports from results.json records (and from MLflow): Pareto math, leaderboard, figures."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from fake_sweep import FRONT, KNOB_SPACE, SWEEP, TRIALS, make_sweep_dir, metrics

from robustsweep import tracking
from robustsweep.cli import main
from robustsweep.config import flatten
from robustsweep.errors import ConfigError
from robustsweep.evaluate.outcomes import ExampleResult, summarize
from robustsweep.report import build_report
from robustsweep.report import leaderboard as lb
from robustsweep.report.pareto import dominates, pareto_front
from robustsweep.report.plots import pareto_axes, pareto_plot, varying_knobs
from robustsweep.report.records import from_mlflow, from_sweep_dir, load
from robustsweep.tracking import report_tags

PNG = b"\x89PNG\r\n\x1a\n"


# ---- Pareto math ---------------------------------------------------------------------------------
def test_dominates_respects_modes():
    assert dominates((0.9, 0.5), (0.8, 0.5), ["max", "max"])
    assert not dominates((0.9, 0.5), (0.9, 0.5), ["max", "max"])  # equal: no strict gain
    assert not dominates((0.9, 0.4), (0.8, 0.5), ["max", "max"])
    assert dominates((0.9, 0.1), (0.8, 0.2), ["max", "min"])  # lower ECE is better
    assert not dominates((0.9, 0.3), (0.8, 0.2), ["max", "min"])


def test_pareto_front_two_and_three_objectives():
    points = [(0.84, 0.10), (0.83, 0.25), (0.80, 0.20), (0.78, 0.35), (0.78, 0.35), (0.70, 0.30)]
    assert pareto_front(points, ["max", "max"]) == [0, 1, 3, 4]  # ties on the front both stay
    assert pareto_front([], ["max", "max"]) == []
    assert pareto_front([(1.0, 2.0, 3.0)], ["max", "min", "max"]) == [0]
    three = [(0.8, 0.2, 0.10), (0.8, 0.2, 0.05), (0.9, 0.1, 0.20)]
    assert pareto_front(three, ["max", "max", "min"]) == [1, 2]


# ---- records -------------------------------------------------------------------------------------
def test_records_from_sweep_dir_prefer_results_json(tmp_path: Path):
    records = from_sweep_dir(make_sweep_dir(tmp_path))
    by_id = {t.trial_id: t for t in records.trials}
    assert len(records.trials) == len(TRIALS)
    assert records.objectives == [("clean_accuracy", "max"), ("robust_accuracy/deepwordbug", "max")]
    assert records.rank_by == "robust_accuracy/deepwordbug" and records.knob_space == KNOB_SPACE
    assert by_id["v0"].metrics["clean_accuracy"] == 0.84  # not the stale manifest value
    assert by_id["v0"].run_id == "run-v0" and by_id["g1"].label == "pgd-001"
    assert by_id["p1"].status == "PRUNED" and by_id["p1"].metrics["clean_accuracy"] == 0.90
    assert by_id["x7"].status == "FAILED" and by_id["x7"].metrics == {}
    assert records.mode_of("ece") == "min" and records.mode_of("ood_accuracy/imdb") == "max"


def test_trials_that_tune_lost_still_count_when_they_wrote_results(tmp_path: Path):
    make_sweep_dir(tmp_path)
    lost = tmp_path / "trials" / "lost1"
    lost.mkdir()
    src = json.loads((tmp_path / "trials" / "g1" / "results.json").read_text())
    (lost / "results.json").write_text(json.dumps({**src, "trial_id": "lost1"}))
    assert "lost1" in {t.trial_id for t in from_sweep_dir(tmp_path).finished()}


# ---- leaderboard ---------------------------------------------------------------------------------
def test_leaderboard_best_finished_trial_per_method(tmp_path: Path):
    records = from_sweep_dir(make_sweep_dir(tmp_path))
    best = lb.best_per_method(records)
    assert [t.trial_id for t in best] == [
        "g4",
        "f2",
        "v3",
    ]  # by robust accuracy, pruned p1 excluded
    head, rows = lb.leaderboard_rows(records)
    assert head[:4] == ["rank", "method", "trial", "trials (done/pruned/failed)"]
    assert head[4:-1] == [
        "clean acc",
        "robust acc (deepwordbug)",
        "ASR (deepwordbug)",
        "ECE",
        "OOD acc (imdb)",
        "AUROC (news)",
        "fwd+bwd passes",
        "train s",
    ]
    assert rows[0][:5] == ["1", "pgd", "pgd-004", "2/1/0", "0.7800"]
    assert rows[1][3] == "2/0/1"
    assert "adv_max_norm=1.5" in rows[0][-1]


def test_leaderboard_rank_by_min_metric(tmp_path: Path):
    records = from_sweep_dir(make_sweep_dir(tmp_path))
    records.rank_by = "ece"
    assert lb.best_per_method(records)[0].trial_id == "v0"  # lowest ECE first


def test_leaderboard_floors_exclude_weak_trials(tmp_path: Path):
    records = from_sweep_dir(make_sweep_dir(tmp_path))
    records.rank_min = {"clean_accuracy": 0.80}  # g4 (0.78) is more robust but below the floor
    assert [t.trial_id for t in lb.best_per_method(records)] == ["g1", "f2", "v3"]
    records.rank_min = {"clean_accuracy": 0.95}
    assert lb.best_per_method(records) == [] and lb.leaderboard_rows(records)[1] == []


# ---- figures -------------------------------------------------------------------------------------
def test_pareto_plot_excludes_pruned_trials_from_the_front(tmp_path: Path):
    records = from_sweep_dir(make_sweep_dir(tmp_path))
    assert pareto_axes(records) == ("clean_accuracy", "robust_accuracy/deepwordbug")
    path, front = pareto_plot(records, tmp_path / "p.png")
    assert {t.trial_id for t in front} == FRONT
    assert path.read_bytes().startswith(PNG)


def test_pareto_axes_fall_back_to_a_measured_robust_metric(tmp_path: Path):
    records = from_sweep_dir(make_sweep_dir(tmp_path))
    records.objectives = [("clean_accuracy", "max")]
    assert pareto_axes(records) == ("clean_accuracy", "robust_accuracy/deepwordbug")
    for trial in records.trials:
        trial.metrics = {"clean_accuracy": 0.5}
    assert pareto_axes(records) is None and pareto_plot(records, tmp_path / "none.png") is None


def test_only_searched_knobs_are_plotted(tmp_path: Path):
    records = from_sweep_dir(make_sweep_dir(tmp_path))
    pgd = [t for t in records.trials if t.method == "pgd"]
    # results.json stores knobs sorted; the search space puts the strength knob first
    assert varying_knobs(pgd) == ["adv_lr", "adv_max_norm", "adv_steps", "norm_type"]
    space_order = [k for k, _ in KNOB_SPACE["pgd"]]
    assert varying_knobs(pgd, space_order) == ["adv_max_norm", "adv_lr", "adv_steps", "norm_type"]
    assert varying_knobs([t for t in records.trials if t.method == "vanilla"]) == []


def test_knob_plot_wraps_many_knobs_and_gives_each_kind_its_own_axis(tmp_path: Path, monkeypatch):
    """8 knobs wrap into rows of KNOB_PLOT_COLUMNS (not one 2,816-px row); an integer knob gets
    integer ticks, a categorical one named ticks, and every point its trial number."""
    from robustsweep.report import plots
    from robustsweep.report.records import SweepRecords, TrialRecord

    trials = [
        TrialRecord(trial_id=f"t{i}", method="m", status="FINISHED", optuna_trial=i,
                    knobs={"steps": 1 + i % 3, "norm": ["l2", "linf"][i % 2], "lr": 1e-5 * (1 + i),
                           **{f"k{j}": 0.1 * ((i + j) % 4) for j in range(5)}},
                    metrics={"clean_accuracy": 0.5 + 0.01 * i})
        for i in range(6)
    ]
    records = SweepRecords(name="s", trials=trials, objectives=[("clean_accuracy", "max")],
                           rank_by="clean_accuracy", source="test")
    captured = {}
    real_savefig = plots._pyplot().Figure.savefig

    def keep(fig, path, *args, **kwargs):
        captured["fig"] = fig
        return real_savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(plots._pyplot().Figure, "savefig", keep)
    assert plots.knob_plot(records, "m", ["clean_accuracy"], tmp_path / "k.png") is not None
    fig = captured["fig"]
    width, height = fig.get_size_inches() * fig.dpi
    assert width <= 1600 and height >= 2 * 2.8 * fig.dpi * 0.99  # 8 knobs: 2 rows of 4
    panels = {ax.get_xlabel(): ax for ax in fig.axes if ax.get_xlabel()}
    assert len(panels) == 8
    assert list(panels["steps"].get_xticks()) == [1, 2, 3]
    assert [t.get_text() for t in panels["norm"].get_xticklabels()] == ["l2", "linf"]
    labels = {child.get_text() for child in panels["steps"].texts}
    assert labels == {"0", "1", "2", "3", "4", "5"}


# ---- the report ----------------------------------------------------------------------------------
def test_build_report_from_a_sweep_dir(tmp_path: Path):
    sweep = make_sweep_dir(tmp_path / "sweep")
    report = build_report(sweep, log_to_mlflow=False)
    out = sweep / "report"
    assert report.out_dir == out.resolve()
    names = {p.name for p in report.files}
    assert names == {
        "leaderboard.md",
        "leaderboard.csv",
        "trials.csv",
        "paired_vs_vanilla.csv",
        "seeds.csv",
        "pareto.png",
        "knobs_pgd.png",
        "knobs_freelb.png",
    }
    for name in ("pareto.png", "knobs_pgd.png"):
        assert (out / name).read_bytes().startswith(PNG)
    markdown = (out / "leaderboard.md").read_text()
    assert "| 1 | pgd | pgd-004 |" in markdown and "![Pareto front](pareto.png)" in markdown
    assert "never enter the Pareto front" in markdown
    with open(out / "leaderboard.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == report.head and len(rows) == 4
    with open(out / "trials.csv") as handle:
        trials = list(csv.DictReader(handle))
    assert {r["status"] for r in trials} == {"FINISHED", "PRUNED", "FAILED"} and len(trials) == len(
        TRIALS
    )


def test_an_unreachable_mlflow_only_skips_the_upload(tmp_path: Path, monkeypatch, capsys):
    def down(*args, **kwargs):
        raise tracking.TrackingError("MLflow log failed: connection refused")

    monkeypatch.setattr(tracking, "log_artifacts", down)
    sweep = make_sweep_dir(tmp_path, tracking_uri="http://127.0.0.1:9", parent_run_id="abc")
    report = build_report(sweep)
    assert report.logged_to is None and (sweep / "report" / "pareto.png").is_file()
    assert "report not logged to MLflow" in capsys.readouterr().err


def fill_mlflow(uri: str, artifact_root: Path) -> str:
    """Parent + child runs as a sweep logs them (run_trial params/tags, statuses)."""
    parent = tracking.start_run(
        uri,
        "robustsweep",
        "fake-sweep",
        artifact_root=artifact_root,
        tags={"robustsweep.kind": "sweep", **report_tags(SWEEP, KNOB_SPACE)},
    )
    for trial_id, method, number, status, knobs, clean, robust in TRIALS:
        params = {
            "method.name": method,
            "seed": 0,
            "train.lr": 5e-5,
            **{f"method.knobs.{k}": v for k, v in knobs.items()},
        }
        tags = {
            "robustsweep.method": method,
            "robustsweep.trial_id": trial_id,
            "robustsweep.optuna_trial": str(number),
        }
        run = tracking.start_run(
            uri,
            "robustsweep",
            f"{method}-{number:03d}",
            params=params,
            tags=tags,
            parent_run_id=parent,
            artifact_root=artifact_root,
        )
        if status != "FAILED":
            m = metrics(clean, robust, method)
            if status == "PRUNED":
                m = {"clean_accuracy": clean, "robust_accuracy/deepwordbug": robust}
            tracking.log_metrics(uri, run, m, step=1)
        if status != "FINISHED":
            tracking.set_tags(uri, run, {"robustsweep.status": status.lower()})
        tracking.end_run(
            uri, run, {"FINISHED": "FINISHED", "PRUNED": "KILLED", "FAILED": "FAILED"}[status]
        )
    return parent


def test_report_from_an_mlflow_parent_run_matches_the_dir_report(tmp_path: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = fill_mlflow(uri, tmp_path / "artifacts")
    records = from_mlflow(parent, uri)
    assert {t.trial_id: t.status for t in records.trials} == {t[0]: t[3] for t in TRIALS}
    assert records.objectives == [("clean_accuracy", "max"), ("robust_accuracy/deepwordbug", "max")]
    assert records.knob_space == KNOB_SPACE and records.rank_min == {}
    g1 = next(t for t in records.trials if t.trial_id == "g1")
    assert g1.knobs["adv_max_norm"] == 0.1 and g1.knobs["norm_type"] == "l2"
    assert "train.lr" not in g1.knobs  # an unsearched train setting is not a knob
    report = build_report(parent, out_dir=tmp_path / "from_run", tracking_uri=uri)
    dir_report = build_report(make_sweep_dir(tmp_path / "sweep"), log_to_mlflow=False)
    assert report.rows == dir_report.rows  # knobs column included
    assert report.logged_to == parent
    logged = {a.path for a in tracking.client(uri).list_artifacts(parent, "report")}
    assert {"report/leaderboard.md", "report/leaderboard.csv", "report/pareto.png"} <= logged
    assert "best/robust_accuracy/deepwordbug" in tracking.client(uri).get_run(parent).data.metrics


# ---- one report whichever way it is asked ------------------------------------------------------
N_ATTACKED = 100


def attacked(trial_id: str, clean: float, robust: float) -> list[ExampleResult]:
    """Per-example outcomes with the trial's clean and robust accuracy over N_ATTACKED ids."""
    skipped, kept = round(N_ATTACKED * (1 - clean)), round(N_ATTACKED * robust)
    order = random.Random(trial_id).sample(range(N_ATTACKED), N_ATTACKED)
    outcome = {i: "skipped" for i in order[:skipped]}
    outcome.update({i: "failed" for i in order[skipped : skipped + kept]})
    return [
        ExampleResult(i, 1, outcome.get(i, "successful"), 1, 1, 10, 10, 1, 0.1, "t", "t")
        for i in range(N_ATTACKED)
    ]


def enrich_sweep(sweep: Path, run_ids: dict[str, str]) -> None:
    """What a real trial adds to the fake sweep: n/intervals, per-example outcomes, trial.json."""
    for trial_id, method, _, status, knobs, clean, robust in TRIALS:
        trial_dir = sweep / "trials" / trial_id
        job = {"seed": 0, "method": {"name": method, "knobs": knobs}}
        (trial_dir / "trial.json").write_text(
            json.dumps({"job": job, "mlflow_run_id": run_ids[trial_id]})
        )
        if status != "FINISHED":
            continue
        rows = attacked(trial_id, clean, robust)
        record = json.loads((trial_dir / "results.json").read_text())
        record["metrics"].update(summarize(rows, "deepwordbug"))
        record["attack_outcomes"] = {
            "deepwordbug": {
                "ids": [r.example_id for r in rows],
                "outcomes": [r.outcome for r in rows],
                "profile_hash": "h",
            }
        }
        (trial_dir / "results.json").write_text(json.dumps(record, sort_keys=True))


def fill_mlflow_like_a_sweep(uri: str, sweep: Path) -> str:
    """The fake sweep as a real one logs it: parent run, child runs, results.json artifacts."""
    parent = tracking.start_run(
        uri,
        "robustsweep",
        "fake-sweep",
        artifact_root=sweep / "mlartifacts",
        tags={"robustsweep.sweep_dir": str(sweep.resolve()), **report_tags(SWEEP, KNOB_SPACE)},
    )
    make_sweep_dir(sweep, tracking_uri=uri, parent_run_id=parent)
    run_ids = {}
    for trial_id, method, number, status, knobs, *_ in TRIALS:
        job = {"method": {"name": method, "knobs": knobs}, "seed": 0, "train": {"lr": 5e-5}}
        run_ids[trial_id] = tracking.start_run(
            uri,
            "robustsweep",
            f"{method}-{number:03d}",
            params=flatten(job),
            tags={
                "robustsweep.method": method,
                "robustsweep.trial_id": trial_id,
                "robustsweep.optuna_trial": str(number),
            },
            parent_run_id=parent,
            artifact_root=sweep / "mlartifacts",
        )
    enrich_sweep(sweep, run_ids)
    for trial_id, _, _, status, *_ in TRIALS:
        run, trial_dir = run_ids[trial_id], sweep / "trials" / trial_id
        if status == "FINISHED":
            results = json.loads((trial_dir / "results.json").read_text())
            tracking.log_metrics(uri, run, results["metrics"], step=2)
            tracking.log_artifacts(uri, run, [trial_dir / "results.json"])
        elif status == "PRUNED":
            entry = json.loads((sweep / "manifest.json").read_text())["trials"][trial_id]
            tracking.log_metrics(
                uri, run, {k: v for k, v in entry["metrics"].items() if k != "epoch"}, step=1
            )
            tracking.set_tags(uri, run, {"robustsweep.status": "pruned"})
        else:
            tracking.set_tags(uri, run, {"robustsweep.status": "failed"})
        end = {"FINISHED": "FINISHED", "PRUNED": "KILLED"}.get(status, "FAILED")
        tracking.end_run(uri, run, end)
    return parent


def test_report_from_the_sweep_dir_and_its_parent_run_are_byte_identical(tmp_path: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = tmp_path / "sweep"
    parent = fill_mlflow_like_a_sweep(uri, sweep)
    from_dir = build_report(sweep, out_dir=tmp_path / "a", log_to_mlflow=False)
    build_report(parent, out_dir=tmp_path / "b", tracking_uri=uri, log_to_mlflow=False)
    for name in ("leaderboard.md", "trials.csv", "leaderboard.csv", "paired_vs_vanilla.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    markdown = from_dir.markdown
    assert f"MLflow parent run `{parent}`" in markdown
    assert "0.3500 [0.2636, 0.4475] n=100" in markdown
    assert "## Paired comparison against vanilla" in markdown
    knobs = from_dir.rows[0][-1]
    assert "train.lr" not in knobs and "clean_weight=" in knobs  # full knobs, no train leak
    with open(tmp_path / "b" / "paired_vs_vanilla.csv") as handle:
        paired = list(csv.DictReader(handle))
    assert {r["trial"] for r in paired} == {"pgd-004", "freelb-002"}
    assert all(r["vs vanilla"] == "vanilla-003 (same seed)" for r in paired)
    with open(tmp_path / "a" / "trials.csv") as handle:
        head = next(csv.reader(handle))
    assert {"robust_accuracy_n/deepwordbug", "robust_accuracy_ci_low/deepwordbug",
            "attack_success_rate_ci_high/deepwordbug"} <= set(head)


def test_report_from_a_plain_dir_of_results_records(tmp_path: Path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = tmp_path / "sweep"
    fill_mlflow_like_a_sweep(uri, sweep)
    records_dir = tmp_path / "results" / "reproduce_mr"
    for results in sorted(sweep.glob("trials/*/results.json")):
        target = records_dir / "nested" / f"{results.parent.name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(results.read_text())
    (records_dir / "notes.json").write_text(json.dumps({"not": "a record"}))
    assert main(["report", str(records_dir), "--no-mlflow"]) == 0
    assert "pgd-g4" in capsys.readouterr().out
    markdown = (records_dir / "report" / "leaderboard.md").read_text()
    assert "| 1 | pgd | pgd-g4 |" in markdown and "0.3500 [0.2636, 0.4475] n=100" in markdown
    assert "vanilla-v3 (same seed)" in markdown  # outcomes travel with the records
    assert main(["report", str(records_dir), "--no-mlflow"]) == 0  # its own report is skipped
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no results records"):
        load(str(tmp_path / "empty"))


def test_load_needs_a_dir_or_a_tracking_uri(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="no such sweep dir"):
        load(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="MLflow run nope"):
        load("nope", f"sqlite:///{tmp_path}/m.db")


def test_report_and_sweep_commands(tmp_path: Path, capsys):
    sweep = make_sweep_dir(tmp_path / "sweep")
    assert main(["report", str(sweep), "--no-mlflow", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert (
        "Leaderboard" in out and "pgd-004" in out and (tmp_path / "r" / "leaderboard.md").is_file()
    )
    assert main(["sweep"]) == 2
    assert "give a job YAML" in capsys.readouterr().err
    assert main(["sweep", "jobs/x.yaml", "--resume", str(sweep)]) == 2
    assert "--resume takes the sweep dir only" in capsys.readouterr().err
