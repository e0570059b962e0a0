"""Search spaces -> Optuna define-by-run sampling -> the job each trial trains."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from robustsweep.config import SweepConfig
from robustsweep.errors import ConfigError
from robustsweep.jobfile import validate_job
from robustsweep.sweep.params import (
    METHOD_KEY,
    NUMBER_KEY,
    SEED_KEY,
    TrialSpace,
    knob_space,
    resolve_spaces,
    searched_knobs,
    trial_job,
)
from robustsweep.sweep.spaces import KnobDistribution

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
METHODS = ["vanilla", "pgd", "freelb"]


def sweep_cfg(**kw) -> SweepConfig:
    return SweepConfig(methods=METHODS, **kw)


def run_space(space: TrialSpace, n: int, directions=("maximize", "maximize"), seed: int = 0):
    """Ask ``n`` trials of a multi-objective TPE study (telling fake values) -> Tune configs."""
    sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=3, multivariate=True, group=True, constant_liar=True
    )
    study = optuna.create_study(directions=list(directions), sampler=sampler)
    configs = []
    for _ in range(n):
        trial = study.ask()
        constants = space(trial)
        config = {**trial.params, **constants}
        configs.append((trial, config))
        study.tell(trial, [float(len(config)), float(trial.number % 3)])
    return study, configs


def test_resolve_spaces_reads_files_and_applies_overrides():
    spaces = resolve_spaces(
        sweep_cfg(
            spaces={"pgd": {"adv_steps": 2, "adv_lr": {"type": "float", "low": 0.01, "high": 0.02}}}
        )
    )
    assert list(spaces) == METHODS
    assert spaces["vanilla"].searched == {}
    pgd = spaces["pgd"]
    assert pgd.fixed == {"adv_steps": 2} and "adv_steps" not in pgd.searched
    assert pgd.searched["adv_lr"].high == 0.02
    # an override keeps the file's knob order (plots follow it)
    assert list(pgd.searched)[:2] == ["adv_max_norm", "adv_lr"]


def test_resolve_spaces_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="no search space for method 'pgd'"):
        resolve_spaces(SweepConfig(methods=["pgd"], space_dir=str(tmp_path)))


def test_each_trial_samples_only_its_methods_knobs_with_prefixed_names():
    spaces = resolve_spaces(sweep_cfg())
    space = TrialSpace(spaces, {}, balanced=False, seeds=[])
    _, configs = run_space(space, 15)
    seen = set()
    for trial, config in configs:
        method = config[METHOD_KEY]
        seen.add(method)
        assert trial.params[METHOD_KEY] == method  # the sampler picks the method
        knob_params = {k for k in trial.params if k != METHOD_KEY}
        assert knob_params == {f"{method}.{k}" for k in spaces[method].searched}
        for knob, value in searched_knobs(config).items():
            dist = spaces[method].searched[knob]
            if dist.choices is not None:
                assert value in dist.choices
            else:
                assert dist.low <= value <= dist.high
    assert seen == set(METHODS)


def test_balanced_methods_take_turns_and_seeds_rotate():
    space = TrialSpace(resolve_spaces(sweep_cfg()), {}, balanced=True, seeds=[11, 22])
    _, configs = run_space(space, 6)
    assert [c[METHOD_KEY] for _, c in configs] == METHODS * 2
    assert [c[SEED_KEY] for _, c in configs] == [11, 11, 11, 22, 22, 22]
    assert [c[NUMBER_KEY] for _, c in configs] == list(range(6))
    for trial, config in configs:
        assert METHOD_KEY not in trial.params  # not a sampled parameter in this mode
        assert trial.user_attrs[METHOD_KEY] == config[METHOD_KEY]


def test_fixed_knobs_and_train_space():
    spaces = resolve_spaces(sweep_cfg(spaces={"pgd": {"adv_steps": 3}}))
    train = {"lr": KnobDistribution(type="float", low=1e-5, high=1e-4, log=True)}
    space = TrialSpace(spaces, train, balanced=True, seeds=[])
    _, configs = run_space(space, 3)
    pgd_trial, pgd = configs[1]
    assert pgd["pgd.adv_steps"] == 3 and "pgd.adv_steps" not in pgd_trial.params
    for trial, config in configs:
        assert 1e-5 <= config["train.lr"] <= 1e-4
        assert "train.lr" in trial.params


def test_log_and_step_distributions_reach_optuna():
    spaces = resolve_spaces(
        sweep_cfg(
            spaces={
                "pgd": {
                    "adv_max_norm": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
                    "adv_steps": {"type": "int", "low": 1, "high": 5, "step": 2},
                }
            }
        )
    )
    space = TrialSpace(spaces, {}, balanced=True, seeds=[])
    study, configs = run_space(space, 3)
    dists = study.trials[1].distributions
    assert dists["pgd.adv_max_norm"].log is True
    assert dists["pgd.adv_steps"].step == 2
    assert configs[1][1]["pgd.adv_steps"] in (1, 3, 5)


def test_space_is_reproducible_with_a_seed():
    space = TrialSpace(resolve_spaces(sweep_cfg()), {}, balanced=False, seeds=[])
    a = [c for _, c in run_space(space, 8, seed=3)[1]]
    b = [c for _, c in run_space(space, 8, seed=3)[1]]
    assert a == b


def test_trial_job_fills_in_method_knobs_train_and_seed(tmp_path: Path):
    base = validate_job(
        {
            "name": "sw",
            "seed": 5,
            "method": {"name": "pgd", "knobs": {"adv_init_mag": 0.1}},
            "train": {"lr": 3e-5, "epochs": 2},
            "sweep": {"methods": ["pgd", "vanilla"]},
        }
    )
    params = {
        METHOD_KEY: "pgd",
        NUMBER_KEY: 4,
        "pgd.adv_lr": 0.05,
        "pgd.adv_steps": 2,
        "train.lr": 1e-4,
        SEED_KEY: 7,
    }
    cfg = trial_job(
        base, params, output_dir=tmp_path, tracking_uri="sqlite:///x.db", cpus_per_worker=1.5
    )
    assert cfg.method.name == "pgd"
    assert cfg.method.knobs == {"adv_init_mag": 0.1, "adv_lr": 0.05, "adv_steps": 2}
    assert math.isclose(cfg.train.lr, 1e-4) and cfg.train.epochs == 2
    assert cfg.seed == 7 and cfg.sweep is None
    assert cfg.resolved_output_dir() == tmp_path.resolve()
    assert cfg.tracking.tracking_uri == "sqlite:///x.db"
    assert cfg.scaling.cpus_per_worker == 1.5
    # the base job's knobs only apply to its own method; the job seed when no seeds are swept
    other = trial_job(
        base,
        {METHOD_KEY: "vanilla", NUMBER_KEY: 5},
        output_dir=tmp_path,
        tracking_uri=None,
        cpus_per_worker=1,
    )
    assert other.method.knobs == {} and other.seed == 5


def test_knob_space_keeps_file_order_and_log_flags_for_reports():
    spaces = resolve_spaces(sweep_cfg(spaces={"pgd": {"adv_steps": 2}}))
    train = {"lr": KnobDistribution(type="float", low=1e-5, high=1e-4, log=True)}
    knobs = knob_space(spaces, train)
    assert knobs["vanilla"] == [["train.lr", True]]
    assert knobs["pgd"][0] == ["adv_max_norm", True]  # the strength knob first, log scale
    assert "adv_steps" not in [k for k, _ in knobs["pgd"]]  # fixed, not searched
    assert knobs["pgd"][-1] == ["train.lr", True]
