"""The batched, cached victim wrapper: same numbers as predict_logits, fewer forwards."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from conftest import make_tiny_adapter
from robustsweep.data import TextSet
from robustsweep.evaluate.inference import predict_logits
from robustsweep.evaluate.wrapper import ExampleTimeout, MethodModelWrapper
from robustsweep.methods.base import RobustMethod

TEXTS = ["good great film", "bad awful plot the a", "fine", "poor film film film film film",
         "the plot is great and fine", "awful"]


class ShiftedMethod(RobustMethod):
    """An 'inference-time defence': adds a constant to class 0, so bypassing it shows."""

    name = "shifted"

    def predict_logits(self, batch):
        logits = self.adapter.logits(batch)
        return logits + torch.tensor([5.0, 0.0])


@pytest.fixture
def method() -> RobustMethod:
    m = ShiftedMethod()
    m.setup(make_tiny_adapter())
    return m


def test_matches_predict_logits_through_the_method(method: RobustMethod) -> None:
    wrapper = MethodModelWrapper(method, max_batch_size=4)
    expected = predict_logits(method, TextSet(TEXTS, None, list(range(len(TEXTS)))))
    got = wrapper(TEXTS)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert (got[:, 0] - method.adapter.logits(method.adapter.encode(TEXTS)).detach().numpy()[:, 0]
            == pytest.approx(5.0, abs=1e-4))


def test_identical_texts_are_scored_once(method: RobustMethod) -> None:
    wrapper = MethodModelWrapper(method)
    wrapper(TEXTS + TEXTS[:2])
    assert wrapper.stats.scored == len(TEXTS) and wrapper.stats.forwards == 1
    model_seconds = wrapper.stats.model_seconds
    assert model_seconds > 0
    out = wrapper(list(reversed(TEXTS)))
    assert wrapper.stats.scored == len(TEXTS) and wrapper.stats.forwards == 1
    assert wrapper.stats.model_seconds == model_seconds  # all cached: no encoder time
    assert wrapper.stats.cache_hits == 2 + len(TEXTS)
    np.testing.assert_allclose(out, wrapper(TEXTS)[::-1])


def test_one_forward_per_candidate_set_within_limits(method: RobustMethod) -> None:
    wrapper = MethodModelWrapper(method, max_batch_size=2)
    wrapper(TEXTS)
    assert wrapper.stats.forwards == 3  # 6 texts, 2 per forward
    tokens = MethodModelWrapper(method, max_batch_size=100, max_batch_tokens=20)
    tokens(TEXTS)
    assert tokens.stats.padded_tokens <= 20 * tokens.stats.forwards


def test_length_sorted_chunks_pad_less(method: RobustMethod) -> None:
    short = [f"w{i}" for i in range(8)]
    long = [" ".join(["film"] * 20) + f" {i}" for i in range(8)]
    mixed = [t for pair in zip(short, long) for t in pair]
    wrapper = MethodModelWrapper(method, max_batch_size=8)
    wrapper(mixed)
    # sorted: one chunk of 8 long (CLS + 21 words + SEP) + one of 8 short (3), not 2 × 8 × 23
    assert wrapper.stats.padded_tokens == 8 * 23 + 8 * 3
    assert wrapper.stats.tokens == wrapper.stats.padded_tokens  # no padding left at all


def test_cache_is_bounded(method: RobustMethod) -> None:
    wrapper = MethodModelWrapper(method, cache_size=3)
    wrapper(TEXTS)
    assert len(wrapper._cache) == 3


def test_text_pairs(method: RobustMethod) -> None:
    wrapper = MethodModelWrapper(method)
    pairs = [("good film", "bad plot"), ("fine", "awful")]
    expected = predict_logits(method, TextSet(["good film", "fine"], None, [0, 1],
                                              pairs=["bad plot", "awful"]))
    np.testing.assert_allclose(wrapper(pairs), expected, rtol=1e-5, atol=1e-5)


def test_deadline_raises_timeout(method: RobustMethod) -> None:
    wrapper = MethodModelWrapper(method)
    wrapper.deadline = time.monotonic() - 1
    with pytest.raises(ExampleTimeout):
        wrapper(TEXTS)
    wrapper.deadline = None
    assert wrapper(TEXTS).shape == (len(TEXTS), 2)


def test_bf16_victim_queries_are_close_to_fp32_and_opt_in(method: RobustMethod) -> None:
    fp32 = MethodModelWrapper(method)(TEXTS)
    bf16 = MethodModelWrapper(method, precision="bf16")(TEXTS)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    assert not np.array_equal(bf16, fp32)  # really ran in bf16
    np.testing.assert_allclose(bf16, fp32, atol=0.1)
    assert np.array_equal(bf16.argmax(1), fp32.argmax(1))


def test_attack_precision_is_in_the_profile_hash_only_when_not_fp32() -> None:
    from robustsweep.config import EvalConfig
    from robustsweep.evaluate.profiles import effective_profile, load_profile

    stock = load_profile("pwws")
    assert stock.hash.startswith("052f8f8fce07")  # the hash every fp32 result was recorded under
    fp32 = effective_profile("pwws", EvalConfig(attacks=["pwws"], attack_examples=100,
                                                attack_precision="fp32"))
    bf16 = effective_profile("pwws", EvalConfig(attacks=["pwws"], attack_examples=100,
                                                attack_precision="bf16"))
    assert fp32.hash == effective_profile("pwws", EvalConfig(attacks=["pwws"])).hash
    assert bf16.precision == "bf16" and bf16.hash != fp32.hash
