"""Named, versioned attack profiles: what an attack number means, pinned and hashed.

A profile fixes the recipe, the constraints that differ from the recipe's defaults (modify
cap, candidates per word, sentence similarity), the query budget, the examples (count, or
explicit ids), the seed and the per-example time limit. Every robust metric is logged with
the profile's name and the hash of its *effective* spec (after job-level overrides), so two
numbers with the same name and hash were measured the same way.

Bump ``version`` when a builtin profile's meaning changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from robustsweep.errors import ConfigError, format_validation_error

# TextDefender (Li et al., 2021, "Searching for an Effective Defender") evaluation settings,
# from its args.py: modify_ratio 0.3, neighbour_vocab_size 50, sentence_similarity 0.840845057.
TEXTDEFENDER = {"max_modify_rate": 0.3, "max_candidates": 50, "sentence_similarity": 0.840845057}


class AttackProfile(BaseModel):
    """One attack setting. Fields left ``None`` keep the recipe's published/TextAttack default."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="Metric suffix")
    version: int = Field(1, ge=1, description="Bumped when the meaning changes")
    recipe: str = Field(description="Recipe name (robustsweep.evaluate.recipes)")
    description: str = Field("", description="What this profile is for")
    num_examples: int = Field(100, ge=1, description="Examples attacked (first N of the eval set)")
    example_ids: list[int] | None = Field(None, description="Explicit eval-set row ids (pinned)")
    only_correct: bool = Field(
        False, description="Attack the first N correctly classified examples instead of the "
        "first N (misclassified ones then never count as skipped)")
    max_modify_rate: float | None = Field(None, gt=0, le=1, description="Max share of words changed")
    max_candidates: int | None = Field(None, ge=1, description="Swap candidates per word")
    sentence_similarity: float | None = Field(
        None, gt=0, le=1, description="Threshold of the recipe's sentence-encoder constraint")
    query_budget: int | None = Field(None, ge=1, description="Model queries per example")
    seed: int = Field(0, ge=0, description="Seed of random transformations (per example)")
    timeout_s: float | None = Field(None, gt=0, description="Per-example time limit (timeout outcome)")

    @field_validator("name")
    @classmethod
    def _not_dots(cls, value: str) -> str:
        if set(value) <= {"."}:
            raise ValueError("must contain a letter, digit, '_' or '-' (it names metrics and files)")
        return value

    @field_validator("version", "num_examples", "max_modify_rate", "max_candidates",
                     "sentence_similarity", "query_budget", "seed", "timeout_s", mode="before")
    @classmethod
    def _number_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number, not a boolean")  # noqa: TRY004 - pydantic
        return value

    def spec(self) -> dict[str, Any]:
        """Everything that changes results (the description does not)."""
        return self.model_dump(mode="json", exclude={"description"})

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON spec."""
        text = json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def label(self) -> str:
        """``name v<version> sha256:<12 hex>``: what MLflow tags and reports show."""
        return f"{self.name} v{self.version} sha256:{self.hash[:12]}"


def _builtin() -> dict[str, AttackProfile]:
    from robustsweep.evaluate.recipes import RECIPES

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
        from robustsweep.evaluate.recipes import get_recipe

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
                        ("only_correct", "attack_only_correct")):
        value = getattr(eval_cfg, attr, None)
        if value is not None:
            update[field] = value
    return AttackProfile.model_validate({**profile.model_dump(), **update})
