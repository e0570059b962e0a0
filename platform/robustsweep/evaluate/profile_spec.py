"""The attack profile spec: one attack setting, pinned and hashed (the schema only).

``profiles`` names the builtin ones and loads profile files; ``recipes`` builds an attack from
a spec. Both import this module, never each other's way back.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="Victim queries in fp32 (TextAttack's outcomes) or bf16 autocast "
        "(faster on CPUs/GPUs with bf16 units; outcomes must be checked, benchmarks/attack_speed.py)")

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
        """Everything that changes results (the description does not). fp32 is left out of the
        spec, so profiles hashed before ``precision`` existed keep their hash."""
        spec = self.model_dump(mode="json", exclude={"description"})
        if spec["precision"] == "fp32":
            del spec["precision"]
        return spec

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON spec."""
        text = json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def label(self) -> str:
        """``name v<version> sha256:<12 hex>``: what MLflow tags and reports show."""
        return f"{self.name} v{self.version} sha256:{self.hash[:12]}"
