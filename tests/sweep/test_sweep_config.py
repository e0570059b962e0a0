"""The sweep section of the job schema: defaults, cross-field rules, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustsweep.config import SweepConfig
from robustsweep.errors import ConfigError
from robustsweep.jobfile import load_job, validate_job

ROOT = Path(__file__).resolve().parents[2]


def job(**sweep) -> dict:
    return {"name": "t", "sweep": sweep}


def test_defaults_are_a_valid_single_objective_sweep():
    sweep = SweepConfig()
    assert sweep.methods == ["vanilla"]
    assert sweep.objective_metrics() == ["clean_accuracy"]
    assert sweep.total_samples() == 4
    assert sweep.trial_resources == {"trial_driver": 1.0}
    assert sweep.asha_metric_mode() == ("clean_accuracy", "max")


def test_total_samples_per_method_or_total():
    assert SweepConfig(methods=["vanilla", "pgd"], num_samples_per_method=3).total_samples() == 6
    assert SweepConfig(methods=["vanilla", "pgd"], num_samples=5).total_samples() == 5


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"num_samples": 4, "num_samples_per_method": 2}, "not both"),
        ({"methods": ["nope"]}, "unknown method 'nope'"),
        ({"methods": ["pgd", "pgd"]}, "must not repeat"),
        ({"methods": []}, "at least 1"),
        (
            {"objectives": [{"metric": "clean_accuracy"}, {"metric": "clean_accuracy"}]},
            "must not repeat",
        ),
        (
            {"objectives": [{"metric": "a"}, {"metric": "b"}], "asha": {"enabled": True}},
            "asha.metric is required",
        ),
        ({"objectives": [{"metric": "clean_accuracy", "mode": "up"}]}, "objectives.0.mode"),
        ({"samplr": "tpe"}, "sweep.samplr: unknown key"),
        ({"asha": {"enabled": True, "grace": 1}}, "sweep.asha.grace: unknown key"),
        ({"methods": ["pgd"], "spaces": {"freelb": {"adv_lr": 0.1}}}, "spaces.freelb: not one of"),
        (
            {"methods": ["pgd"], "spaces": {"pgd": {"epsilon": 0.1}}},
            "spaces.pgd.epsilon: not a knob",
        ),
        (
            {"methods": ["pgd"], "spaces": {"pgd": {"adv_steps": -1}}},
            "spaces.pgd.adv_steps: value -1 is invalid",
        ),
        (
            {
                "methods": ["pgd"],
                "spaces": {"pgd": {"adv_lr": {"type": "float", "low": 1, "high": 0}}},
            },
            "low 1.0 > high 0.0",
        ),
        (
            {"train_space": {"lr_max": {"type": "float", "low": 1e-5, "high": 1e-4}}},
            "train_space.lr_max: not a train",
        ),
        ({"train_space": {"lr": 1e-4}}, "sweep.train_space.lr"),
        ({"train_space": {"epochs": {"type": "int", "low": 0, "high": 2}}}, "value 0 is invalid"),
        ({"objectives": [{"metric": "robust accuracy"}]}, "objectives.0.metric"),
    ],
)
def test_invalid_sweeps_fail_with_one_line(sweep, message):
    with pytest.raises(ConfigError) as err:
        validate_job(job(**sweep))
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_space_overrides_accept_distributions_and_fixed_values():
    sweep = SweepConfig(
        methods=["pgd"],
        spaces={
            "pgd": {
                "adv_steps": 2,
                "adv_lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
            }
        },
        train_space={"lr": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True}},
    )
    assert sweep.spaces["pgd"]["adv_steps"] == 2


def test_asha_proxy_metric_and_mode():
    sweep = SweepConfig(
        objectives=[{"metric": "clean_accuracy"}, {"metric": "robust_accuracy/deepwordbug"}],
        asha={"enabled": True, "metric": "proxy_robust_accuracy/deepwordbug"},
    )
    assert sweep.asha_metric_mode() == ("proxy_robust_accuracy/deepwordbug", "max")
    single = SweepConfig(objectives=[{"metric": "ece", "mode": "min"}], asha={"enabled": True})
    assert single.asha_metric_mode() == ("ece", "min")


def test_sweep_section_is_optional_for_train_jobs():
    assert validate_job({"name": "plain"}).sweep is None


@pytest.mark.parametrize("name", ["quickstart_sweep.yaml", "sst2_bert_base_sweep.yaml"])
def test_shipped_sweep_jobs_validate(name):
    cfg = load_job(ROOT / "jobs" / name)
    assert cfg.sweep is not None
    assert len(cfg.sweep.methods) >= 3
    assert len(cfg.sweep.objectives) == 2
    assert cfg.sweep.objectives[0].metric == "clean_accuracy"


def test_cluster_sweep_job_uses_hub_names_and_gpus():
    cfg = load_job(ROOT / "jobs" / "sst2_bert_base_sweep.yaml")
    assert cfg.data.source == "hf:glue:sst2"
    assert cfg.data.text_fields == ["sentence"]
    assert cfg.data.eval_split == "validation"
    assert cfg.model.source == "hf:bert-base-uncased"
    assert cfg.scaling.use_gpu and cfg.scaling.gpu_share() == 0.5  # two trials per GPU
    assert cfg.train.precision == "bf16" and cfg.train.grad_accumulation_steps == 2
    assert cfg.sweep.asha.enabled and cfg.sweep.asha.metric


def test_quickstart_sweep_is_offline_and_small():
    cfg = load_job(ROOT / "jobs" / "quickstart_sweep.yaml")
    assert cfg.data.source.startswith("builtin:") and cfg.model.source.startswith("builtin:")
    assert cfg.sweep.total_samples() <= 12
    assert not cfg.scaling.use_gpu
    assert cfg.sweep.rank_min == {"clean_accuracy": 0.6}
    assert (
        cfg.eval.attacks
        and cfg.sweep.objectives[1].metric == f"robust_accuracy/{cfg.eval.attacks[0]}"
    )
