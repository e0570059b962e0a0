"""One attack on one example: the seeded, time-limited unit every attack path shares.

Both the in-process loop (``attacks``) and the Ray actor pool (``attack_pool``) build an
``AttackRunner`` per model replica; it lives below both so neither imports the other back.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from robustsweep.evaluate.outcomes import ExampleResult
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
        self.wrapper = wrapper or MethodModelWrapper(method, precision=profile.precision)
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
