"""MLM head: tying, pretrained-head copy, local training and the cache (tiny models only; the
real builtin head is trained only by the ``slow`` test, for two steps)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
)

from conftest import make_batch, make_tiny_adapter
from robustsweep.errors import ResourceError
from robustsweep.methods.mvp import MVP, MVPKnobs, mlm_head
from robustsweep.methods.mvp.mlm_head import (
    HEAD_FILE,
    REPORT_FILE,
    HeadRecipe,
    MaskedLMHead,
    evaluate_mlm_head,
    load_masked_lm,
    load_mlm_head,
    mask_tokens,
    prepare_mlm_head,
    train_mlm_head,
)

WORDS = ["the", "a", "cat", "dog", "bird", "sat", "ran", "flew", "on", "in", "over", "mat", "park",
         "tree", "big", "small", "red", "blue", "and", "quickly", "slowly"]
TINY_RECIPE = HeadRecipe(steps=60, batch_size=16, max_length=16, lr=1e-2, eval_texts_per_source=20)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: intra-op threads only add spin-wait contention
    yield
    torch.set_num_threads(threads)


def tiny_config(**kwargs) -> BertConfig:
    return BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, **kwargs)


def tiny_tokenizer(directory: Path) -> BertTokenizerFast:
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab))


def tiny_corpus() -> dict[str, list[str]]:
    """Structured sentences: the context determines much of each masked word."""
    g = torch.Generator().manual_seed(0)

    def pick(options: list) -> object:
        return options[int(torch.randint(len(options), (1,), generator=g))]

    rows = []
    for _ in range(400):
        animal, verb = pick([("cat", "sat"), ("dog", "ran"), ("bird", "flew")])
        place = {"sat": "mat", "ran": "park", "flew": "tree"}[verb]
        rows.append(f"the {pick(['big', 'small'])} {animal} {verb} {pick(['quickly', 'slowly'])} "
                    f"{pick(['on', 'in', 'over'])} the {pick(['red', 'blue'])} {place}")
    return {"a": rows[:200], "b": rows[200:]}


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny BERT encoder without an MLM head, plus its tokenizer."""
    directory = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    BertModel(tiny_config()).save_pretrained(directory)
    tiny_tokenizer(directory).save_pretrained(directory)
    return directory


def test_decoder_is_tied_to_the_embedding_tensor() -> None:
    core = make_tiny_adapter().core
    head = MaskedLMHead.for_model(core)
    embedding = core.get_input_embeddings()
    assert head.decoder_weight is embedding.weight
    assert not any("decoder" in key or "embedding" in key for key in head.state_dict())
    hidden = torch.randn(5, 32)
    manual = head.LayerNorm(F.gelu(head.dense(hidden))) @ embedding.weight.T + head.bias
    torch.testing.assert_close(head(hidden), manual)
    ids = torch.tensor([7, 3, 99])
    torch.testing.assert_close(head(hidden, ids), manual[:, ids])
    with torch.no_grad():
        embedding.weight[7] += 1.0  # fine-tuning the embeddings moves the decoder too
    assert not torch.allclose(head(hidden)[:, 7], manual[:, 7])


def test_mask_tokens_follows_the_bert_rule() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (64, 32))
    ids[:, 0], ids[:, -1] = 1, 2
    attention = torch.ones_like(ids)
    attention[:, 24:] = 0
    special = torch.tensor([0, 1, 2, 3])
    inputs, labels = mask_tokens(ids, attention, special, 3, 100, 0.15, g)
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, 24:].any()
    assert 0.12 < chosen[:, 1:23].float().mean() < 0.18
    assert torch.equal(labels[chosen], ids[chosen])
    share_masked = (inputs[chosen] == 3).float().mean()
    assert 0.7 < share_masked < 0.9
    assert torch.equal(inputs[~chosen], ids[~chosen])
    inputs, labels = mask_tokens(ids, attention, special, 3, 100, 0.15, g, corrupt=False)
    assert torch.all(inputs[labels != -100] == 3)


def test_training_on_a_tiny_setup_reduces_the_mlm_loss(tiny_encoder_dir: Path) -> None:
    encoder = BertModel.from_pretrained(tiny_encoder_dir)
    tokenizer = BertTokenizerFast.from_pretrained(tiny_encoder_dir)
    corpus = tiny_corpus()
    untrained, _ = train_mlm_head(encoder, tokenizer, corpus, HeadRecipe(steps=0, max_length=16))
    trained, history = train_mlm_head(encoder, tokenizer, corpus, TINY_RECIPE)
    assert not any(p.requires_grad for p in encoder.parameters())  # the encoder stays frozen
    assert trained.decoder_weight is encoder.get_input_embeddings().weight
    held_out = corpus["a"][:150]
    before = evaluate_mlm_head(encoder, untrained, tokenizer, held_out, 16)  # unigram prior only
    after = evaluate_mlm_head(encoder, trained, tokenizer, held_out, 16)
    assert after["loss"] < before["loss"] - 0.3
    assert after["top5_accuracy"] > before["top5_accuracy"] + 0.2
    assert sum(history[-10:]) < sum(history[:10])


