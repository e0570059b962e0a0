"""Atomic JSON files: the one writer behind every record a trial or a sweep leaves on disk."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any


def temp_name(name: str) -> str:
    """The temp file ``atomic_write_json`` writes before renaming it to ``name``."""
    return f".{name}.{os.getpid()}.tmp"


def is_temp_file(name: str) -> bool:
    """Whether ``name`` is a temp file left by ``atomic_write_json`` (a process killed mid-write)."""
    return bool(re.fullmatch(r"\.[^/]+\.\d+\.tmp", name))


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON so readers see the old or the new file, never half of one (temp file, fsync,
    rename, fsync of the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name))
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
