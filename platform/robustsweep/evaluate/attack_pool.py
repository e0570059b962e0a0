"""Many examples in parallel on CPU: a Ray actor pool, one model replica + attack per actor.

TextAttack's own ``parallel=True`` refuses to run without a GPU. Each actor gets an equal
share of the CPUs as torch threads; examples are handed out one at a time and results
stream back in completion order (the caller writes them to the resumable table).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Self

from robustsweep.evaluate.inference import inference_mode
from robustsweep.evaluate.outcomes import ExampleResult
from robustsweep.evaluate.profiles import AttackProfile
from robustsweep.evaluate.runner import AttackRunner, Example
from robustsweep.methods.base import RobustMethod
from robustsweep.resources import cache_dir


class _Worker:
    """Actor body: rebuilds the attack around its own copy of the method."""

    def __init__(self, method: RobustMethod, profile_json: dict[str, Any], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.runner = AttackRunner(method, AttackProfile.model_validate(profile_json))

    def run(self, example: Example) -> ExampleResult:
        return self.runner.run(example)

    def ready(self) -> bool:
        return True


def _ensure_ray(workers: int) -> bool:
    """Connect to (or start) Ray; True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"ROBUSTSWEEP_CACHE": str(cache_dir()), "TOKENIZERS_PARALLELISM": "false"}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False,
                 _node_ip_address="127.0.0.1", runtime_env=env, log_to_driver=False)
    return True


class AttackPool:
    """Ray actors holding the victim and the built attack; reusable across runs of a profile.

    Start-up (Ray, one TextAttack import + model copy per actor) costs seconds; keep one pool
    for several ``run_profile`` calls (benchmarks, resumed runs) to pay it once.
    """

    def __init__(self, method: RobustMethod, profile: AttackProfile, workers: int) -> None:
        import ray

        self._started_ray = _ensure_ray(workers)
        cpus = ray.available_resources().get("CPU", workers)
        self.workers = max(1, workers)
        threads = max(1, int(cpus // self.workers))
        self.profile = profile
        with inference_mode(method):  # ships the unwrapped model (a DDP wrapper cannot pickle)
            method_ref = ray.put(method)
        actor_cls = ray.remote(num_cpus=min(1.0, cpus / self.workers))(_Worker)
        self.actors = [actor_cls.remote(method_ref, profile.model_dump(mode="json"), threads)
                       for _ in range(self.workers)]
        ray.get([a.ready.remote() for a in self.actors])

    def map(self, todo: list[Example]) -> Iterator[ExampleResult]:
        """Results in completion order."""
        from ray.util import ActorPool

        yield from ActorPool(self.actors).map_unordered(lambda a, ex: a.run.remote(ex), todo)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_parallel(method: RobustMethod, profile: AttackProfile, todo: list[Example],
                  workers: int) -> Iterator[ExampleResult]:
    """Yield results as actors finish them (a pool just for these examples)."""
    with AttackPool(method, profile, min(workers, len(todo))) as pool:
        yield from pool.map(todo)
