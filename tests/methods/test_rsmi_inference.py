"""RSMI's batched inference gives the predictions of the original per-copy code, and
``cost/inference_passes_per_query`` counts the forwards each method really makes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from test_rsmi import long_batch

from conftest import make_tiny_adapter
from robustsweep.data import TextSet
from robustsweep.evaluate.inference import PassCounter, predict_logits
from robustsweep.methods import build
from robustsweep.methods.rsmi import _MODEL_KEYS, RSMI, RSMIKnobs, binom_cdf, input_seed


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- the inference code as it was before batching (reference) ---------------------------------
@dataclass
class OldPlan:
    """NoisePlan before batching: one transfer per example, one randint call per copy."""

    generators: list[torch.Generator] | None
    lengths: list[int]
    copies: int = 1
    left_padded: bool = False

    def normal(self, like: torch.Tensor) -> torch.Tensor:
        if self.generators is None:
            return torch.randn_like(like)
        noise = torch.zeros_like(like)
        dim = like.shape[-1]
        for b, (gen, n) in enumerate(zip(self.generators, self.lengths)):
            rows = slice(b * self.copies, (b + 1) * self.copies)
            real = slice(like.shape[1] - n, None) if self.left_padded else slice(0, n)
            noise[rows, real] = torch.randn((self.copies, n, dim), generator=gen).to(like)
        return noise

    def subset(self, examples: list[int], copies: int) -> OldPlan:
        gens = None if self.generators is None else [self.generators[b] for b in examples]
        return OldPlan(gens, [self.lengths[b] for b in examples], copies, self.left_padded)

    def choice(self, b: int, high: int, size: int) -> torch.Tensor:
        gen = None if self.generators is None else self.generators[b]
        return torch.randint(high, (size,), generator=gen)


def old_plan(method: RSMI, batch: dict) -> OldPlan:
    mask = batch["attention_mask"]
    lengths = [int(n) for n in mask.sum(dim=1).tolist()]
    rows = [batch["input_ids"][b][mask[b].bool()].tolist() for b in range(mask.shape[0])]
    assert method.fixed_seed is not None
    gens = [torch.Generator().manual_seed(input_seed(r, method.fixed_seed)) for r in rows]
    return OldPlan(gens, lengths)


def old_candidates(method: RSMI, batch: dict, plan: OldPlan) -> list[list[int]]:
    if method.knobs.multi_mask == 0:
        return [[] for _ in range(batch["input_ids"].shape[0])]
    _, scores = method.saliency(batch, None, plan)  # type: ignore[arg-type]
    return method.mask_candidates(batch["input_ids"], batch["attention_mask"], scores)


def old_predict_logits(method: RSMI, batch: dict) -> torch.Tensor:
    """The pre-batching ``predict_logits``: stage-2 masks drawn copy by copy."""
    k = method.knobs
    plan = old_plan(method, batch)
    candidates = old_candidates(method, batch, plan)
    stage1 = [[cands[:k.multi_mask]] * k.num_ensemble for cands in candidates]
    logits = method.ensemble_logits(batch, stage1, plan)  # type: ignore[arg-type]
    out = method.aggregate(logits)
    if k.binom_ensemble == 0:
        return out.detach()
    votes = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).sum(dim=1)
    uncertain = [b for b, n_a in enumerate(votes.max(dim=1).values.tolist())
                 if binom_cdf(int(n_a), k.num_ensemble) < k.alpha_p]
    if uncertain:
        index = torch.tensor(uncertain)
        sub = {key: batch[key][index] for key in _MODEL_KEYS if key in batch}
        sub_plan = plan.subset(uncertain, 1)
        sub_candidates = old_candidates(method, sub, sub_plan)
        stage2 = []
        for j, cands in enumerate(sub_candidates):
            draws = [sub_plan.choice(j, len(cands), k.multi_mask).tolist() if cands else []
                     for _ in range(k.binom_ensemble)]
            stage2.append([[cands[d] for d in row] for row in draws])
        out[index] = method.aggregate(method.ensemble_logits(sub, stage2, sub_plan))  # type: ignore[arg-type]
    return out.detach()


def make(**knobs: object) -> RSMI:
    method = RSMI(RSMIKnobs(fixed_noise=True, noise_seed=3, **knobs))  # type: ignore[arg-type]
    method.setup(make_tiny_adapter(layers=4, seed=0))
    method.adapter.core.eval()
    return method


@pytest.mark.parametrize("knobs", [
    {"noise_sigma": 1.5, "vote_type": "avg"},
    {"noise_sigma": 1.5, "vote_type": "max", "multi_mask": 3},
    {"noise_sigma": 1.5, "num_ensemble": 3, "binom_ensemble": 7, "mask_topk": 3},
    {"noise_sigma": 0.4, "binom_ensemble": 0},
])
def test_batched_inference_equals_the_per_copy_reference(knobs: dict) -> None:
    method = make(**knobs)
    batch = long_batch(batch_size=8, length=16, seed=4)
    with torch.no_grad():
        expected = old_predict_logits(method, batch)
        with PassCounter(method) as passes:
            got = method.predict_logits(batch)
    assert torch.equal(got, expected)
    k = method.knobs
    stage1 = 8 * (1 + k.num_ensemble)
    if k.binom_ensemble:  # the reference only proves something if stage 2 really ran
        assert passes.rows > stage1 and (passes.rows - stage1) % (1 + k.binom_ensemble) == 0
    else:
        assert passes.rows == stage1


def test_one_randint_call_draws_what_per_copy_calls_draw() -> None:
    """What the batched stage-2 draw relies on (torch's CPU sampler is element by element)."""
    for high in (1, 2, 5, 8):
        a, b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        per_copy = torch.stack([torch.randint(high, (2,), generator=a) for _ in range(50)])
        assert torch.equal(per_copy, torch.randint(high, (50, 2), generator=b))
        assert torch.equal(torch.randn(3, generator=a), torch.randn(3, generator=b))  # same state after


# ---- cost/inference_passes_per_query ---------------------------------------------------------
def textset(n: int = 12) -> TextSet:
    words = ["good", "bad", "film", "plot", "actor", "great", "dull", "scene", "story", "funny"]
    texts = [" ".join(words[(i + j) % len(words)] for j in range(12 + i % 3)) for i in range(n)]
    return TextSet(texts=texts, labels=[i % 2 for i in range(n)], ids=list(range(n)))


def passes(method: object, n: int = 12) -> float:
    with PassCounter(method) as counter:  # type: ignore[arg-type]
        predict_logits(method, textset(n), batch_size=5)  # type: ignore[arg-type]
    return counter.per_query(n)


def test_plain_forward_methods_cost_one_pass() -> None:
    for name in ("vanilla", "pgd", "freelb"):
        method = build(name, {})
        method.setup(make_tiny_adapter())
        assert passes(method) == 1.0, name


def test_rsmi_passes_count_saliency_and_the_ensemble() -> None:
    method = make(noise_sigma=0.2, num_ensemble=5, binom_ensemble=0)
    assert passes(method) == 6.0  # 1 saliency forward + 5 copies
    method = make(noise_sigma=0.2, num_ensemble=3, binom_ensemble=0, multi_mask=0)
    assert passes(method) == 3.0  # no masking: no saliency pass
    method = make(noise_sigma=3.0, num_ensemble=5, binom_ensemble=10, alpha_p=0.98)
    measured = passes(method)
    assert measured > 6.0 and (measured * 12 - 6 * 12) % 11 == 0  # + (1 + 10) per uncertain input


def test_clean_metrics_logs_the_measured_passes() -> None:
    from robustsweep.config import EvalConfig
    from robustsweep.data import Task
    from robustsweep.evaluate.suite import clean_metrics

    method = make(noise_sigma=0.2, num_ensemble=4, binom_ensemble=0)
    task = Task(train=textset(4), eval=textset(10), label_names=["neg", "pos"])
    result = clean_metrics(method, task, EvalConfig(), batch_size=4)
    assert result["cost/inference_passes_per_query"] == 5.0
