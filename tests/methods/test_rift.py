"""RIFT mechanism tests (methods.md §6.8)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from _grad_checks import assert_reduces_to_vanilla, build, grads, max_grad_diff, no_param_grads

from conftest import TINY_VOCAB, make_batch
from robustsweep.errors import ResourceError
from robustsweep.methods._common import embedding_output, eo_forward, kl_per_example
from robustsweep.methods.rift import method as rift
from robustsweep.methods.rift import synonyms

FAST = {"ascc_steps": 3, "n_synonyms": 4}


def set_up(knobs: dict | None = None, **kwargs) -> tuple[rift.RIFT, object]:
    return build("rift", {**FAST, **(knobs or {})}, **kwargs)


def test_no_kl_no_mi_equals_vanilla() -> None:
    method, adapter = set_up({"w_kl": 0.0, "w_mi": 0.0})
    assert_reduces_to_vanilla(method, adapter, make_batch())


def test_teacher_is_frozen_bit_identical_and_outside_the_optimizer() -> None:
    method, adapter = set_up({"w_mi": 1.0}, dropout=0.1)
    teacher_ids = {id(p) for p in method.teacher.parameters()}
    params = [*adapter.core.parameters(), *method.extra_parameters()]
    assert not teacher_ids & {id(p) for p in params}
    assert all(not p.requires_grad for p in method.teacher.parameters())
    before = rift.fingerprint(method.teacher)
    student_before = rift.fingerprint(adapter.core)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for seed in range(3):
        method.training_step(make_batch(seed=seed))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert rift.fingerprint(method.teacher) == before == method.teacher_sha256
    assert rift.fingerprint(adapter.core) != student_before
    assert all(p.grad is None for p in method.teacher.parameters())


def test_mi_term_changes_the_gradient_and_trains_both_projections() -> None:
    batch = make_batch(batch_size=8)
    results = []
    for w_mi in (0.0, 1.0):
        method, adapter = set_up({"w_mi": w_mi})
        torch.manual_seed(11)  # same ASCC init in both runs
        terms = method.training_step(batch)
        results.append(grads(adapter))
        heads = [method.student_heads, method.teacher_heads]
        has_grad = [any(p.grad is not None and p.grad.any() for p in h.parameters()) for h in heads]
        assert has_grad == [w_mi > 0] * 2
    assert "infonce" in terms
    assert max_grad_diff(*results) > 1e-6


def test_ascc_weights_are_a_valid_hull_and_increase_the_kl() -> None:
    method, adapter = set_up({"ascc_steps": 10, "n_synonyms": 4})
    batch = make_batch(batch_size=4)
    cands = method.candidates(batch)
    adapter.model.eval()
    cand_eo = method.candidate_embeddings(batch, cands)
    torch.manual_seed(0)
    w_hat = torch.nn.init.kaiming_normal_(torch.empty(*cands.valid.shape, 1))
    weights, kl_init = method.ascc(batch, cand_eo, cands.valid, w_hat)
    assert no_param_grads(adapter)
    assert not adapter.model.training  # the mode it was called in is restored
    assert torch.allclose(weights.sum(dim=2), torch.ones(weights.shape[:2] + (1,)), atol=1e-6)
    assert weights[~cands.valid].max() < 1e-6
    with torch.no_grad():
        clean = adapter.logits(batch)
        start = rift.hull_weights(w_hat, cands.valid)
        kl_start = kl_per_example(clean, eo_forward(adapter, batch, rift.hull_embedding(
            start, cand_eo)).logits).sum().item()
        kl_end = kl_per_example(clean, eo_forward(adapter, batch, rift.hull_embedding(
            weights, cand_eo)).logits).sum().item()
    assert kl_init == pytest.approx(kl_start, rel=1e-4)
    assert kl_end > kl_start


def test_original_only_candidates_give_clean_embeddings_and_zero_kl() -> None:
    method, adapter = set_up({"w_mi": 0.0})
    method.synonyms = torch.full_like(method.synonyms, -1)
    batch = make_batch()
    cands = method.candidates(batch)
    assert cands.valid[..., 1:].sum() == 0
    weights, _ = method.ascc(batch, method.candidate_embeddings(batch, cands), cands.valid)
    hull = rift.hull_embedding(weights, method.candidate_embeddings(batch, cands))
    assert torch.allclose(hull, embedding_output(adapter, batch), atol=1e-6)
    assert method.training_step(batch)["kl"] < 1e-10


def test_candidates_only_on_real_positions() -> None:
    method, _ = set_up()
    batch = make_batch()
    cands = method.candidates(batch)
    pad = ~batch["attention_mask"].bool()
    assert cands.valid[pad][:, 1:].sum() == 0
    assert torch.equal(cands.ids[..., 0], batch["input_ids"])
    assert cands.valid[..., 1:][~pad].any()


def test_info_nce_limits() -> None:
    n = 16
    features = torch.nn.functional.normalize(torch.randn(n, 64), dim=-1)
    assert rift.info_nce(features, features.clone(), temperature=0.01).item() < 1e-3
    g = torch.Generator().manual_seed(0)
    values = [rift.info_nce(torch.randn(n, 256, generator=g), torch.randn(n, 256, generator=g),
                            1.0).item() for _ in range(20)]
    assert sum(values) / len(values) == pytest.approx(math.log(n), abs=0.1)


def test_class_infonce_skips_classes_with_fewer_than_two_examples() -> None:
    method, _ = set_up()
    student, teacher = torch.randn(4, 32), torch.randn(4, 32)
    alone = method.class_infonce(student, teacher, torch.tensor([0, 0, 0, 1]))
    heads = method.student_heads[0], method.teacher_heads[0]
    only0 = rift.info_nce(heads[0](student[:3]), heads[1](teacher[:3]), method.knobs.temperature)
    assert alone.item() == pytest.approx(only0.item(), rel=1e-6)
    assert method.class_infonce(student, teacher, torch.tensor([0, 1, 2, 3])).item() == 0.0


def test_embedding_neighbours_are_nearest_whole_words() -> None:
    weight = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.95, 0.05]])
    is_word = torch.tensor([True, True, True, True, False])
    table = synonyms.embedding_neighbours(weight, is_word, k=2)
    assert table[0].tolist() == [1, 3]  # id 4 is closest but not a word; never itself
    assert table[2].tolist() == [3, 1]
    assert table[4].tolist() == [-1, -1]


class FakeTokenizer:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.all_special_ids = [0]

    def __len__(self) -> int:
        return len(self.tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.tokens[i] for i in ids]


def test_word_tokens_wordpiece_and_bpe() -> None:
    wordpiece = FakeTokenizer(["[PAD]", "good", "##ing", "a", ",", "film", "[unused1]", "42"])
    assert synonyms.word_token_mask(wordpiece, 9).tolist() == [
        False, True, False, False, False, True, False, False, False]
    bpe = FakeTokenizer(["<pad>", "Ġgood", "ing", "Ġa", "Ġ,", "Ġfilm", "film"])
    assert synonyms.word_token_mask(bpe, 7).tolist() == [False, True, False, False, False, True, False]


def test_wordnet_table_keeps_single_token_lemmas(monkeypatch) -> None:
    import sys
    import types

    class Synset:
        def __init__(self, names: list[str]) -> None:
            self.names = names

        def lemma_names(self) -> list[str]:
            return self.names

    lemmas = {"good": [["good", "Fine", "full_of_life"]], "film": [["film", "movie", "picture"]]}
    wordnet = types.SimpleNamespace(ensure_loaded=lambda: None,
                                    synsets=lambda word: [Synset(n) for n in lemmas.get(word, [])])
    corpus = types.ModuleType("nltk.corpus")
    corpus.wordnet = wordnet
    monkeypatch.setitem(sys.modules, "nltk", types.ModuleType("nltk"))
    monkeypatch.setitem(sys.modules, "nltk.corpus", corpus)
    tokenizer = FakeTokenizer(["[PAD]", "good", "fine", "film", "movie", "##s"])
    table = synonyms.wordnet_neighbours(tokenizer, synonyms.word_token_mask(tokenizer, 6), k=2)
    assert table.tolist() == [[-1, -1], [2, -1], [-1, -1], [4, -1], [-1, -1], [-1, -1]]


def test_default_table_is_built_once_in_setup_and_excludes_specials() -> None:
    method, _ = set_up()
    table = method.synonyms
    assert table.shape == (TINY_VOCAB, 4)
    assert (table[:5] == -1).all()  # pad/cls/sep/mask/unk of the tiny tokenizer
    assert ((table >= 5) | (table == -1)).all()
    assert not (table == torch.arange(TINY_VOCAB)[:, None]).any()


def test_wordnet_source_without_data_is_a_one_line_error(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_nltk(name: str, *args, **kwargs):
        if name.startswith("nltk"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nltk)
    with pytest.raises(ResourceError, match="wordnet") as err:
        set_up({"synonym_source": "wordnet"})
    assert "\n" not in str(err.value)


def test_state_dict_round_trip_restores_teacher_heads_and_table() -> None:
    method, _ = set_up()
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    other, _ = set_up(seed=1)  # a different "pretrained" model and heads
    assert rift.fingerprint(other.teacher) != method.teacher_sha256
    other.load_state_dict(state)
    assert rift.fingerprint(other.teacher) == method.teacher_sha256
    for a, b in zip(other.extra_parameters(), method.extra_parameters()):
        assert torch.equal(a, b)
    assert torch.equal(other.synonyms, method.synonyms)
    state["teacher_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="sha256"):
        other.load_state_dict(state)


def test_passes_per_step_counts_the_ascc_steps() -> None:
    method, _ = set_up({"ascc_steps": 10})
    assert method.passes_per_step() == pytest.approx(10 + 3 / 3 + 4 / 3)


def test_polarity_flips_are_dropped_and_rows_stay_nearest_first() -> None:
    tokenizer = FakeTokenizer(["[PAD]", "good", "bad", "great", "film", "boring", "exciting"])
    polarity = synonyms.token_polarity(tokenizer, 7)
    assert polarity.tolist() == [0, 1, -1, 1, 0, -1, 1]  # "boring" via its lemma "bore"
    table = torch.tensor([[-1, -1, -1], [2, 3, 4], [1, 3, -1], [1, 2, 4], [1, 2, 3],
                          [6, 4, 1], [5, 3, 4]])
    out = synonyms.compact_table(table, ~synonyms.polarity_flips(table, polarity), k=2)
    assert out[1].tolist() == [3, 4]  # good: "bad" dropped, "great" and "film" kept in order
    assert out[2].tolist() == [-1, -1]  # bad: both neighbours positive
    assert out[4].tolist() == [1, 2]  # a neutral word keeps everything
    assert out[5].tolist() == [4, -1]  # boring: "exciting" and "good" dropped
    assert out[0].tolist() == [-1, -1]


def test_neighbours_below_the_similarity_floor_are_dropped() -> None:
    weight = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    table = synonyms.embedding_neighbours(weight, torch.ones(4, dtype=torch.bool), k=2,
                                      min_similarity=0.5)
    assert table[0].tolist() == [1, -1]  # id 3 has cosine 0.11 with id 0
    assert table[2].tolist() == [3, -1]


def test_stopwords_get_no_substitutes_and_are_none() -> None:
    tokenizer = FakeTokenizer(["[PAD]", "the", "film", "movie", "an"])
    stop = synonyms.stopword_ids(tokenizer, 5)
    assert stop.tolist() == [False, True, False, False, True]
    table = torch.tensor([[-1, -1], [4, 2], [3, 1], [2, 4], [1, 2]])
    keep = ~stop[table.clamp(min=0)]
    keep[stop] = False
    assert synonyms.compact_table(table, keep, k=2).tolist() == [
        [-1, -1], [-1, -1], [3, -1], [2, -1], [-1, -1]]


def test_word_polarity_finds_inflections_through_their_lemma() -> None:
    from robustsweep.lexicon import reverses_polarity, word_polarity

    lexicon = {"bore": -1, "fail": -1, "excite": 1, "stop": -1, "success": 1}
    assert [word_polarity(w, lexicon) for w in ("boring", "fails", "Exciting", "stopped")] == [
        -1, -1, 1, -1]
    assert word_polarity("film", lexicon) == 0
    assert word_polarity("boring", lexicon, inflected=False) == 0
    assert reverses_polarity("good", "bad") and not reverses_polarity("good", "great")


def test_builtin_encoder_synonyms_lose_antonyms_and_function_words() -> None:
    """The MiniLM's raw neighbours of "good" include "bad", and "the" has nine; not by default."""
    from robustsweep.config import ModelConfig
    from robustsweep.models import load_model

    adapter = load_model(ModelConfig(source="builtin:minilm"), num_labels=2)
    ids = adapter.tokenizer.convert_tokens_to_ids(["good", "bad", "great", "excellent", "the"])
    good, bad, great, excellent, the = ids
    raw_knobs = {"polarity_filter": False, "skip_stopwords": False, "min_similarity": -1.0}
    raw = rift.RIFT(rift.RIFTKnobs(**raw_knobs)).synonym_table(adapter)
    assert bad in raw[good].tolist() and (raw[the] >= 0).all()
    table = rift.RIFT(rift.RIFTKnobs()).synonym_table(adapter)
    assert table.shape == raw.shape
    assert table[good].tolist()[:2] == [excellent, great] and bad not in table[good].tolist()
    assert (table[the] < 0).all()


