"""Read a job: YAML -> schema (``config``) -> method checks (the registry), one error line.

``config`` is the pure schema and imports no method; this module adds what needs the method
registry: known method names, each method's typed knobs, and the sweep's per-knob space
overrides. ``resolve`` builds the full pre-flight on top of it.
"""

from __future__ import annotations

import math
import os
from typing import Any

from robustsweep.config import (
    JobConfig,
    MethodConfig,
    SweepConfig,
    apply_overrides,
    holds_bool,
    numeric_annotation,
    parse_job,
    read_yaml,
)
from robustsweep.errors import ConfigError, MethodError, one_line


def check_method(method: MethodConfig) -> None:
    """A registered method with valid knobs (ValueError with the method's own message)."""
    from robustsweep.methods import registry

    try:
        fields = registry.get(method.name).knobs_class.model_fields
    except MethodError as exc:
        raise ValueError(str(exc)) from None
    for knob, value in method.knobs.items():
        if knob in fields and numeric_annotation(fields[knob].annotation) and holds_bool(value):
            raise ValueError(f"method {method.name!r} knob {knob}: expected a number, not a boolean")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"method {method.name!r} knob {knob}: must be a finite number")
    try:
        registry.validate_knobs(method.name, method.knobs)
    except MethodError as exc:
        raise ValueError(str(exc)) from None


def check_sweep(sweep: SweepConfig) -> None:
    """Registered sweep methods and space overrides that their knobs accept."""
    from robustsweep.methods import registry
    from robustsweep.sweep.params import check_space_overrides

    for name in sweep.methods:
        try:
            registry.get(name)
        except MethodError as exc:
            raise ValueError(f"methods: {exc}") from None
    check_space_overrides(sweep.spaces, sweep.train_space)


def validate_job(raw: dict[str, Any], origin: str = "job") -> JobConfig:
    """Validate a raw mapping into a JobConfig with its method checks, raising one line."""
    cfg = parse_job(raw, origin)
    try:
        check_method(cfg.method)
    except ValueError as exc:
        raise ConfigError(one_line(f"{origin}: method: {exc}")) from None
    if cfg.sweep is not None:
        try:
            check_sweep(cfg.sweep)
        except ValueError as exc:  # messages start with the field path inside the sweep
            raise ConfigError(one_line(f"{origin}: sweep.{exc}")) from None
    return cfg


def load_job(path: str | os.PathLike[str], overrides: list[str] | None = None) -> JobConfig:
    """Load a job YAML, apply ``--set`` overrides and validate once."""
    raw = apply_overrides(read_yaml(path, what="job file"), overrides or [])
    return validate_job(raw, origin=str(path))
