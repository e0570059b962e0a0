"""Named, versioned attack profiles: what an attack number means, pinned and hashed.

A profile fixes the recipe, the constraints that differ from the recipe's defaults (modify
cap, candidates per word, sentence similarity), the query budget, the examples (count, or
explicit ids), the seed and the per-example time limit. Every robust metric is logged with
the profile's name and the hash of its *effective* spec (after job-level overrides), so two
numbers with the same name and hash were measured the same way.

Bump ``version`` when a builtin profile's meaning changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from robustsweep.errors import ConfigError, format_validation_error
from robustsweep.evaluate.profile_spec import AttackProfile
from robustsweep.evaluate.recipes import RECIPES, get_recipe

__all__ = ["TEXTDEFENDER", "AttackProfile", "builtin_profiles", "effective_profile", "load_profile"]

# TextDefender (Li et al., 2021, "Searching for an Effective Defender") evaluation settings,
# from its args.py: modify_ratio 0.3, neighbour_vocab_size 50, sentence_similarity 0.840845057.
TEXTDEFENDER = {"max_modify_rate": 0.3, "max_candidates": 50, "sentence_similarity": 0.840845057}


def _builtin() -> dict[str, AttackProfile]:
    profiles: dict[str, AttackProfile] = {}
    for recipe in RECIPES.values():
        profiles[recipe.name] = AttackProfile(
            name=recipe.name, recipe=recipe.name,
            description=f"{recipe.title} with TextAttack's defaults (stock)")
        td = f"{recipe.name}-textdefender"
        profiles[td] = AttackProfile(
            name=td, recipe=recipe.name,
            description=f"{recipe.title}, TextDefender settings (30% modify cap, 50 candidates, "
            "sentence similarity 0.840845057)", **TEXTDEFENDER)
    return profiles


def builtin_profiles() -> dict[str, AttackProfile]:
    return _builtin()


def load_profile(name: str) -> AttackProfile:
    """A builtin profile by name, or a YAML file (``file:<path>`` or a ``.yaml`` path)."""
    from robustsweep.config import read_yaml

    path_text = name.removeprefix("file:")
    if name.startswith("file:") or path_text.endswith((".yaml", ".yml")):
        path = Path(path_text).expanduser()
        if not path.is_file():
            raise ConfigError(f"attack profile {name!r}: no such file")
        raw = read_yaml(path, what="attack profile file")
        try:
            profile = AttackProfile.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, f"attack profile {path}")) from None
        try:
            get_recipe(profile.recipe)
        except ConfigError as exc:
            raise ConfigError(f"attack profile {path}: recipe: {exc}") from None
        return profile
    profiles = builtin_profiles()
    if name not in profiles:
        raise ConfigError(f"unknown attack profile {name!r} (available: {', '.join(profiles)})")
    return profiles[name]


def effective_profile(name: str, eval_cfg: Any) -> AttackProfile:
    """The profile with the job's ``eval`` overrides applied (these change the hash)."""
    profile = load_profile(name)
    by_profile = getattr(eval_cfg, "attack_examples_by_profile", None) or {}
    update: dict[str, Any] = {"num_examples": by_profile.get(name, eval_cfg.attack_examples)}
    for field, attr in (("seed", "attack_seed"), ("timeout_s", "attack_timeout_s"),
                        ("query_budget", "attack_query_budget"),
                        ("max_modify_rate", "attack_max_modify_rate"),
                        ("only_correct", "attack_only_correct"),
                        ("precision", "attack_precision")):
        value = getattr(eval_cfg, attr, None)
        if value is not None:
            update[field] = value
    return AttackProfile.model_validate({**profile.model_dump(), **update})
