"""How a sweep uses the cluster: resources per trial, concurrency, and the (ASHA) scheduler."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from robustsweep.config import JobConfig, SweepConfig
from robustsweep.errors import ConfigError


@dataclass
class ResourcePlan:
    """How trials share the cluster."""

    cpus_per_worker: float
    max_concurrent: int
    trial_resources: dict[str, float]
    gpus_per_worker: float = 0.0  # a share (0.25: four workers per GPU), whole GPUs, or 0


def gpu_trial_slots(free_gpus: float, gpus_per_worker: float, workers: int) -> int:
    """Trials whose workers all fit on ``free_gpus``.

    Ray packs a fractional worker inside one GPU and never splits it across two, so a GPU holds
    floor(1 / share) workers (0.3 -> 3, not 3.33); whole-GPU workers take ``share`` GPUs each.
    """
    if gpus_per_worker >= 1:
        return math.floor(free_gpus / (gpus_per_worker * workers) + 1e-9)
    per_gpu = math.floor(1 / gpus_per_worker + 1e-9)
    whole = math.floor(free_gpus + 1e-9)
    rest = math.floor(max(0.0, free_gpus - whole) / gpus_per_worker + 1e-9)
    return (whole * per_gpu + rest) // workers


def sweep_of(cfg: JobConfig) -> SweepConfig:
    if cfg.sweep is None:
        raise ConfigError(
            f"job {cfg.name!r} has no sweep: section (see jobs/quickstart_sweep.yaml)"
        )
    return cfg.sweep


def check_asha(cfg: JobConfig) -> None:
    """ASHA needs an epoch to stop at: grace_period < train.epochs."""
    sweep = sweep_of(cfg)
    if sweep.asha.enabled and sweep.asha.grace_period >= cfg.train.epochs:
        raise ConfigError(
            f"sweep.asha.grace_period ({sweep.asha.grace_period}) must be below "
            f"train.epochs ({cfg.train.epochs}) for ASHA to stop anything"
        )


def plan_resources(cfg: JobConfig, total: int) -> ResourcePlan:
    """CPUs per worker and concurrency = floor(free CPUs / (workers x CPUs per worker)), and
    with ``use_gpu`` at most the trials whose workers fit on the free GPUs
    (``scaling.gpus_per_worker`` 0.25: four single-worker trials per GPU).

    Trial drivers take only ``sweep.trial_resources`` (a custom resource by default), never the
    CPUs their own Train workers wait for (the 2-core deadlock in offline.md).
    """
    import ray

    sweep = sweep_of(cfg)
    cluster, free = ray.cluster_resources(), ray.available_resources()
    for key, amount in sweep.trial_resources.items():
        if cluster.get(key, 0.0) < amount:
            raise ConfigError(
                f"the Ray cluster has no {key!r} resource for trial drivers: start every node with "
                f"--resources='{{\"{key}\": 100}}' or set sweep.trial_resources (e.g. {{CPU: 0.1}})"
            )
    cpw = sweep.cpus_per_trial_worker or cfg.scaling.cpus_per_worker or 1.0
    workers = cfg.scaling.num_workers
    if cluster.get("CPU", 0.0) < cpw * workers:
        raise ConfigError(
            f"a trial needs {workers} x {cpw:g} CPUs but the cluster has "
            f"{cluster.get('CPU', 0.0):g}"
        )
    limits = [math.floor(free.get("CPU", 0.0) / (cpw * workers) + 1e-9)]
    gpw = cfg.scaling.gpu_share()
    if gpw:
        if gpu_trial_slots(cluster.get("GPU", 0.0), gpw, workers) < 1:
            raise ConfigError(
                f"scaling.use_gpu: a trial needs {workers} x {gpw:g} GPUs but the cluster has "
                f"{cluster.get('GPU', 0.0):g}"
            )
        limits.append(gpu_trial_slots(free.get("GPU", 0.0), gpw, workers))
    for key, amount in sweep.trial_resources.items():
        limits.append(math.floor(cluster[key] / amount + 1e-9))
    concurrent = sweep.max_concurrent_trials or max(1, min(limits))
    return ResourcePlan(cpw, max(1, min(concurrent, total)), dict(sweep.trial_resources), gpw)


def build_scheduler(cfg: JobConfig) -> Any:
    """ASHA on one per-epoch metric (time = epochs), or FIFO.

    ``max_t`` is the last epoch *before* the final one and ``stop_last_trials`` is off, so a
    trial that survives every rung always reaches its final evaluation.
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sweep = sweep_of(cfg)
    if not sweep.asha.enabled:
        return FIFOScheduler()
    check_asha(cfg)
    metric, mode = sweep.asha_metric_mode()
    return ASHAScheduler(
        time_attr="epoch",
        metric=metric,
        mode=mode,
        max_t=cfg.train.epochs - 1,
        grace_period=sweep.asha.grace_period,
        reduction_factor=sweep.asha.reduction_factor,
        stop_last_trials=False,
    )
