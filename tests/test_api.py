"""The documented Python API (docs/api.md): the same pre-flight and results as the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustsweep import api
from robustsweep.config import JobConfig
from robustsweep.errors import ConfigError

SMOKE = Path(__file__).parents[1] / "jobs" / "smoke.yaml"


def test_load_and_validate_apply_overrides_like_the_cli():
    job = api.load_job(SMOKE, ["method.name=pgd", "method.knobs.adv_steps=2"])
    assert isinstance(job, JobConfig)
    assert job.method.name == "pgd" and job.method.knobs == {"adv_steps": 2}
    again = api.validate(job)
    assert again == job and again is not job
    mapping = api.validate(job.model_dump(mode="json"), ["train.epochs=2"])
    assert mapping.train.epochs == 2 and mapping.method.name == "pgd"


def test_validate_raises_one_line_errors():
    with pytest.raises(ConfigError) as err:
        api.validate(SMOKE, ["train.epochs=0"])
    assert "train.epochs" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="overrides apply to"):
        api.validate(api.load_job(SMOKE), ["train.epochs=2"])


def test_every_documented_name_exists():
    doc = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    for name in api.__all__:
        assert callable(getattr(api, name))
        assert f"`{name}" in doc, f"docs/api.md does not document {name}"


@pytest.mark.slow
def test_train_then_evaluate_through_the_api(ray_local, tmp_path: Path):
    result = api.train(
        SMOKE, [f"output_dir={tmp_path / 'trial'}", "train.max_steps_per_epoch=2", "data.ood=[]"]
    )
    assert 0.0 <= result.metrics["clean_accuracy"] <= 1.0
    assert (result.trial_dir / "results.json").is_file() and result.run_id
    evaluation = api.evaluate(
        result.trial_dir, attacks=["deepwordbug"], num_examples=2, out_dir=tmp_path / "eval"
    )
    assert evaluation.metrics["clean_accuracy"] == pytest.approx(result.metrics["clean_accuracy"])
    assert evaluation.metrics["attack_examples/deepwordbug"] == 2.0
    assert (tmp_path / "eval" / "attacks" / "deepwordbug" / "examples.csv").is_file()
    assert evaluation.tags["attack_profile/deepwordbug"].startswith("deepwordbug v1")
