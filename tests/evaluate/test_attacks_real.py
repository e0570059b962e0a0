"""Slow: the offline recipes on the real MiniLM encoder and MR text; Ray-parallel equality."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
from attack_fixtures import tiny_trained_method

from conftest import make_tiny_task
from robustsweep.data import TextSet
from robustsweep.evaluate.attacks import run_profile
from robustsweep.evaluate.inference import predict_probs
from robustsweep.evaluate.profiles import load_profile

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("textattack_ready")]


@pytest.fixture(scope="module")
def minilm_on_mr():
    """The builtin MiniLM with a seeded fresh head, and 4 held-out MR sentences."""
    import torch

    from robustsweep.config import DataConfig, ModelConfig
    from robustsweep.data import load_task
    from robustsweep.methods import build
    from robustsweep.models import load_model

    task = load_task(DataConfig(train_size=10, eval_size=4, max_length=48))
    torch.manual_seed(0)
    method = build("vanilla")
    method.setup(load_model(ModelConfig(), 2, 48), task)
    return method, task


@pytest.mark.parametrize("profile_name", ["deepwordbug", "pwws-textdefender",
                                          "textfooler-glove-textdefender"])
def test_offline_recipe_on_real_encoder(minilm_on_mr, profile_name: str,
                                        tmp_path: Path) -> None:
    method, task = minilm_on_mr
    profile = load_profile(profile_name).model_copy(update={"num_examples": 4, "timeout_s": 120.0})
    report = run_profile(method, task.eval, profile, tmp_path, progress=False)
    rows = report.table.read()
    assert len(rows) == 4
    for r in rows:
        assert r.outcome in {"successful", "failed", "skipped"}
        probs = predict_probs(method, TextSet([r.perturbed_text], None, [0]))
        if r.outcome == "successful":  # a real adversarial example: the method now errs
            assert probs.argmax() != r.label and r.perturbed_text != r.original_text
            if profile.max_modify_rate:
                assert r.perturbed_words <= max(1, -(-r.num_words * 3 // 10))
        elif r.outcome == "failed":
            assert probs.argmax() == r.label


def test_ray_pool_gives_the_same_table_as_one_process(tmp_path: Path) -> None:
    from ray import cloudpickle

    import conftest

    cloudpickle.register_pickle_by_value(conftest)  # actors cannot import the tests' TinyTokenizer
    method = tiny_trained_method()
    task = make_tiny_task(n_eval=6)
    profile = load_profile("deepwordbug").model_copy(update={"num_examples": 6, "seed": 2})

    def rows(workers: int) -> list[dict]:
        report = run_profile(method, task.eval, profile, tmp_path / f"w{workers}",
                             workers=workers, progress=False)
        return [{k: v for k, v in asdict(r).items() if k != "seconds"}
                for r in sorted(report.table.read(), key=lambda r: r.example_id)]

    assert rows(2) == rows(1)
