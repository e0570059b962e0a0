"""Fractional GPUs per worker: schema, concurrency planning on fake cluster resources, and the
TorchTrainer's per-worker resources (no GPU or Ray cluster needed)."""

from __future__ import annotations

import pytest

from robustsweep.errors import ConfigError
from robustsweep.jobfile import validate_job
from robustsweep.sweep.plan import gpu_trial_slots, plan_resources


def job(scaling: dict, sweep: dict | None = None):
    return validate_job({"name": "t", "train": {"epochs": 3, "batch_size": 32},
                         "scaling": scaling, "sweep": {"methods": ["vanilla"], **(sweep or {})}})


def fake_cluster(monkeypatch, cluster: dict, free: dict | None = None) -> None:
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: cluster)
    monkeypatch.setattr(ray, "available_resources", lambda: free if free is not None else cluster)


@pytest.mark.parametrize("value", [0.25, 0.5, 1, 2, 4])
def test_schema_accepts_a_share_or_whole_gpus(value):
    assert job({"use_gpu": True, "gpus_per_worker": value}).scaling.gpu_share() == value


@pytest.mark.parametrize(("scaling", "message"), [
    ({"use_gpu": True, "gpus_per_worker": 1.5}, "a share of one GPU"),
    ({"use_gpu": True, "gpus_per_worker": 0}, "greater than 0"),
    ({"use_gpu": True, "gpus_per_worker": -0.5}, "greater than 0"),
    ({"use_gpu": True, "gpus_per_worker": True}, "not a boolean"),
    ({"gpus_per_worker": 0.25}, "use_gpu is false"),
    ({"use_gpu": True, "gpus_per_worker": 0.5, "num_workers": 2}, "only single-worker trials"),
])
def test_schema_rejects_bad_gpu_shares(scaling, message):
    with pytest.raises(ConfigError, match=message):
        job(scaling)


def test_use_gpu_alone_still_means_one_gpu_per_worker():
    assert job({"use_gpu": True}).scaling.gpu_share() == 1.0
    assert job({}).scaling.gpu_share() == 0.0


@pytest.mark.parametrize(("free", "share", "workers", "slots"), [
    (1, 0.25, 1, 4),   # four MiniLM trials on one GPU
    (1, 0.25, 2, 2),   # two 2-worker trials
    (2, 0.3, 1, 6),    # a GPU holds 3 workers of 0.3, not 3.33
    (1.5, 0.25, 1, 6), # a half-free GPU holds two more
    (4, 1, 2, 2),
    (4, 2, 1, 2),
    (0, 0.25, 1, 0),
])
def test_gpu_trial_slots(free, share, workers, slots):
    assert gpu_trial_slots(free, share, workers) == slots


def test_four_quarter_gpu_trials_share_one_gpu(monkeypatch):
    fake_cluster(monkeypatch, {"CPU": 16, "GPU": 1, "trial_driver": 100})
    cfg = job({"use_gpu": True, "gpus_per_worker": 0.25, "cpus_per_worker": 2})
    plan = plan_resources(cfg, total=10)
    assert (plan.max_concurrent, plan.gpus_per_worker, plan.cpus_per_worker) == (4, 0.25, 2)
    whole = plan_resources(job({"use_gpu": True, "cpus_per_worker": 2}), total=10)
    assert (whole.max_concurrent, whole.gpus_per_worker) == (1, 1.0)


def test_cpus_still_limit_fractional_gpu_trials(monkeypatch):
    fake_cluster(monkeypatch, {"CPU": 4, "GPU": 2, "trial_driver": 100})
    plan = plan_resources(job({"use_gpu": True, "gpus_per_worker": 0.25, "cpus_per_worker": 2}),
                          total=10)
    assert plan.max_concurrent == 2  # 8 GPU slots, but 4 CPUs / 2 per trial


def test_free_gpus_not_the_total_set_concurrency(monkeypatch):
    fake_cluster(monkeypatch, {"CPU": 32, "GPU": 4, "trial_driver": 100},
                 {"CPU": 32, "GPU": 1.5, "trial_driver": 100})
    cfg = job({"use_gpu": True, "gpus_per_worker": 0.5, "cpus_per_worker": 1})
    assert plan_resources(cfg, total=10).max_concurrent == 3  # 1.5 free GPUs, not 4 in total


def test_explicit_max_concurrent_trials_wins(monkeypatch):
    fake_cluster(monkeypatch, {"CPU": 16, "GPU": 1, "trial_driver": 100})
    cfg = job({"use_gpu": True, "gpus_per_worker": 0.25, "cpus_per_worker": 1},
              {"max_concurrent_trials": 2})
    assert plan_resources(cfg, total=10).max_concurrent == 2


def test_no_gpu_in_the_cluster_is_the_same_clear_error(monkeypatch):
    fake_cluster(monkeypatch, {"CPU": 16, "trial_driver": 100})
    with pytest.raises(ConfigError, match=r"a trial needs 1 x 0.25 GPUs but the cluster has 0"):
        plan_resources(job({"use_gpu": True, "gpus_per_worker": 0.25}), total=4)
    with pytest.raises(ConfigError, match=r"a trial needs 2 x 1 GPUs but the cluster has 0"):
        plan_resources(job({"num_workers": 2, "use_gpu": True}), total=4)


def test_cpu_jobs_ignore_gpus(monkeypatch):
    fake_cluster(monkeypatch, {"CPU": 4, "trial_driver": 100})
    plan = plan_resources(job({"cpus_per_worker": 1}), total=10)
    assert (plan.max_concurrent, plan.gpus_per_worker) == (4, 0.0)


def test_torch_trainer_asks_each_worker_for_its_gpu_share(tmp_path, monkeypatch):
    from robustsweep.train import ray_trainer

    monkeypatch.setattr(ray_trainer, "cpus_per_worker", lambda cfg: 2.0)
    cfg = job({"use_gpu": True, "gpus_per_worker": 0.25, "cpus_per_worker": 2})
    trainer = ray_trainer.build_trainer(cfg, {}, tmp_path, "a0")
    scaling = trainer.scaling_config
    assert scaling.use_gpu and scaling._resources_per_worker_not_none == {"CPU": 2.0, "GPU": 0.25}
    cpu = ray_trainer.build_trainer(job({"cpus_per_worker": 2}), {}, tmp_path, "a0").scaling_config
    assert not cpu.use_gpu and cpu._resources_per_worker_not_none == {"CPU": 2.0}
