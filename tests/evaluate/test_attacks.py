"""Real TextAttack attacks through ``predict_logits``: resume equality, timeouts, final metrics.

Tiny in-process model (fast); the real-encoder runs are in test_attacks_real.py (slow).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from attack_fixtures import tiny_trained_method

from conftest import make_tiny_task
from robustsweep.config import EvalConfig, SplitSource
from robustsweep.evaluate.attacks import run_profile, select_examples
from robustsweep.evaluate.inference import predict_probs
from robustsweep.evaluate.profiles import AttackProfile, load_profile
from robustsweep.evaluate.runner import AttackRunner
from robustsweep.evaluate.suite import final_metrics, profile_tags
from robustsweep.methods.base import RobustMethod

pytestmark = pytest.mark.usefixtures("textattack_ready")


@pytest.fixture(scope="module")
def method() -> RobustMethod:
    return tiny_trained_method()


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        (np.isnan(a[k]) and np.isnan(b[k])) or a[k] == b[k] for k in a)


def _rows(table) -> list[dict]:
    return [{k: v for k, v in asdict(r).items() if k != "seconds"}
            for r in sorted(table.read(), key=lambda r: r.example_id)]


def test_resumed_evaluation_equals_uninterrupted(method: RobustMethod, tmp_path: Path) -> None:
    task = make_tiny_task(n_eval=8)
    profile = load_profile("deepwordbug").model_copy(update={"num_examples": 8, "seed": 5})
    full = run_profile(method, task.eval, profile, tmp_path / "full", progress=False)
    part = run_profile(method, task.eval, profile, tmp_path / "resumed", progress=False,
                       stop_after=3)
    assert part.attacked_now == 3
    with part.table.csv_path.open("a") as handle:  # killed mid-row
        handle.write("99,1,succ")
    rest = run_profile(method, task.eval, profile, tmp_path / "resumed", progress=False)
    assert rest.attacked_now == 5
    assert _rows(rest.table) == _rows(full.table)
    assert _same(rest.metrics, full.metrics)
    outcomes = {r["outcome"] for r in _rows(full.table)}
    assert {"successful", "failed"} <= outcomes  # both kinds resumed, random swaps included


def test_changed_profile_does_not_reuse_old_rows(method: RobustMethod, tmp_path: Path) -> None:
    task = make_tiny_task(n_eval=4)
    profile = load_profile("deepwordbug").model_copy(update={"num_examples": 4})
    run_profile(method, task.eval, profile, tmp_path, progress=False)
    other = profile.model_copy(update={"seed": 9})
    assert run_profile(method, task.eval, other, tmp_path, progress=False).attacked_now == 4


def test_outcomes_are_real(method: RobustMethod, tmp_path: Path) -> None:
    """Successful perturbations really flip the method's prediction; skips were wrong already."""
    from robustsweep.data import TextSet

    task = make_tiny_task(n_eval=6)
    profile = load_profile("pwws").model_copy(update={"num_examples": 6})
    report = run_profile(method, task.eval, profile, tmp_path, progress=False)
    rows = report.table.read()
    assert {r.outcome for r in rows} <= {"successful", "failed", "skipped"}
    for r in rows:
        probs = predict_probs(method, TextSet([r.original_text, r.perturbed_text], None, [0, 1]))
        original, perturbed = probs.argmax(axis=1)
        assert original == r.original_pred
        if r.outcome == "successful":
            assert perturbed != r.label and r.perturbed_words >= 1 and r.queries >= 1
        elif r.outcome == "skipped":
            assert original != r.label
        else:
            assert perturbed == r.label
    correct = np.mean([r.outcome != "skipped" for r in rows])
    assert report.metrics["attack_clean_accuracy/pwws"] == pytest.approx(correct)


def test_only_correct_and_explicit_ids(method: RobustMethod) -> None:
    task = make_tiny_task(n_eval=12)
    preds = predict_probs(method, task.eval).argmax(axis=1)
    profile = AttackProfile(name="p", recipe="pwws", num_examples=3, only_correct=True)
    chosen = select_examples(method, task.eval, profile)
    correct_ids = [i for i, p, y in zip(task.eval.ids, preds, task.eval.labels) if p == y]
    assert [e.example_id for e in chosen] == correct_ids[:3]
    pinned = AttackProfile(name="p", recipe="pwws", example_ids=[task.eval.ids[5], task.eval.ids[2]])
    assert [e.example_id for e in select_examples(method, task.eval, pinned)] == [
        task.eval.ids[5], task.eval.ids[2]]


def test_timeout_is_its_own_outcome(method: RobustMethod) -> None:
    task = make_tiny_task(n_eval=4)
    profile = AttackProfile(name="t", recipe="pwws", timeout_s=1e-6)
    runner = AttackRunner(method, profile)
    example = select_examples(method, task.eval, profile)[0]
    result = runner.run(example)
    assert result.outcome == "timeout" and result.perturbed_text == ""
    assert runner.wrapper.deadline is None


def test_final_metrics_anomaly_and_attacks(method: RobustMethod, tmp_path: Path) -> None:
    from robustsweep.evaluate.anomaly import unlabeled

    task = make_tiny_task(n_eval=6)
    task.anomaly["noise"] = unlabeled(["zz qq xx", "plot plot plot", "a the a"])
    cfg = EvalConfig(attacks=["deepwordbug-textdefender"], attack_examples=3,
                     anomaly=[SplitSource(name="noise", source="builtin:news_headlines")])
    result, artifacts = final_metrics(method, task, cfg, tmp_path, progress=False)
    assert set(result) >= {"anomaly_auroc/noise", "anomaly_fpr95/noise",
                           "anomaly_auroc_energy/noise", "anomaly_fpr95_energy/noise",
                           "robust_accuracy/deepwordbug-textdefender",
                           "attack_success_rate/deepwordbug-textdefender",
                           "avg_queries/deepwordbug-textdefender",
                           "perturbed_word_ratio/deepwordbug-textdefender"}
    assert all(p.is_file() for p in artifacts)
    assert {p.name for p in artifacts} >= {"anomaly_scores.png", "examples.csv", "manifest.json"}
    tags = profile_tags(cfg)
    assert tags["attack_profile/deepwordbug-textdefender"].startswith("deepwordbug-textdefender v1 sha256:")


def test_proxy_metrics_are_prefixed(method: RobustMethod, tmp_path: Path) -> None:
    from robustsweep.evaluate.suite import proxy_metrics

    task = make_tiny_task(n_eval=6)
    assert proxy_metrics(method, task, EvalConfig(), tmp_path) == {}
    out = proxy_metrics(method, task, EvalConfig(proxy_attack="deepwordbug", proxy_examples=2),
                        tmp_path)
    assert out["proxy_attack_examples/deepwordbug"] == 2
    assert "proxy_robust_accuracy/deepwordbug" in out
