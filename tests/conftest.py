"""Shared fixtures: offline env, a tiny in-process BERT (no hub), tiny real-data tasks."""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

import pytest
import torch

from robustsweep.data import Task, TextSet
from robustsweep.models import EncoderAdapter
from robustsweep.resources import textattack_env

TINY_VOCAB = 128


class TinyTokenizer:
    """Whitespace tokenizer over a fixed tiny vocab: enough for EncoderAdapter.encode."""

    pad_token_id, cls_token_id, sep_token_id, mask_token_id, unk_token_id = 0, 1, 2, 3, 4
    mask_token = "[MASK]"

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def _id(self, word: str) -> int:
        return 5 + (sum(ord(c) * (i + 1) for i, c in enumerate(word)) % (TINY_VOCAB - 5))

    def __call__(self, texts, pairs=None, truncation=True, max_length=32, padding=True,
                 return_tensors="pt"):
        rows = []
        for i, text in enumerate(texts):
            ids = [self.cls_token_id] + [self._id(w) for w in text.split()] + [self.sep_token_id]
            if pairs is not None:
                ids += [self._id(w) for w in pairs[i].split()] + [self.sep_token_id]
            rows.append(ids[:max_length])
        width = max(len(r) for r in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": mask,
                "token_type_ids": torch.zeros_like(input_ids)}


def make_tiny_adapter(num_labels: int = 2, layers: int = 2, dropout: float = 0.0,
                      seed: int = 0) -> EncoderAdapter:
    """BertForSequenceClassification from a config (methods.md test fixture), dropout off."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=64, num_labels=num_labels,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                        max_position_embeddings=64)
    model = BertForSequenceClassification(config)
    return EncoderAdapter(tokenizer=TinyTokenizer(), model=model, max_length=32)


def make_batch(batch_size: int = 4, length: int = 10, seed: int = 0, num_labels: int = 2) -> dict:
    """Random token ids with some right padding and fixed labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY_VOCAB, (batch_size, length), generator=g)
    mask = torch.ones(batch_size, length, dtype=torch.long)
    for b in range(batch_size):
        pad = int(torch.randint(0, length // 2, (1,), generator=g))
        if pad:
            ids[b, -pad:] = 0
            mask[b, -pad:] = 0
    ids[:, 0] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, num_labels, (batch_size,), generator=g)}


def make_tiny_task(n_train: int = 32, n_eval: int = 16) -> Task:
    """A small synthetic-token task for loop tests (real-data tests use builtin:mr)."""
    words = ["good", "great", "fine", "bad", "awful", "poor", "film", "plot", "the", "a"]
    g = torch.Generator().manual_seed(0)

    def rows(n: int, offset: int) -> TextSet:
        texts, labels = [], []
        for i in range(n):
            label = i % 2
            pool = words[:3] if label else words[3:6]
            picks = torch.randint(0, 3, (5,), generator=g).tolist()
            texts.append(" ".join([pool[p] for p in picks] + ["the", "film"]))
            labels.append(label)
        return TextSet(texts=texts, labels=labels, ids=list(range(offset, offset + n)))

    return Task(train=rows(n_train, 0), eval=rows(n_eval, n_train), label_names=["neg", "pos"])


@pytest.fixture
def tiny_adapter() -> EncoderAdapter:
    return make_tiny_adapter()


@pytest.fixture
def tiny_batch() -> dict:
    return make_batch()


@pytest.fixture
def tiny_task() -> Task:
    return make_tiny_task()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs, 127.0.0.1) shared by the tests that run real trials."""
    import ray

    from robustsweep.config import ClusterConfig
    from robustsweep.train.ray_trainer import ensure_ray

    ensure_ray(ClusterConfig(num_cpus=2))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def textattack_ready() -> Iterator[None]:
    """Provisioned + imported TextAttack; one torch thread (tiny models: threads only contend)."""
    textattack_env.provision(verify_deep=False)
    textattack_env.import_textattack()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
