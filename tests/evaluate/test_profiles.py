"""Attack profiles: builtin set, stable hashing, overrides change the hash, YAML profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustsweep.config import EvalConfig
from robustsweep.errors import ConfigError
from robustsweep.evaluate.profiles import (
    TEXTDEFENDER,
    AttackProfile,
    builtin_profiles,
    effective_profile,
    load_profile,
)
from robustsweep.evaluate.recipes import RECIPES


def test_every_recipe_has_stock_and_textdefender_profiles() -> None:
    profiles = builtin_profiles()
    for name in RECIPES:
        assert profiles[name].recipe == name and profiles[name].max_modify_rate is None
        td = profiles[f"{name}-textdefender"]
        assert (td.max_modify_rate, td.max_candidates, td.sentence_similarity) == (
            TEXTDEFENDER["max_modify_rate"], TEXTDEFENDER["max_candidates"],
            TEXTDEFENDER["sentence_similarity"])


def test_hash_is_stable_and_ignores_description() -> None:
    a = AttackProfile(name="x", recipe="pwws", description="one")
    b = AttackProfile(name="x", recipe="pwws", description="two")
    assert a.hash == b.hash and len(a.hash) == 64
    assert a.label == f"x v1 sha256:{a.hash[:12]}"
    # pinned: changing the spec format would silently re-label old results
    assert AttackProfile(name="x", recipe="pwws").hash == a.hash


@pytest.mark.parametrize("change", [{"seed": 1}, {"query_budget": 100}, {"version": 2},
                                    {"example_ids": [1, 2]}, {"timeout_s": 5.0},
                                    {"only_correct": True}, {"max_candidates": 10}])
def test_any_setting_changes_the_hash(change: dict) -> None:
    base = AttackProfile(name="x", recipe="pwws")
    assert AttackProfile(name="x", recipe="pwws", **change).hash != base.hash


def test_effective_profile_applies_eval_overrides() -> None:
    cfg = EvalConfig(attack_examples=7, attack_seed=3, attack_timeout_s=2.5,
                     attack_query_budget=500, attack_only_correct=True)
    p = effective_profile("pwws-textdefender", cfg)
    assert (p.num_examples, p.seed, p.timeout_s, p.query_budget, p.only_correct) == (
        7, 3, 2.5, 500, True)
    assert p.max_modify_rate == 0.3
    assert p.hash != effective_profile("pwws-textdefender", EvalConfig(attack_examples=7)).hash


def test_yaml_profile(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nrecipe: deepwordbug\nquery_budget: 50\nversion: 3\n")
    assert load_profile(str(path)).query_budget == 50
    assert load_profile(f"file:{path}").version == 3
    path.write_text("name: mine\nrecipe: nope\n")
    with pytest.raises(ConfigError, match="unknown attack recipe"):
        load_profile(str(path))


def test_unknown_profile_is_one_line_error() -> None:
    with pytest.raises(ConfigError, match="unknown attack profile 'pwwz'"):
        load_profile("pwwz")
