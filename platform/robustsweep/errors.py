"""User-facing errors: one line each, printed by the CLI without a traceback.

``format_validation_error`` is the one formatter of "first pydantic error" messages: every
module that validates user input with pydantic should call it, so all messages read alike and
none can echo a huge (alias-expanded) value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

# Longest user value echoed back in a message (a value can be megabytes of expanded YAML).
MAX_SHOWN = 80


class RobustSweepError(Exception):
    """Base of every error a user can fix (bad config, missing resource, bad data)."""


class ConfigError(RobustSweepError):
    """A job file or override does not validate."""


class DataError(RobustSweepError):
    """A data source cannot be read or has no usable rows."""


class ResourceError(RobustSweepError):
    """An offline resource (model weights, NLTK data, vectors) is missing."""


class MethodError(RobustSweepError):
    """Unknown method or invalid method knobs."""


def shown_value(value: Any) -> str:
    """A short repr of a scalar user value; '' for containers and None (never expanded)."""
    if value is None or not isinstance(value, (str, int, float, bool, bytes)):
        return ""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def one_line(text: str, limit: int = 2000) -> str:
    """Collapse line breaks and control characters so a message stays one short line."""
    flat = "".join(c if c.isprintable() else " " for c in text.replace("\n", " "))
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def format_validation_error(err: ValidationError, origin: str, prefix: str = "") -> str:
    """``<origin>: <field.path>: <what was expected> (got <short value>) [+N more]``.

    ``prefix`` goes before the field path (e.g. ``spaces.pgd.adv_lr`` for a nested model).
    """
    errors = err.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    parts = [*(prefix.split(".") if prefix else []), *(str(p) for p in loc)]
    where = ".".join(parts)
    msg = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    shown = ""
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    else:
        value = shown_value(first.get("input"))
        shown = f" (got {value})" if value and value not in msg else ""
    more = f" [+{len(errors) - 1} more]" if len(errors) > 1 else ""
    if not parts:  # a whole-model check: its message names the fields itself
        return one_line(f"{origin}: {msg}{shown}{more}")
    return one_line(f"{origin}: {where}: {msg}{shown}{more}")


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
