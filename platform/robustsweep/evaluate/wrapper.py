"""The victim as TextAttack sees it: ``method.predict_logits`` behind a batched, cached wrapper.

Why not TextAttack's ``HuggingFaceModelWrapper``: it pads every query to 512 tokens (the main
cost on CPU), bypasses inference-time defences, and re-scores texts it has seen before. Here
every candidate set a search step asks for goes through in as few forwards as possible,
sorted by length and padded only to the longest text of each chunk; identical texts are
scored once per attack run (LRU cache); and an optional deadline turns a slow example into
a ``timeout`` outcome instead of a stuck evaluation.

Duck-typed to TextAttack's ``ModelWrapper`` (``__call__`` + ``model``) so this module does
not import TextAttack.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from robustsweep.evaluate.inference import inference_mode
from robustsweep.methods.base import RobustMethod

TextInput = str | tuple[str, str]


class ExampleTimeout(Exception):
    """The per-example time limit passed during an attack (raised from the next model query)."""


@dataclass
class WrapperStats:
    """Counters that the benchmark and tests read."""

    requested: int = 0  # texts TextAttack asked for (after its own per-example cache)
    cache_hits: int = 0  # requested texts that were not scored again
    scored: int = 0  # texts that went through the model
    forwards: int = 0  # model forward passes
    padded_tokens: int = 0  # batch rows × padded length summed over forwards
    tokens: int = 0  # real (unpadded) tokens of the scored texts
    model_seconds: float = 0.0  # wall time in tokenizing + predict_logits (the rest is search)


class MethodModelWrapper:
    """Score texts with ``method.predict_logits``: batched, length-sorted, cached, deadline-aware."""

    def __init__(self, method: RobustMethod, max_batch_size: int = 128, max_batch_tokens: int = 8192,
                 cache_size: int = 1 << 16, precision: str = "fp32") -> None:
        assert method.adapter is not None, "method.setup() was not called"
        self.method = method
        self.precision = precision
        self.model = method.adapter.core  # TextAttack checks the model class for compatibility
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.cache_size = cache_size
        self._cache: OrderedDict[TextInput, np.ndarray] = OrderedDict()
        self.deadline: float | None = None
        self.stats = WrapperStats()

    # ---- TextAttack entry point -------------------------------------------------------------
    def __call__(self, text_input_list: Sequence[TextInput]) -> np.ndarray:
        """Logits (N×C float32) for each input; TextAttack's goal function applies the softmax."""
        self.check_deadline()
        keys = [tuple(t) if isinstance(t, list) else t for t in text_input_list]
        self.stats.requested += len(keys)
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        self.stats.cache_hits += len(keys) - len(missing)  # repeats within a call count too
        found = {k: self._cache[k] for k in keys if k in self._cache}
        for key in found:  # refresh recency
            self._cache.move_to_end(key)
        if missing:
            started = time.perf_counter()
            scored = self._score(missing)
            self.stats.model_seconds += time.perf_counter() - started
            for key, row in zip(missing, scored):
                found[key] = row
                self._remember(key, row)
        return np.stack([found[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ExampleTimeout()

    def clear_cache(self) -> None:
        self._cache.clear()

    # ---- internals --------------------------------------------------------------------------
    def _remember(self, key: TextInput, row: np.ndarray) -> None:
        self._cache[key] = row
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _chunks(self, lengths: list[int]) -> list[list[int]]:
        """Positions grouped longest-first so each chunk pads little and fits the token budget."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        chunks: list[list[int]] = []
        current: list[int] = []
        for i in order:
            width = lengths[current[0]] if current else lengths[i]
            if current and (len(current) + 1 > self.max_batch_size
                            or (len(current) + 1) * width > self.max_batch_tokens):
                chunks.append(current)
                current = []
            current.append(i)
        if current:
            chunks.append(current)
        return chunks

    def _token_lengths(self, texts: list[str], pairs: list[str] | None) -> list[int]:
        adapter = self.method.adapter
        assert adapter is not None
        enc = adapter.tokenizer(texts, pairs, truncation=True, max_length=adapter.max_length,
                                padding=False)
        return [int(sum(mask)) for mask in enc["attention_mask"]]

    def _score(self, inputs: list[TextInput]) -> list[np.ndarray]:
        adapter = self.method.adapter
        assert adapter is not None
        texts = [t if isinstance(t, str) else t[0] for t in inputs]
        pairs = None if isinstance(inputs[0], str) else [t[1] for t in inputs]  # type: ignore[index]
        try:
            lengths = self._token_lengths(texts, pairs)
        except TypeError:  # a tokenizer without padding=False support: fall back to characters
            lengths = [len(t) for t in texts]
        self.stats.tokens += sum(lengths)
        rows: list[np.ndarray] = [np.empty(0, np.float32)] * len(inputs)
        with inference_mode(self.method), autocast(adapter.device, self.precision):
            for chunk in self._chunks(lengths):
                self.check_deadline()
                batch = adapter.encode([texts[i] for i in chunk],
                                       [pairs[i] for i in chunk] if pairs is not None else None)
                batch = adapter.to_device(batch)
                logits = self.method.predict_logits(batch).detach().float().cpu().numpy()
                self.stats.forwards += 1
                self.stats.padded_tokens += int(batch["input_ids"].numel())
                for i, row in zip(chunk, logits):
                    rows[i] = row
        self.stats.scored += len(inputs)
        return rows


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the victim's forwards when asked (logits come back as fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def torch_threads(n: int | None) -> None:
    """Pin intra-op threads (one model replica per worker must not oversubscribe cores)."""
    if n:
        torch.set_num_threads(max(1, int(n)))