def test_cache_trains_once_and_returns_the_same_weights(tiny_encoder_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTSWEEP_CACHE", str(tmp_path / "cache"))
    directory = prepare_mlm_head(str(tiny_encoder_dir), recipe=TINY_RECIPE, corpus=tiny_corpus())
    assert directory is not None and directory.parent == tmp_path / "cache" / "mlm_head"
    report = json.loads((directory / REPORT_FILE).read_text())
    assert report["recipe"]["steps"] == TINY_RECIPE.steps
    assert set(report["held_out"]) == {"a", "b"} and 0 <= report["held_out"]["a"]["accuracy"] <= 1
    assert report["fill_mask_top10"] and "locally trained" in report["label"]

    def no_training(*_args, **_kwargs):
        raise AssertionError("the cached head must not be retrained")

    monkeypatch.setattr(mlm_head, "train_mlm_head", no_training)
    classifier = BertForSequenceClassification.from_pretrained(tiny_encoder_dir, num_labels=2)
    first = load_mlm_head(classifier, recipe=TINY_RECIPE)
    second = load_mlm_head(BertForSequenceClassification.from_pretrained(tiny_encoder_dir, num_labels=2),
                           recipe=TINY_RECIPE)
    from safetensors.torch import load_file

    saved = load_file(str(directory / HEAD_FILE))
    for key, value in first.state_dict().items():
        torch.testing.assert_close(value, saved[key])
        torch.testing.assert_close(second.state_dict()[key], value)
    assert first.decoder_weight is classifier.get_input_embeddings().weight
    assert "locally trained" in first.provenance
    with pytest.raises(AssertionError, match="must not be retrained"):  # a new recipe retrains
        load_mlm_head(classifier, recipe=HeadRecipe(steps=1, max_length=16), corpus=tiny_corpus())


def test_pretrained_head_is_copied_and_tied(tmp_path: Path) -> None:
    torch.manual_seed(1)
    mlm = BertForMaskedLM(tiny_config()).eval()
    torch.nn.init.normal_(mlm.cls.predictions.bias)
    mlm.save_pretrained(tmp_path)
    tiny_tokenizer(tmp_path).save_pretrained(tmp_path)
    assert prepare_mlm_head(str(tmp_path)) is None  # nothing to train
    classifier = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=2).eval()
    head = load_mlm_head(classifier)
    assert head.decoder_weight is classifier.get_input_embeddings().weight
    assert "pretrained" in head.provenance
    ids = torch.randint(5, 5 + len(WORDS), (3, 9))
    with torch.no_grad():
        got = head(classifier.bert(input_ids=ids).last_hidden_state)
        torch.testing.assert_close(got, mlm(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    masked_lm = load_masked_lm(str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(masked_lm(ids, torch.ones_like(ids)), mlm(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)


def test_mvp_uses_the_checkpoint_head(tmp_path: Path) -> None:
    torch.manual_seed(2)
    mlm = BertForMaskedLM(make_tiny_adapter().core.config)  # the TinyTokenizer's 128-token vocab
    torch.nn.init.normal_(mlm.cls.predictions.transform.dense.weight)
    mlm.save_pretrained(tmp_path)
    adapter = make_tiny_adapter()
    adapter.model = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    method = MVP(MVPKnobs(label_words=(("bad",), ("good",))))
    method.setup(adapter)
    torch.testing.assert_close(method.head.dense.weight, mlm.cls.predictions.transform.dense.weight)
    adapter.core.eval()
    with torch.no_grad():
        assert method.predict_logits(make_batch()).shape == (4, 2)


def test_in_process_model_needs_explicit_random_head() -> None:
    core = make_tiny_adapter().core
    with pytest.raises(ResourceError):
        load_mlm_head(core)
    assert isinstance(load_mlm_head(core, allow_random=True), MaskedLMHead)


@pytest.mark.slow
def test_real_builtin_head_trains_a_few_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTSWEEP_CACHE", str(tmp_path))
    recipe = HeadRecipe(steps=2, batch_size=4, eval_texts_per_source=8)
    directory = prepare_mlm_head("builtin:minilm", recipe=recipe)
    report = json.loads((directory / REPORT_FILE).read_text())
    assert set(report["held_out"]) == {"imdb", "mr"}
    assert 0 <= report["zero_shot_mvp_accuracy_mr_heldout"] <= 1
    masked_lm = load_masked_lm("builtin:minilm", recipe=recipe)
    filled = masked_lm.fill_mask(["the movie was {mask}."], top_k=5)
    assert len(next(iter(filled.values()))) == 5
