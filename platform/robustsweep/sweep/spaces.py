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

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from robustsweep.config import read_yaml
from robustsweep.errors import ConfigError, MethodError
from robustsweep.methods import registry

DEFAULT_SPACE_DIR = Path(__file__).resolve().parents[3] / "search_spaces"


class KnobDistribution(BaseModel):
    """One knob's distribution: a range (float/int, optional log scale) or a choice list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["float", "int", "cat"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _shape(self) -> KnobDistribution:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.type == "cat":
            raise ValueError("type cat needs choices")
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (or choices)")
        if self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        return self

    def boundary_values(self) -> list[Any]:
        """Values to check against the knobs class: the choices or both ends of the range."""
        if self.choices is not None:
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


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
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{origin}: {where}: {msg.removeprefix('Value error, ')}") from None
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
    space = validate_space(read_yaml(path), str(path))
    if space.method != method:
        raise ConfigError(f"{path}: method is {space.method!r}, expected {method!r}")
    return space
