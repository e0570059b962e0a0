"""Adversarial robustness: run an attack profile on the eval set through ``predict_logits``.

Flow per profile: pick the examples (pinned by the profile), open the per-example table
(resuming if it exists under the same spec), attack what is left in-process or on a Ray
actor pool, and summarise the table into the canonical metrics. Every example is seeded
from (profile seed, example id), so results do not depend on order, worker count or resumes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robustsweep.data import TextSet
from robustsweep.evaluate import attack_pool
from robustsweep.evaluate.outcomes import ExampleResult, ResultsTable, summarize
from robustsweep.evaluate.profiles import AttackProfile
from robustsweep.evaluate.runner import AttackRunner, Example
from robustsweep.methods.base import RobustMethod


def select_examples(method: RobustMethod, textset: TextSet, profile: AttackProfile,
                    batch_size: int = 64) -> list[Example]:
    """The profile's examples: explicit ids, else the first N rows (or first N correct ones)."""
    if textset.labels is None:
        raise ValueError("attacks need a labelled eval set")
    positions = list(range(len(textset)))
    if profile.example_ids is not None:
        where = {rid: pos for pos, rid in enumerate(textset.ids)}
        missing = [i for i in profile.example_ids if i not in where]
        if missing:
            from robustsweep.errors import ConfigError

            raise ConfigError(f"attack profile {profile.name}: example ids {missing[:5]} are not "
                              "in the eval set")
        positions = [where[i] for i in profile.example_ids]
    if profile.only_correct:
        from robustsweep.evaluate.inference import predict_probs

        preds = predict_probs(method, textset.subset(positions), batch_size).argmax(axis=1)
        positions = [p for p, pred in zip(positions, preds) if pred == textset.labels[p]]
    positions = positions[: profile.num_examples]
    return [Example(int(textset.ids[p]), textset.texts[p], int(textset.labels[p]),
                    textset.pairs[p] if textset.pairs is not None else None) for p in positions]


def manifest(profile: AttackProfile, examples: list[Example]) -> dict[str, Any]:
    """What a results table was produced under (resume only under an identical manifest)."""
    from robustsweep.evaluate.recipes import get_recipe

    return {"profile": profile.spec(), "profile_hash": profile.hash, "label": profile.label,
            "recipe_title": get_recipe(profile.recipe).title,
            "example_ids": [e.example_id for e in examples]}


def _progress(total: int, desc: str, done: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="ex", dynamic_ncols=True)


@dataclass
class AttackReport:
    profile: AttackProfile
    metrics: dict[str, float]
    table: ResultsTable
    seconds: float
    attacked_now: int


def iter_sequential(method: RobustMethod, profile: AttackProfile,
                    todo: list[Example]) -> Iterator[ExampleResult]:
    runner = AttackRunner(method, profile)
    for example in todo:
        yield runner.run(example)


def run_profile(method: RobustMethod, textset: TextSet, profile: AttackProfile, out_dir: Path,
                workers: int = 1, progress: bool = True, stop_after: int | None = None,
                pool: Any = None) -> AttackReport:
    """Attack (or resume attacking) ``profile``'s examples; write the table; return metrics.

    ``stop_after`` ends the run after that many new examples (tests use it to interrupt);
    ``pool`` is an already started ``attack_pool.AttackPool`` for this profile.
    """
    started = time.perf_counter()
    examples = select_examples(method, textset, profile)
    table = ResultsTable(out_dir / profile.name)
    done = table.open(manifest(profile, examples))
    table.repair()
    todo = [e for e in examples if e.example_id not in done]
    if stop_after is not None:
        todo = todo[:stop_after]
    stream: Iterable[ExampleResult]
    if todo and pool is not None:
        if pool.profile.hash != profile.hash:
            raise ValueError("the attack pool was built for another profile")
        stream = pool.map(todo)
    elif todo and workers > 1:
        stream = attack_pool.iter_parallel(method, profile, todo, workers)
    else:
        stream = iter_sequential(method, profile, todo) if todo else iter(())
    bar = _progress(len(examples), f"attack {profile.name}", len(done)) if progress else None
    counts: dict[str, int] = {}
    for result in stream:
        table.append(result)
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(counts)
    if bar is not None:
        bar.close()
    by_id = {r.example_id: r for r in table.read()}
    ordered = [by_id[e.example_id] for e in examples if e.example_id in by_id]
    return AttackReport(profile, summarize(ordered, profile.name), table,
                        time.perf_counter() - started, len(todo))


def outcome_vector(results: list[ExampleResult]) -> np.ndarray:
    """Outcomes in example order (benchmarks and tests compare runs with it)."""
    return np.array([r.outcome for r in sorted(results, key=lambda r: r.example_id)])
