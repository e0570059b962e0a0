"""Grid sweeps (methods x seeds x chosen knob values), seeds for knob-less methods, and the
records directory that lets a grid continue on another machine."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from robustsweep.config import SweepConfig
from robustsweep.jobfile import validate_job
from robustsweep.sweep import collect
from robustsweep.sweep.params import (
    GRID_CELL_KEY,
    METHOD_KEY,
    SEED_KEY,
    TrialSpace,
    grid_cells,
    resolve_spaces,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def grid(**kw) -> SweepConfig:
    return SweepConfig(mode="grid", **kw)


def ask(space: TrialSpace, n: int, study: optuna.Study | None = None, fail: set[int] = frozenset()):
    study = study or optuna.create_study(directions=["maximize", "maximize"])
    configs = []
    for _ in range(n):
        trial = study.ask()
        config = {**trial.params, **space(trial)}
        configs.append(config)
        if trial.number in fail:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, [0.5, 0.5])
    return study, configs


def test_grid_cells_are_seed_major_with_the_product_of_choices():
    sweep = grid(
        methods=["vanilla", "rsmi"],
        seeds=[0, 1],
        spaces={"rsmi": {"multi_mask": {"type": "int", "choices": [0, 2]}, "noise_sigma": 0.2}},
    )
    cells = grid_cells(sweep, job_seed=7)
    assert [(c.method, dict(c.knobs), c.seed) for c in cells] == [
        ("vanilla", {}, 0),
        ("rsmi", {"noise_sigma": 0.2, "multi_mask": 0}, 0),
        ("rsmi", {"noise_sigma": 0.2, "multi_mask": 2}, 0),
        ("vanilla", {}, 1),
        ("rsmi", {"noise_sigma": 0.2, "multi_mask": 0}, 1),
        ("rsmi", {"noise_sigma": 0.2, "multi_mask": 2}, 1),
    ]
    assert sweep.total_samples() == 6
    assert [c.seed for c in grid_cells(grid(methods=["pgd"]), job_seed=7)] == [7]


def test_grid_trials_take_each_cell_once_and_failed_cells_come_back():
    sweep = grid(methods=["vanilla", "pgd"], seeds=[0, 1])
    cells = grid_cells(sweep, 0)
    space = TrialSpace(resolve_spaces(sweep), {}, balanced=False, seeds=[0, 1], grid=cells)
    study, configs = ask(space, 3, fail={1})
    # Cell 1 (pgd, seed 0) failed: the next trial takes it again before moving on.
    assert [(c[METHOD_KEY], c[SEED_KEY]) for c in configs] == [
        ("vanilla", 0), ("pgd", 0), ("pgd", 0)]
    # A resumed driver asks the same study: it continues with the unclaimed cells only.
    _, more = ask(space, 2, study=study)
    assert [(c[METHOD_KEY], c[SEED_KEY]) for c in more] == [("vanilla", 1), ("pgd", 1)]
    assert all(not k.startswith("pgd.") for c in configs for k in c)  # paper defaults only
    keys = [t.user_attrs[GRID_CELL_KEY] for t in study.trials]
    assert keys[-1] == "pgdseed=1"


def test_grid_rejects_ranges_and_sample_counts():
    with pytest.raises(ValueError, match="mode grid takes a fixed value or"):
        grid(methods=["pgd"], spaces={"pgd": {"adv_lr": {"type": "float", "low": 0.1, "high": 1}}})
    with pytest.raises(ValueError, match="drop num_samples"):
        grid(methods=["pgd"], num_samples_per_method=2)


def test_knobless_methods_take_a_new_seed_per_repeat():
    """Three vanilla trials with one seed would train one model three times."""
    sweep = SweepConfig(methods=["vanilla", "pgd"], num_samples_per_method=3)
    space = TrialSpace(resolve_spaces(sweep), {}, balanced=True, seeds=[], base_seed=5)
    _, configs = ask(space, 6)
    vanilla = [c[SEED_KEY] for c in configs if c[METHOD_KEY] == "vanilla"]
    assert vanilla == [5, 6, 7]
    assert all(SEED_KEY not in c for c in configs if c[METHOD_KEY] == "pgd")  # knobs searched


def test_records_dir_skips_recorded_cells(tmp_path: Path):
    from robustsweep.train.results import config_hash

    raw = {
        "name": "g",
        "data": {"source": "builtin:mr", "train_size": 8, "eval_size": 8},
        "model": {"source": "builtin:minilm"},
        "sweep": {"mode": "grid", "methods": ["vanilla", "pgd"], "seeds": [0, 1]},
    }
    base = validate_job(raw, origin="test")
    cells = grid_cells(base.sweep, base.seed)
    records = tmp_path / "records"
    assert collect.pending_cells(base, cells, records) == cells  # missing dir: all pending
    # The record a finished pgd/seed-1 trial writes carries the hash of the job it trained.
    trained = validate_job(
        {**raw, "seed": 1, "method": {"name": "pgd", "knobs": {}}, "sweep": None}, origin="t"
    )
    record = {"method": "pgd", "seed": 1, "config_hash": config_hash(trained), "metrics": {}}
    path = collect.collect(record, records)
    assert path.name == f"pgd-seed1-{record['config_hash']}.json"
    assert json.loads(path.read_text()) == record
    (records / "junk.json").write_text("not json")
    pending = collect.pending_cells(base, cells, records)
    assert [(c.method, c.seed) for c in pending] == [("vanilla", 0), ("pgd", 0), ("vanilla", 1)]


def test_config_hash_ignores_values_equal_to_the_defaults():
    """A records dir stays valid when the schema gains a field with a default."""
    from robustsweep.config import TrainConfig
    from robustsweep.train.results import config_hash

    raw = {"name": "h", "data": {"source": "builtin:mr"}, "model": {"source": "builtin:minilm"}}
    default_epochs = TrainConfig.model_fields["epochs"].default
    plain = validate_job(raw, origin="t")
    spelled = validate_job({**raw, "train": {"epochs": default_epochs}}, origin="t")
    other = validate_job({**raw, "train": {"epochs": default_epochs + 1}}, origin="t")
    assert config_hash(plain) == config_hash(spelled) != config_hash(other)
