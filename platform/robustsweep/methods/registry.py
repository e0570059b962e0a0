"""Method registry: a method registers itself with ``@register``; modules are discovered.

Adding a method is one module in ``robustsweep/methods/`` (plus a search-space YAML and tests):
discovery imports every module of this package, so nothing else needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from robustsweep.errors import MethodError
from robustsweep.methods.base import Knobs, RobustMethod

_REGISTRY: dict[str, type[RobustMethod]] = {}
_NOT_METHODS = {"base", "registry", "perturb"}
_discovered = False

M = TypeVar("M", bound=type[RobustMethod])


def register(cls: M) -> M:
    """Class decorator: make a RobustMethod available by its ``name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"method name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    # The package's own folder, found without importing the package (whose __init__ imports us).
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name not in _NOT_METHODS and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
    _discovered = True


def available() -> dict[str, type[RobustMethod]]:
    """All registered methods by name, sorted."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[RobustMethod]:
    """The method class for ``name``; MethodError naming the valid ones otherwise."""
    methods = available()
    if name not in methods:
        raise MethodError(f"unknown method {name!r} (available: {', '.join(methods)})")
    return methods[name]


def validate_knobs(name: str, knobs: dict[str, Any]) -> Knobs:
    """Validate raw knob values against the method's knobs class; one-line MethodError."""
    cls = get(name)
    try:
        return cls.knobs_class.model_validate(knobs)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = "unknown knob" if first["type"] == "extra_forbidden" else first["msg"]
        got = f" (got {first['input']!r})" if first["type"] != "extra_forbidden" else ""
        raise MethodError(f"method {name!r} knob {where}: {msg}{got}") from None


def build(name: str, knobs: dict[str, Any] | None = None) -> RobustMethod:
    """Instantiate a method with validated knobs."""
    cls = get(name)
    return cls(validate_knobs(name, knobs or {}))