# ---- the loss against a hand computation -------------------------------------------------------
def hand_candidate_eo(adapter, batch: dict, cands: rift.Candidates) -> torch.Tensor:
    """E(s_ik) at position i, with gradient (dropout off in these tests)."""
    return torch.stack([embedding_output(adapter, batch, cands.ids[..., k])
                        for k in range(cands.ids.shape[-1])], dim=2)


@pytest.mark.parametrize(("w_kl", "w_mi"), [(3.0, 0.0), (0.0, 1.0), (3.0, 1.0)])
def test_gradient_equals_the_hand_written_rift_loss(monkeypatch, w_kl: float, w_mi: float) -> None:
    """∇ of w_clean·CE(f(x)) + w_kl·KL(p(x) ‖ p(ê)) + w_mi·(1/C)Σ_c InfoNCE_c(g_c(h(ê)), g'_c(t(x))),
    with ê the ASCC hull the step found: fails if the KL term is dropped or if the student
    features are not those of the adversarial input."""
    method, adapter = set_up({"w_kl": w_kl, "w_mi": w_mi, "w_clean": 0.5})
    batch = make_batch(batch_size=8, seed=3)
    batch["labels"] = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0])
    found: list[torch.Tensor] = []
    real_ascc = method.ascc

    def spy(*args, **kwargs):
        weights, kl_init = real_ascc(*args, **kwargs)
        found.append(weights)
        return weights, kl_init

    monkeypatch.setattr(method, "ascc", spy)
    torch.manual_seed(5)
    method.training_step(batch)
    got_model, got_heads = grads(adapter), [p.grad.clone() if p.grad is not None else
                                            torch.zeros_like(p) for p in method.extra_parameters()]
    for p in method.extra_parameters():
        p.grad = None

    cands = method.candidates(batch)
    hull = rift.hull_embedding(found[0], hand_candidate_eo(adapter, batch, cands))
    logits = adapter.logits(batch)
    adv = eo_forward(adapter, batch, hull, output_hidden_states=True)
    ce = torch.nn.functional.cross_entropy(logits, batch["labels"])
    kl = kl_per_example(logits, adv.logits).mean()
    student = adv.hidden_states[-1][:, 0]
    with torch.no_grad():
        teacher = method.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 token_type_ids=batch["token_type_ids"]).last_hidden_state[:, 0]
    mi = torch.stack([rift.info_nce(method.student_heads[c](student[batch["labels"] == c]),
                                    method.teacher_heads[c](teacher[batch["labels"] == c]), 0.2)
                      for c in (0, 1)]).mean()
    (0.5 * ce + w_kl * kl + w_mi * mi).backward()
    want_model = grads(adapter)
    want_heads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in method.extra_parameters()]
    assert max_grad_diff(got_model, want_model) < 1e-6
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got_heads, want_heads))

    adapter.core.zero_grad(set_to_none=True)
    (0.5 * torch.nn.functional.cross_entropy(adapter.logits(batch), batch["labels"])).backward()
    assert max_grad_diff(want_model, grads(adapter)) > 1e-4  # the extra terms are not negligible


