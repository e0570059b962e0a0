"""Job schema: defaults, one-line errors naming the field, --set overrides, shipped jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustsweep.config import (
    JobConfig,
    apply_overrides,
    flatten,
    load_job,
    parse_override,
    validate_job,
)
from robustsweep.errors import ConfigError

JOBS = sorted((Path(__file__).parents[2] / "jobs").glob("*.yaml"))


def test_defaults_validate() -> None:
    cfg = validate_job({})
    assert cfg.method.name == "vanilla" and cfg.data.source == "builtin:mr"
    assert cfg.resolved_tracking_uri().startswith("sqlite:///")
    assert Path(cfg.resolved_tracking_uri().removeprefix("sqlite:///")).is_absolute()


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_shipped_jobs_validate(path: Path) -> None:
    assert isinstance(load_job(path), JobConfig)


def test_unknown_key_names_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        validate_job({"train": {"epoch": 3}}, origin="job.yaml")
    assert str(err.value) == "job.yaml: train.epoch: unknown key"


def test_bad_value_is_one_line_with_field_and_value() -> None:
    with pytest.raises(ConfigError) as err:
        validate_job({"train": {"lr": -1}}, origin="j.yaml")
    message = str(err.value)
    assert "\n" not in message and "train.lr" in message and "-1" in message


def test_method_knobs_validated_by_the_method() -> None:
    with pytest.raises(ConfigError, match=r"method: method 'pgd' knob adv_lr"):
        validate_job({"method": {"name": "pgd", "knobs": {"adv_lr": -0.1}}})
    with pytest.raises(ConfigError, match="unknown knob"):
        validate_job({"method": {"name": "pgd", "knobs": {"epsilon_typo": 1}}})
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        validate_job({"method": {"name": "nope"}})


def test_overrides_keep_yaml_types() -> None:
    assert parse_override("train.lr=1e-4") == (["train", "lr"], 1e-4)
    assert parse_override("data.ood=[]") == (["data", "ood"], [])
    raw = apply_overrides({"train": {"epochs": 1}}, ["train.epochs=3", "method.knobs.adv_steps=2"])
    assert raw == {"train": {"epochs": 3}, "method": {"knobs": {"adv_steps": 2}}}
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"train": {"epochs": 1}}, ["train.epochs.x=1"])


def test_load_job_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such job file"):
        load_job(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_job(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_job(scalar)


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {"a.b": 1, "a.c.d": 2, "e": {}}
