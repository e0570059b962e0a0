"""Every job under jobs/ passes the pre-flight offline (the hub jobs included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustsweep import api

JOBS = sorted((Path(__file__).parents[2] / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("job", JOBS, ids=[p.stem for p in JOBS])
def test_shipped_job_passes_the_preflight(job: Path):
    resolved = api.resolve(job, need_sweep="sweep" in job.stem)
    assert resolved.knobs is not None


def test_the_reproduction_grid_is_every_method_times_three_seeds():
    sweep = api.validate(Path(__file__).parents[2] / "jobs" / "reproduce_mr.yaml").sweep
    assert sweep is not None and sweep.mode == "grid" and sweep.seeds == [0, 1, 2]
    assert sweep.total_samples() == 3 * len(sweep.methods)
    assert set(sweep.methods) == {
        "vanilla", "pgd", "freelb", "smart", "roast", "rift", "mvp", "infobert"}
