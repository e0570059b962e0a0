"""Search spaces: ``search_spaces/<method>.yaml`` -> validated knob distributions.

File format (one file per method)::

    method: pgd
    knobs:
      adv_lr:      {type: float, low: 0.005, high: 0.2, log: true}
      adv_steps:   {type: int, choices: [1, 2, 3, 5, 10]}
      norm_type:   {type: cat, choices: [l2, linf]}
      adv_max_norm: {type: float, low: 0.05, high: 2.0, log: true}

Each knob must exist in the method's knobs class, and every value the distribution can
produce (bounds, choices) must pass that class's validation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from robustsweep.config import read_yaml
from robustsweep.errors import ConfigError, MethodError, format_validation_error
from robustsweep.methods import registry

# Package data: a symlink to the checkout's search_spaces/ in a source tree, real files in a wheel.
DEFAULT_SPACE_DIR = Path(__file__).resolve().parents[1] / "search_spaces"


class KnobDistribution(BaseModel):
    """One knob's distribution: a range (float/int, optional log scale) or a choice list."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    type: Literal["float", "int", "cat"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = Field(None, min_length=1)

    @field_validator("low", "high", "step", mode="before")
    @classmethod
    def _number_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number, not a boolean")  # noqa: TRY004 - pydantic wants ValueError
        return value

    @field_validator("choices")
    @classmethod
    def _scalar_choices(cls, value: list[Any] | None) -> list[Any] | None:
        """Optuna stores categorical choices as None/bool/int/float/str, nothing else."""
        for choice in value or []:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise ValueError(f"choices must be plain values, not {type(choice).__name__}")
            if isinstance(choice, float) and not math.isfinite(choice):
                raise ValueError("choices must be finite numbers")
        return value

    @model_validator(mode="after")
    def _shape(self) -> KnobDistribution:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.step is not None:
                raise ValueError("give either choices or low/high(/step), not both")
            if self.type == "int" and not all(_whole(c) for c in self.choices):
                raise ValueError("type int needs whole-number choices")
            if self.type == "float" and not all(_number(c) for c in self.choices):
                raise ValueError("type float needs numeric choices")
            return self
        if self.type == "cat":
            raise ValueError("type cat needs choices")
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (or choices)")
        if self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna samples one or the other)")
        if self.type == "int" and not all(_whole(v) for v in (self.low, self.high, self.step)
                                          if v is not None):
            raise ValueError("type int needs whole-number low, high and step")
        return self

    def boundary_values(self) -> list[Any]:
        """Values to check against the knobs class: the choices or both ends of the range."""
        if self.choices is not None:
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: Any) -> bool:
    return _number(value) and float(value).is_integer()


class SearchSpace(BaseModel):
    """A method's validated search space."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    knobs: dict[str, KnobDistribution] = Field(default_factory=dict)


def validate_space(raw: dict[str, Any], origin: str) -> SearchSpace:
    """Validate a raw mapping (schema + every knob value against the method's knobs class)."""
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None
    try:
        knobs_class = registry.get(space.method).knobs_class
    except MethodError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    for name, dist in space.knobs.items():
        if name not in knobs_class.model_fields:
            raise ConfigError(f"{origin}: knobs.{name}: not a knob of method {space.method!r}")
        for value in dist.boundary_values():
            try:
                registry.validate_knobs(space.method, {name: value})
            except MethodError as exc:
                raise ConfigError(f"{origin}: knobs.{name}: value {value!r} is invalid ({exc})") from None
    return space


def space_path(method: str, space_dir: Path | None = None) -> Path:
    return (space_dir or DEFAULT_SPACE_DIR) / f"{method}.yaml"


def load_space(method: str, space_dir: Path | None = None) -> SearchSpace:
    """Load and validate ``<space_dir>/<method>.yaml``."""
    path = space_path(method, space_dir)
    if not path.is_file():
        raise ConfigError(f"{path}: no search space for method {method!r}")
    space = validate_space(read_yaml(path, what="search space file"), str(path))
    if space.method != method:
        raise ConfigError(f"{path}: method is {space.method!r}, expected {method!r}")
    return space
