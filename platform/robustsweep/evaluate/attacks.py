"""Adversarial robustness: run an attack profile on the eval set through ``predict_logits``.

Flow per profile: pick the examples (pinned by the profile), open the per-example table
(resuming if it exists under the same spec), attack what is left in-process or on a Ray
actor pool, and summarise the table into the canonical metrics. Every example is seeded
from (profile seed, example id), so results do not depend on order, worker count or resumes.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robustsweep.data import TextSet
from robustsweep.evaluate.outcomes import ExampleResult, ResultsTable, summarize
from robustsweep.evaluate.profiles import AttackProfile
from robustsweep.evaluate.wrapper import ExampleTimeout, MethodModelWrapper
from robustsweep.methods.base import RobustMethod

PAIR_COLUMNS = ("premise", "hypothesis")


@dataclass(frozen=True)
class Example:
    """One row to attack (picklable: sent to Ray actors)."""

    example_id: int
    text: str
    label: int
    pair: str | None = None


def example_seed(seed: int, example_id: int) -> int:
    """A per-example seed independent of order and workers."""
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


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
        from robustsweep.evaluate.suite import predict_probs

        preds = predict_probs(method, textset.subset(positions), batch_size).argmax(axis=1)
        positions = [p for p, pred in zip(positions, preds) if pred == textset.labels[p]]
    positions = positions[: profile.num_examples]
    return [Example(int(textset.ids[p]), textset.texts[p], int(textset.labels[p]),
                    textset.pairs[p] if textset.pairs is not None else None) for p in positions]


def warm_up(attack: Any) -> None:
    """Load an attack's lazy resources (WordNet indexes: 10-25 s; sentence encoder) before the
    first example, so per-example times and time limits measure attacking, not loading."""
    from textattack.shared import AttackedText

    text = AttackedText("a good and memorable film")
    try:
        attack.get_transformations(text, original_text=text)
    finally:
        attack.clear_cache()


class AttackRunner:
    """One model replica + one built attack; attacks examples one at a time."""

    def __init__(self, method: RobustMethod, profile: AttackProfile,
                 wrapper: MethodModelWrapper | None = None) -> None:
        from robustsweep.evaluate.recipes import build_attack

        self.profile = profile
        self.wrapper = wrapper or MethodModelWrapper(method)
        self.attack = build_attack(profile, self.wrapper)
        warm_up(self.attack)

    def run(self, example: Example) -> ExampleResult:
        from textattack.shared import AttackedText
        from textattack.shared.utils import set_seed

        set_seed(example_seed(self.profile.seed, example.example_id))
        source: Any = example.text
        if example.pair is not None:
            source = OrderedDict(zip(PAIR_COLUMNS, (example.text, example.pair)))
        original = AttackedText(source)
        started = time.monotonic()
        self.wrapper.deadline = started + self.profile.timeout_s if self.profile.timeout_s else None
        try:
            result = self.attack.attack(original, example.label)
        except ExampleTimeout:
            self.attack.clear_cache()
            return self._timeout(example, original, time.monotonic() - started)
        finally:
            self.wrapper.deadline = None
        return self._from_result(example, result, time.monotonic() - started)

    def _timeout(self, example: Example, original: Any, seconds: float) -> ExampleResult:
        goal = self.attack.goal_function
        return ExampleResult(
            example_id=example.example_id, label=example.label, outcome="timeout",
            original_pred=-1, perturbed_pred=-1, queries=int(getattr(goal, "num_queries", 0)),
            num_words=original.num_words, perturbed_words=0, seconds=round(seconds, 4),
            original_text=example.text, perturbed_text="", original_pair=example.pair or "")

    @staticmethod
    def _from_result(example: Example, result: Any, seconds: float) -> ExampleResult:
        from textattack.attack_results import SkippedAttackResult, SuccessfulAttackResult

        outcome = ("successful" if isinstance(result, SuccessfulAttackResult)
                   else "skipped" if isinstance(result, SkippedAttackResult)
                   else "failed")  # FailedAttackResult (MaximizedAttackResult: not classification)
        before = result.original_result.attacked_text
        after = result.perturbed_result.attacked_text
        changed = 0 if outcome == "skipped" else len(before.all_words_diff(after))
        texts = list(after._text_input.values())
        return ExampleResult(
            example_id=example.example_id, label=example.label, outcome=outcome,
            original_pred=int(result.original_result.output),
            perturbed_pred=int(result.perturbed_result.output),
            queries=int(result.perturbed_result.num_queries), num_words=before.num_words,
            perturbed_words=changed, seconds=round(seconds, 4), original_text=example.text,
            perturbed_text=texts[0], original_pair=example.pair or "",
            perturbed_pair=texts[1] if len(texts) > 1 else "")


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
        from robustsweep.evaluate.attack_pool import iter_parallel

        stream = iter_parallel(method, profile, todo, workers)
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
