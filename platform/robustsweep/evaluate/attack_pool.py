"""Many examples in parallel on CPU: a Ray actor pool, one model replica + attack per actor.

TextAttack's own ``parallel=True`` refuses to run without a GPU. Each actor gets an equal
share of the CPUs as torch threads; examples are handed out one at a time and results
stream back in completion order (the caller writes them to the resumable table).
"""

from __future__ import annotations

import contextlib
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
        self.workers = max(1, workers)
        self.profile = profile
        self.actors: list[Any] = []
        self._started_ray = _ensure_ray(workers)
        try:
            self._start(method, profile)
        except BaseException:
            # __exit__ never runs when __init__ raises: without this a failed start (an actor
            # that cannot build its attack, Ctrl-C) leaves actors and a Ray instance running.
            self.close()
            raise

    def _start(self, method: RobustMethod, profile: AttackProfile) -> None:
        """Create the actors and wait until each has built its attack."""
        import ray

        cpus = ray.available_resources().get("CPU", self.workers)
        threads = max(1, int(cpus // self.workers))
        with inference_mode(method):  # ships the unwrapped model (a DDP wrapper cannot pickle)
            method_ref = ray.put(method)
        actor_cls = ray.remote(num_cpus=min(1.0, cpus / self.workers))(_Worker)
        for _ in range(self.workers):
            self.actors.append(
                actor_cls.remote(method_ref, profile.model_dump(mode="json"), threads))
        ray.get([a.ready.remote() for a in self.actors])

    def map(self, todo: list[Example]) -> Iterator[ExampleResult]:
        """Results in completion order."""
        from ray.util import ActorPool

        yield from ActorPool(self.actors).map_unordered(lambda a, ex: a.run.remote(ex), todo)

    def close(self) -> None:
        """Kill the actors, and shut Ray down if this pool started it (idempotent)."""
        import ray

        actors, self.actors = self.actors, []
        for actor in actors:
            with contextlib.suppress(Exception):  # one dead actor must not stop the cleanup
                ray.kill(actor)
        if self._started_ray:
            self._started_ray = False
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
