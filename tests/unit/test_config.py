"""Job schema: defaults, one-line errors naming the field, --set overrides, shipped jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustsweep.config import (
    MAX_YAML_BYTES,
    JobConfig,
    apply_overrides,
    flatten,
    parse_override,
    read_yaml,
)
from robustsweep.errors import ConfigError
from robustsweep.jobfile import load_job, validate_job

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


# ---- the YAML edge and number checks (issue "Reliability and safety", part 3) -----------------


def test_shared_aliases_and_merge_keys_still_load(tmp_path: Path) -> None:
    path = tmp_path / "j.yaml"
    path.write_text("base: &b {epochs: 2, lr: 1.0e-4}\ntrain:\n  <<: *b\n  epochs: 3\n")
    raw = read_yaml(path)
    assert raw["train"] == {"epochs": 3, "lr": 1e-4}


def test_alias_bomb_is_refused_fast_and_never_shown(tmp_path: Path) -> None:
    import time

    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="alias bomb") as err:
        read_yaml(path)
    assert time.monotonic() - started < 2 and "lol" not in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("train: {epochs: 1}\ntrain: {epochs: 2}\n", "duplicate key 'train'"),
    ("a: &a [*a]\n", "recursive alias"),
    ("", "empty"),
    ("# only a comment\n", "empty"),
    ("x: !!python/object/apply:os.system [ls]\n", "constructor"),
])
def test_yaml_edge_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "j.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_yaml(path)


def test_non_utf8_and_oversized_files(tmp_path: Path) -> None:
    path = tmp_path / "j.yaml"
    path.write_bytes(b"name: \xff\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xff at offset 6\)"):
        read_yaml(path)
    path.write_text("#" * (MAX_YAML_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        read_yaml(path)


@pytest.mark.parametrize("text", ["a..b=1", ".a=1", "a.=1", "a. .b=1"])
def test_override_paths_need_every_segment(text: str) -> None:
    with pytest.raises(ConfigError, match="empty segment"):
        parse_override(text)


@pytest.mark.parametrize("raw, field", [
    ({"train": {"epochs": True}}, "train.epochs"),
    ({"train": {"lr": float("nan")}}, "train.lr"),
    ({"train": {"adam_betas": [0.9, 1.0]}}, "train.adam_betas"),
    ({"sweep": {"seeds": [-1]}}, "sweep.seeds.0"),
    ({"train": {"batch_size": 10}, "scaling": {"num_workers": 4}}, "train.batch_size"),
    ({"name": ".."}, "name"),
    ({"output_dir": "/usr"}, "output_dir"),
    ({"data": {"label_names": ["x"]}}, "data.label_names"),
    ({"data": {"ood": [{"name": "a", "source": "builtin:imdb"},
                       {"name": "a", "source": "builtin:mr"}]}}, "data.ood"),
])
def test_numbers_names_and_paths_are_checked(raw: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"job: {field}"):
        validate_job(raw)


def test_output_dir_below_a_project_is_fine(tmp_path: Path) -> None:
    assert validate_job({"output_dir": str(tmp_path / "runs" / "x")}).output_dir


def test_error_never_echoes_a_huge_value() -> None:
    with pytest.raises(ConfigError) as err:
        validate_job({"name": "x" * 10_000})
    assert len(str(err.value)) < 300
