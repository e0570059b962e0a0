"""The benchmark scripts' shared pieces: the variant syntax and per-variant job validation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from robustsweep.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from method_accuracy import variant_job
from variants import parse_variant

QUICKSTART = ROOT / "jobs" / "quickstart.yaml"


def test_parse_variant_reads_yaml_scalars() -> None:
    assert parse_variant("vanilla") == ("vanilla", {})
    assert parse_variant("rift:w_kl=0,ascc_steps=2,polarity_filter=false,min_similarity=-1") == (
        "rift", {"w_kl": 0, "ascc_steps": 2, "polarity_filter": False, "min_similarity": -1})


def test_variant_job_sets_method_knobs_seed_and_shared_overrides() -> None:
    cfg = variant_job(QUICKSTART, ["train.epochs=3"], "rsmi:multi_mask=1", seed=2)
    assert (cfg.method.name, cfg.method.knobs, cfg.seed, cfg.train.epochs) == ("rsmi", {"multi_mask": 1}, 2, 3)
    assert variant_job(QUICKSTART, [], "vanilla", seed=0).method.knobs == {}


@pytest.mark.parametrize("variant", ["rsmi:multi_mask=-1", "nosuch", "rsmi:no_such_knob=1"])
def test_variant_job_rejects_bad_variants_in_one_line(variant: str) -> None:
    with pytest.raises(ConfigError) as err:
        variant_job(QUICKSTART, [], variant, seed=0)
    assert variant in str(err.value) and "\n" not in str(err.value)


def test_overhead_accumulation_job_keeps_the_global_batch_and_the_step_count(tmp_path: Path) -> None:
    import argparse

    from overhead import job

    args = argparse.Namespace(steps=5, batch_size=32, max_length=32, threads=1)
    plain, accumulated = job(args, tmp_path / "a"), job(args, tmp_path / "b", accumulation=4)
    assert (plain.train.batch_size, plain.train.grad_accumulation_steps) == (32, 1)
    assert (accumulated.train.batch_size, accumulated.train.grad_accumulation_steps) == (8, 4)
    assert plain.data.train_size == accumulated.data.train_size == 5 * 32


def test_trial_overhead_sweeps_the_jobs_own_method_over_seeds(tmp_path: Path) -> None:
    """Every sweep trial must do the work the in-process baseline measured (one method)."""
    import yaml
    from trial_overhead import sweep_job

    from robustsweep.jobfile import validate_job

    raw = yaml.safe_load((ROOT / "jobs" / "smoke.yaml").read_text())
    cfg = validate_job(sweep_job(raw, 3, tmp_path / "sweep"))
    assert cfg.sweep.mode == "grid" and cfg.sweep.methods == [raw["method"]["name"]]
    assert cfg.sweep.seeds == [0, 1, 2] and cfg.sweep.total_samples() == 3
    assert cfg.eval.attacks == []
