"""Every registered method ships a valid search space; broken spaces fail with one ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from robustsweep.errors import ConfigError
from robustsweep.methods import registry
from robustsweep.sweep.spaces import DEFAULT_SPACE_DIR, load_space

METHODS = sorted(registry.available())


@pytest.mark.parametrize("name", METHODS)
def test_every_method_has_a_valid_space(name: str) -> None:
    space = load_space(name)
    assert space.method == name
    knobs = registry.get(name).knobs_class.model_fields
    assert set(space.knobs) <= set(knobs)


def write_space(directory: Path, name: str, knobs: dict) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"method": name, "knobs": knobs}))
    return path


@pytest.mark.parametrize("name", METHODS)
def test_unknown_knob_is_a_config_error(name: str, tmp_path: Path) -> None:
    raw = yaml.safe_load((DEFAULT_SPACE_DIR / f"{name}.yaml").read_text())
    knobs = dict(raw.get("knobs") or {})
    knobs["no_such_knob"] = {"type": "float", "low": 0.0, "high": 1.0}
    write_space(tmp_path, name, knobs)
    with pytest.raises(ConfigError, match="no_such_knob") as err:
        load_space(name, tmp_path)
    assert "\n" not in str(err.value)


OUT_OF_RANGE = [
    ("smart", "lambda_s", {"type": "float", "low": -1.0, "high": 1.0}),
    ("r3f", "eps", {"type": "float", "low": 1.0e-6, "high": 5.0}),
    ("roast", "alpha", {"type": "float", "low": 0.3, "high": 1.5}),
    ("roast", "kl_reduction", {"type": "cat", "choices": ["sum", "max"]}),
    ("rift", "ascc_steps", {"type": "int", "choices": [3, -1]}),
    ("infobert", "cl", {"type": "float", "low": 0.2, "high": 0.95}),  # cl >= default ch 0.9
    ("pgd", "clean_weight", {"type": "float", "low": 0.0, "high": 2.0}),
]


@pytest.mark.parametrize(("name", "knob", "dist"), OUT_OF_RANGE)
def test_out_of_range_bound_is_a_config_error(name: str, knob: str, dist: dict,
                                              tmp_path: Path) -> None:
    write_space(tmp_path, name, {knob: dist})
    with pytest.raises(ConfigError, match=knob) as err:
        load_space(name, tmp_path)
    assert "\n" not in str(err.value)


def test_malformed_distribution_is_a_config_error(tmp_path: Path) -> None:
    write_space(tmp_path, "roast", {"adv_eps": {"type": "float", "low": 0.0, "high": 0.5,
                                                "log": True}})
    with pytest.raises(ConfigError, match="log"):
        load_space("roast", tmp_path)
