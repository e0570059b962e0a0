"""Report statistics: intervals of older records, McNemar, paired bootstrap, pairing, seeds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from robustsweep.evaluate.metrics import wilson_interval
from robustsweep.report import comparisons, stats
from robustsweep.report import leaderboard as lb
from robustsweep.report.plots import draw_floors, interval_errors, pareto_plot
from robustsweep.report.records import SweepRecords, TrialRecord, TrialSource, trial_record

PNG = b"\x89PNG\r\n\x1a\n"


# ---- intervals -----------------------------------------------------------------------------
def test_older_records_get_n_and_intervals_from_attack_examples():
    old = {
        "robust_accuracy/dwb": 0.25,
        "attack_success_rate/dwb": 12 / 18,
        "attack_examples/dwb": 24.0,
        "attack_clean_accuracy/dwb": 0.75,
    }
    done = stats.complete_intervals(old)
    assert done["robust_accuracy_n/dwb"] == 24 and done["attack_success_rate_n/dwb"] == 18
    assert (done["robust_accuracy_ci_low/dwb"], done["robust_accuracy_ci_high/dwb"]) == (
        wilson_interval(6, 24)
    )
    assert (done["attack_success_rate_ci_low/dwb"], done["attack_success_rate_ci_high/dwb"]) == (
        wilson_interval(12, 18)
    )
    # values already there are kept; without attack_examples nothing is invented
    assert stats.complete_intervals(done) == done
    assert stats.complete_intervals({"robust_accuracy/x": 0.3}) == {"robust_accuracy/x": 0.3}


def test_format_proportion_always_says_n():
    share = stats.proportion(stats.complete_intervals(
        {"robust_accuracy/d": 0.25, "attack_examples/d": 24.0}), "robust_accuracy/d")
    assert stats.format_proportion(share) == "0.2500 [0.1200, 0.4490] n=24"
    bare = stats.proportion({"robust_accuracy/d": 0.25}, "robust_accuracy/d")
    assert stats.format_proportion(bare) == "0.2500 (n unknown)"
    assert stats.proportion({"clean_accuracy": 0.9}, "clean_accuracy") is None
    assert stats.has_interval("proxy_robust_accuracy/d") and not stats.has_interval("ece")


def test_leaderboard_cell_shows_interval_and_trials_csv_counts_as_integers():
    trial = TrialRecord("t", "pgd", "FINISHED", metrics=stats.complete_intervals(
        {"robust_accuracy/d": 0.25, "attack_examples/d": 24.0, "clean_accuracy": 0.8}))
    assert lb.metric_cell(trial, "robust_accuracy/d") == "0.2500 [0.1200, 0.4490] n=24"
    assert lb.metric_cell(trial, "clean_accuracy") == "0.8000"
    records = SweepRecords("s", [trial], [("clean_accuracy", "max")], "clean_accuracy", "here")
    head, rows = lb.trials_table(records)
    row = dict(zip(head, rows[0]))
    assert row["robust_accuracy_n/d"] == "24" and row["robust_accuracy_ci_low/d"] == "0.1200"


# ---- paired tests --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("b", "c", "p"),
    [(0, 0, 1.0), (5, 5, 1.0), (1, 9, 22 / 1024), (9, 1, 22 / 1024), (0, 6, 2 / 64),
     (3, 12, 2 * (1 + 15 + 105 + 455) / 2**15)],
)
def test_mcnemar_exact_golden_values(b: int, c: int, p: float):
    assert stats.mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_handles_many_pairs():
    assert 0.0 <= stats.mcnemar_exact(2000, 2100) <= 1.0
    assert stats.mcnemar_exact(1000, 1000) == 1.0


def test_paired_bootstrap_is_reproducible_and_sane():
    rng = np.random.default_rng(1)
    a = (rng.random(200) < 0.4).astype(float)
    b = (rng.random(200) < 0.2).astype(float)
    low, high = stats.paired_bootstrap(a, b)
    assert (low, high) == stats.paired_bootstrap(a, b)  # fixed seed
    assert low < a.mean() - b.mean() < high
    assert stats.paired_bootstrap(a, a) == (0.0, 0.0)  # identical outcomes: no difference
    assert stats.paired_bootstrap(np.ones(5), np.zeros(5)) == (1.0, 1.0)
    assert all(math.isnan(v) for v in stats.paired_bootstrap(np.array([]), np.array([])))


def outcomes(correct: dict[int, bool], profile_hash: str = "h") -> dict:
    ids = sorted(correct)
    return {"ids": ids, "outcomes": ["failed" if correct[i] else "successful" for i in ids],
            "profile_hash": profile_hash}


def test_compare_pairs_on_shared_ids_and_says_when_it_cannot():
    row = stats.PairedRow("pgd", "pgd-001", 0, "vanilla-000", "same seed", "d")
    ours = outcomes({0: True, 1: True, 2: False, 3: True, 9: True})
    theirs = outcomes({0: False, 1: True, 2: True, 3: False, 7: False})
    done = stats.compare(row, ours, theirs)
    assert done.n == 4 and done.delta == pytest.approx(0.75 - 0.5)
    assert (done.method_only, done.vanilla_only) == (2, 1)
    assert done.p_value == stats.mcnemar_exact(1, 2) == 1.0
    assert done.method_acc == stats.Proportion(0.75, 4, *wilson_interval(3, 4))
    assert "4 shared" in done.note
    none = stats.compare(stats.PairedRow("m", "t", 0, "v", "", "d"), ours,
                         outcomes({20: True, 21: False}))
    assert none.note == "example ids don't overlap" and none.n == 0
    assert comparisons._paired_cells(none)[5:8] == ["", "", ""]  # no number without its n
    other = stats.compare(stats.PairedRow("m", "t", 0, "v", "", "d"), ours,
                          outcomes({0: True}, profile_hash="other"))
    assert "profile hash" in other.note
    missing = stats.compare(stats.PairedRow("m", "t", 0, "v", "", "d"), ours, None)
    assert "no per-example outcomes" in missing.note


# ---- seeds ---------------------------------------------------------------------------------
def seeded(trial_id: str, method: str, seed: int, knobs: dict, kept: int, n: int = 50,
           number: int = 0) -> TrialRecord:
    """A finished trial whose first ``kept`` of ``n`` examples survive the attack."""
    correct = {i: i < kept for i in range(n)}
    results = {
        "method": method, "knobs": knobs, "seed": seed, "trial_id": trial_id,
        "metrics": {"clean_accuracy": 0.8 + seed / 100, "robust_accuracy/d": kept / n,
                    "attack_examples/d": float(n), "ece": 0.05 + seed / 100},
        "attack_outcomes": {"d": outcomes(correct)},
    }
    return trial_record(TrialSource(trial_id, method, "FINISHED", results=results,
                                    optuna_trial=number), {})


def grid() -> SweepRecords:
    trials = [
        seeded("v0", "vanilla", 0, {}, 10, number=0),
        seeded("v1", "vanilla", 1, {}, 12, number=1),
        seeded("g0", "pgd", 0, {"adv_lr": 0.1}, 20, number=2),
        seeded("g1", "pgd", 1, {"adv_lr": 0.1}, 24, number=3),
        seeded("h0", "pgd", 0, {"adv_lr": 0.01}, 5, number=4),
    ]
    return SweepRecords("grid", trials, [("clean_accuracy", "max"), ("robust_accuracy/d", "max")],
                        "robust_accuracy/d", "here")


def test_each_seed_is_paired_with_the_vanilla_trial_of_its_seed():
    records = grid()
    winners = lb.best_per_method(records)
    assert [t.trial_id for t in winners] == ["g1", "v1"]
    rows = comparisons.paired_rows(records, winners)
    assert [(r.trial, r.seed, r.vanilla, r.partner) for r in rows] == [
        ("pgd-002", 0, "vanilla-000", "same seed"),
        ("pgd-003", 1, "vanilla-001", "same seed"),
    ]
    assert rows[0].delta == pytest.approx((20 - 10) / 50)
    assert (rows[0].method_only, rows[0].vanilla_only) == (10, 0)
    assert rows[0].p_value == pytest.approx(2 / 1024)


def test_a_seed_without_its_vanilla_falls_back_to_the_best_vanilla():
    records = grid()
    records.trials.append(seeded("g2", "pgd", 2, {"adv_lr": 0.1}, 30, number=5))
    rows = comparisons.paired_rows(records, lb.best_per_method(records))
    assert (rows[-1].seed, rows[-1].vanilla, rows[-1].partner) == (2, "vanilla-001",
                                                                    "best vanilla")


def test_per_method_over_seeds_mean_std_and_pooled_wilson():
    records = grid()
    assert [[t.trial_id for t in g] for g in comparisons.seed_groups(records)] == [
        ["v0", "v1"], ["g0", "g1"]]
    head, rows = comparisons.seeds_table(records, ["clean_accuracy", "robust_accuracy/d", "ece"],
                                   lb.header)
    assert head == ["method", "trials", "seeds", "clean acc mean ± std",
                    "robust acc (d) mean ± std", "robust acc (d) pooled", "ECE mean ± std"]
    pgd = dict(zip(head, rows[1]))
    assert pgd["seeds"] == "0, 1" and pgd["clean acc mean ± std"] == "0.8050 ± 0.0071"
    assert pgd["robust acc (d) mean ± std"] == "0.4400 ± 0.0566"
    low, high = wilson_interval(44, 100)
    assert pgd["robust acc (d) pooled"] == f"0.4400 [{low:.4f}, {high:.4f}] n=100"


# ---- the Pareto plot -----------------------------------------------------------------------
def test_pareto_plot_error_bars_and_rank_min_floors(tmp_path: Path):
    records = grid()
    records.rank_min = {"clean_accuracy": 0.805, "robust_accuracy/d": 0.3, "ece": 0.1}
    errors = interval_errors(records.trials, "robust_accuracy/d")
    low, high = wilson_interval(10, 50)
    assert errors[0][0] == pytest.approx(0.2 - low) and errors[1][0] == pytest.approx(high - 0.2)
    assert interval_errors(records.trials, "clean_accuracy") is None

    class Axes:
        def __init__(self) -> None:
            self.lines: list = []

        def axvline(self, x, **kw):
            self.lines.append(("v", x))

        def axhline(self, y, **kw):
            self.lines.append(("h", y))

        def plot(self, *args, **kw):
            self.lines.append(("legend", kw["label"]))

    axes = Axes()
    assert draw_floors(axes, records.rank_min, "clean_accuracy", "robust_accuracy/d") == [
        "rank_min: ece ≥ 0.1"]
    assert axes.lines == [
        ("v", 0.805), ("h", 0.3), ("legend", "rank_min: ece ≥ 0.1 (not on these axes)")]
    path, _ = pareto_plot(records, tmp_path / "p.png")
    assert path.read_bytes().startswith(PNG)


def test_seeds_of_one_setup_share_a_setup_hash_and_other_setups_stay_apart():
    from robustsweep.jobfile import validate_job
    from robustsweep.train.results import config_hash, setup_hash

    base = validate_job({"name": "x"}, origin="test")
    other_seed = validate_job({"name": "x", "seed": 3}, origin="test")
    other_lr = validate_job({"name": "x", "train": {"lr": 1e-4}}, origin="test")
    assert setup_hash(base) == setup_hash(other_seed) != setup_hash(other_lr)
    assert config_hash(base) != config_hash(other_seed)
    records = grid()
    g0, g1 = (t for t in records.trials if t.trial_id in ("g0", "g1"))
    g0.setup_hash, g1.setup_hash = "lr-a", "lr-b"  # same knobs, different train settings
    assert [[t.trial_id for t in g] for g in comparisons.seed_groups(records)] == [["v0", "v1"]]