def test_adversarial_branch_is_embedded_with_dropout(monkeypatch) -> None:
    """The trained adversarial forward re-embeds the candidates in train mode (official
    ``comb_w_to_logit``), so its embedding output carries dropout; the attack's does not."""
    method, adapter = set_up({"w_mi": 0.0}, dropout=0.3)
    method.synonyms = torch.full_like(method.synonyms, -1)  # ê = E(x): only dropout can differ
    batch = make_batch(batch_size=6, seed=2)
    fed: list[torch.Tensor] = []
    real_eo_forward = rift.eo_forward

    def spy(adapter_, batch_, eo, **kwargs):
        fed.append(eo.detach().clone())
        return real_eo_forward(adapter_, batch_, eo, **kwargs)

    monkeypatch.setattr(rift, "eo_forward", spy)
    method.training_step(batch)
    attack, trained = fed[0], fed[-1]
    adapter.model.eval()
    with torch.no_grad():
        clean_eo = embedding_output(adapter, batch)
    torch.testing.assert_close(attack, clean_eo)  # ASCC: no dropout
    zeros = (trained == 0).float().mean().item()
    assert zeros == pytest.approx(0.3, abs=0.05)  # the trained branch: dropout p = 0.3
    kept = trained != 0
    torch.testing.assert_close(trained[kept], clean_eo[kept] / 0.7)
