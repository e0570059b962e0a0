"""MVP mechanism tests (methods.md §7.8) on the tiny in-process BERT, checked against an
independently built BertForMaskedLM carrying the same encoder and head weights."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM

from conftest import TinyTokenizer, make_batch, make_tiny_adapter
from robustsweep.errors import MethodError
from robustsweep.methods import build
from robustsweep.methods.mvp import HEAD_ATTR, MVP, MVPKnobs
from robustsweep.sweep.spaces import load_space

TOK = TinyTokenizer()
CLS, SEP, MASK = TOK.cls_token_id, TOK.sep_token_id, TOK.mask_token_id
# Class 0 has two label words (the max/mean over words is exercised), class 1 has one.
WORDS = (("bad", "awful"), ("good",))
TEMPLATES = ("it was [MASK] .", "[SEP] so [MASK]", "[MASK] film", "[SEP] the film is [MASK]")


def make_mvp(adapter=None, **knobs) -> MVP:
    knobs.setdefault("label_words", WORDS)
    knobs.setdefault("templates", TEMPLATES)
    method = MVP(MVPKnobs(**knobs))
    method.setup(adapter if adapter is not None else make_tiny_adapter())
    torch.nn.init.normal_(method.head.bias, std=0.5)  # a non-trivial bias, as a trained head has
    return method


def reference_mlm(method: MVP) -> BertForMaskedLM:
    """A stock HF masked LM with the classifier's encoder and MVP's head weights."""
    core = method.adapter.core
    mlm = BertForMaskedLM(core.config).eval()
    mlm.bert.load_state_dict(core.bert.state_dict(), strict=False)  # no pooler in the MLM
    head, pred = method.head, mlm.cls.predictions
    pred.transform.dense.load_state_dict(head.dense.state_dict())
    pred.transform.LayerNorm.load_state_dict(head.LayerNorm.state_dict())
    with torch.no_grad():
        pred.bias.copy_(head.bias)
    return mlm


def hand_tokens(template: str) -> tuple[list[int], bool]:
    """Template word ids and whether it is appended; a leading "[SEP]" is the append marker
    only and is dropped, as acmi-lab/mvp's ``insert_tokenized_prompts`` does."""
    words = template.split()
    append = words[0] == "[SEP]"
    words = words[1:] if append else words
    return [SEP if w == "[SEP]" else MASK if w == "[MASK]" else TOK._id(w) for w in words], append


def hand_templated(ids: list[int], template: str) -> tuple[list[int], int]:
    """[CLS] T text [SEP] or [CLS] text T [SEP], built from the template words by hand."""
    tpl, append = hand_tokens(template)
    body = ids[1:-1]
    row = [ids[0], *body, *tpl, ids[-1]] if append else [ids[0], *tpl, *body, ids[-1]]
    return row, row.index(MASK)


def expected_logits(method: MVP, batch: dict, n_templates: int, pool_words: str, pool_templates: str) -> torch.Tensor:
    mlm = reference_mlm(method)
    word_ids = [[TOK._id(w) for w in ws] for ws in WORDS]
    out = []
    for b in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][b].sum())
        ids = batch["input_ids"][b, :n].tolist()
        per_template = []
        for template in TEMPLATES[:n_templates]:
            row, pos = hand_templated(ids, template)
            with torch.no_grad():
                vocab_logits = mlm(input_ids=torch.tensor([row])).logits[0, pos]
            per_class = [vocab_logits[w].max() if pool_words == "max" else vocab_logits[w].mean()
                         for w in word_ids]
            per_template.append(torch.stack(per_class))
        stacked = torch.stack(per_template)
        out.append(stacked.mean(0) if pool_templates == "mean" else stacked.max(0).values)
    return torch.stack(out)


def predict(method: MVP, batch: dict) -> torch.Tensor:
    method.adapter.core.eval()
    with torch.no_grad():
        return method.predict_logits(batch)


@pytest.mark.parametrize("pool_words", ["max", "mean"])
@pytest.mark.parametrize("pool_templates", ["mean", "max"])
def test_logits_are_pooled_label_word_scores_at_the_mask(pool_words: str, pool_templates: str) -> None:
    method = make_mvp(pool_label_words=pool_words, pool_templates=pool_templates)
    batch = make_batch(batch_size=3, length=9, seed=1)
    got = predict(method, batch)
    want = expected_logits(method, batch, 4, pool_words, pool_templates)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_pooling_and_template_count_change_the_logits() -> None:
    adapter = make_tiny_adapter()
    batch = make_batch(batch_size=3, length=9, seed=2)
    base = make_mvp(adapter)
    one = MVP(MVPKnobs(label_words=WORDS, templates=TEMPLATES, n_templates=1))
    one.setup(adapter)  # same model and head (already attached)
    mean_words = MVP(MVPKnobs(label_words=WORDS, templates=TEMPLATES, pool_label_words="mean"))
    mean_words.setup(adapter)
    all_four, first_only, averaged_words = predict(base, batch), predict(one, batch), predict(mean_words, batch)
    torch.testing.assert_close(first_only, expected_logits(base, batch, 1, "max", "mean"), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first_only, all_four)
    # Class 1 has a single word: pooling over words leaves it alone; class 0's max >= mean.
    torch.testing.assert_close(averaged_words[:, 1], all_four[:, 1])
    assert torch.all(all_four[:, 0] >= averaged_words[:, 0] - 1e-6)
    assert not torch.allclose(all_four[:, 0], averaged_words[:, 0])


def test_template_insertion_keeps_template_and_clips_text() -> None:
    adapter = make_tiny_adapter()
    method = make_mvp(adapter)
    batch = make_batch(batch_size=2, length=10, seed=3)
    batch["attention_mask"][:] = 1  # both rows full length (10 tokens)
    batch["input_ids"][:, -1] = SEP
    adapter.max_length = 13  # 2-token template: fits; 4-6 token templates: the text is clipped
    templated, per_example = method.templated(batch)
    assert per_example == 4
    for r in range(templated["input_ids"].shape[0]):
        b, t = divmod(r, 4)
        n = int(templated["attention_mask"][r].sum())
        row = templated["input_ids"][r, :n].tolist()
        tpl, _ = hand_tokens(TEMPLATES[t])
        assert row.count(MASK) == 1 and row[int(templated["mask_pos"][r])] == MASK
        assert n == min(13, 10 + len(tpl)) and row[0] == CLS and row[-1] == SEP
        text = batch["input_ids"][b, 1:9].tolist()
        kept = n - 2 - len(tpl)
        if TEMPLATES[t].startswith("[SEP]"):
            assert row[1:-1] == text[:kept] + tpl
        else:
            assert row[1:-1] == tpl + text[:kept]


def test_each_template_gives_the_official_token_sequence() -> None:
    """The exact rows of acmi-lab/mvp: a leading [SEP] only means "append", so an appended
    template ends in [MASK] [SEP], with no separator between the text and the template."""
    method = make_mvp()
    batch = make_batch(batch_size=1, length=6, seed=11)
    batch["attention_mask"][:] = 1
    batch["input_ids"][0, -1] = SEP
    text = batch["input_ids"][0, 1:-1].tolist()
    templated, _ = method.templated(batch)
    rows = [r[:int(m.sum())] for r, m in zip(templated["input_ids"].tolist(), templated["attention_mask"])]
    ids = TOK._id
    assert rows == [
        [CLS, ids("it"), ids("was"), MASK, ids("."), *text, SEP],
        [CLS, *text, ids("so"), MASK, SEP],
        [CLS, MASK, ids("film"), *text, SEP],
        [CLS, *text, ids("the"), ids("film"), ids("is"), MASK, SEP],
    ]
    assert templated["mask_pos"].tolist() == [r.index(MASK) for r in rows]
    assert [t.append for t in method.templates] == [False, True, False, True]


def test_adv_eps_zero_equals_plain_mvp_and_ascent_raises_the_loss() -> None:
    method = make_mvp()
    batch = make_batch(batch_size=4, length=9, seed=4)
    templated, per_example = method.templated(batch)
    labels = batch["labels"]
    method.adapter.core.eval()
    zero = method.adversarial_delta(templated, per_example, labels, eps=0.0)
    assert torch.count_nonzero(zero) == 0
    clean = F.cross_entropy(method.logits_of(templated, per_example), labels)
    at_zero = F.cross_entropy(method.logits_of(templated, per_example, zero), labels)
    torch.testing.assert_close(at_zero, clean)
    delta = method.adversarial_delta(templated, per_example, labels, eps=2.0)
    assert torch.all(delta.flatten(1).norm(dim=1) <= 2.0 + 1e-4)
    adv = F.cross_entropy(method.logits_of(templated, per_example, delta), labels)
    assert adv > clean


def grads_after_step(method: MVP, batch: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    core = method.adapter.core
    core.train()
    core.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    method.training_step(batch)
    return {n: p.grad.clone() for n, p in core.named_parameters() if p.grad is not None}


def test_training_step_adv_zero_is_plain_and_adv_trains_only_the_adversarial_loss() -> None:
    batch = make_batch(batch_size=4, length=9, seed=5)
    plain = make_mvp(make_tiny_adapter(seed=1))
    zero_eps = make_mvp(make_tiny_adapter(seed=1), adv_eps=0.0, adv_steps=3)
    torch.testing.assert_close(grads_after_step(plain, batch), grads_after_step(zero_eps, batch))

    adv = make_mvp(make_tiny_adapter(seed=1), adv_eps=1.0)
    got = grads_after_step(adv, batch, seed=7)
    # Replay: the same δ (same RNG), then only CE(z(W + δ)) -> identical grads, so the ascent
    # leaked nothing into .grad and no clean term is mixed in.
    core = adv.adapter.core
    core.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    templated, per_example = adv.templated(batch)
    delta = adv.adversarial_delta(templated, per_example, batch["labels"], 1.0)
    core.train()
    F.cross_entropy(adv.logits_of(templated, per_example, delta), batch["labels"]).backward()
    want = {n: p.grad for n, p in core.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad)
    assert not torch.allclose(got[f"{HEAD_ATTR}.dense.weight"], grads_after_step(plain, batch)[f"{HEAD_ATTR}.dense.weight"])


def test_no_new_parameters_head_tied_and_trained() -> None:
    adapter = make_tiny_adapter()
    method = make_mvp(adapter)
    core = adapter.core
    trainable = sum(p.numel() for p in core.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in BertForMaskedLM(core.config).parameters())
    assert method.head.decoder_weight is core.get_input_embeddings().weight
    assert not any(p.requires_grad for p in core.classifier.parameters())
    assert not any(p.requires_grad for p in core.bert.pooler.parameters())
    grads = grads_after_step(method, make_batch(seed=6))
    assert {f"{HEAD_ATTR}.dense.weight", f"{HEAD_ATTR}.bias", "bert.embeddings.word_embeddings.weight"} <= grads.keys()
    assert not any(name.startswith(("classifier", "bert.pooler")) for name in grads)


def test_checkpoint_round_trip_restores_the_head() -> None:
    method = make_mvp(make_tiny_adapter(seed=0))
    batch = make_batch(seed=8)
    want = predict(method, batch)
    buffer = io.BytesIO()
    torch.save({"model": method.adapter.core.state_dict(), "method": method.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert any(key.startswith(HEAD_ATTR) for key in saved["model"])
    fresh = make_mvp(make_tiny_adapter(seed=1))
    fresh.adapter.core.load_state_dict(saved["model"])  # strict: the head keys must match
    fresh.load_state_dict(saved["method"])
    torch.testing.assert_close(predict(fresh, batch), want)
    other = MVP(MVPKnobs(label_words=(("poor",), ("fine",)), templates=TEMPLATES))
    other.setup(make_tiny_adapter())
    with pytest.raises(MethodError):
        other.load_state_dict(saved["method"])


def test_random_one_template_training_and_costs() -> None:
    method = make_mvp(train_templates="random_one")
    assert method.passes_per_step() == 1.0
    assert make_mvp().passes_per_step() == 4.0
    assert make_mvp(adv_eps=1.0, adv_steps=2, n_templates=2).passes_per_step() == 6.0
    method.adapter.core.train()
    terms = method.training_step(make_batch(seed=9))
    assert terms["loss"] > 0


def test_label_words_must_be_single_tokens() -> None:
    with pytest.raises(MethodError, match="class 1"):
        make_mvp(label_words=(("bad",), ("very good",)))
    method = make_mvp(label_words=(("bad", "not good"), ("good",)))
    assert method.class_word_ids == [[TOK._id("bad")], [TOK._id("good")]]
    with pytest.raises(MethodError, match="share"):
        make_mvp(label_words=(("bad",), ("bad", "good")))
    with pytest.raises(MethodError, match="exactly one"):
        make_mvp(templates=("no mask here",), n_templates=1)


def test_registry_and_search_space() -> None:
    method = build("mvp", {"adv_eps": 1.0, "n_templates": 2})
    assert isinstance(method, MVP) and method.knobs.n_templates == 2
    space = load_space("mvp")
    assert next(iter(space.knobs)) == "adv_eps"
    with pytest.raises(MethodError):
        build("mvp", {"n_templates": 5})


def test_fit_checkpoints_and_resumes_with_the_head(tmp_path) -> None:
    """The real loop: head in the optimizer, in the snapshot, and restored on resume."""
    from conftest import make_tiny_task
    from robustsweep.config import JobConfig
    from robustsweep.train.loop import fit

    cfg = JobConfig.model_validate({
        "method": {"name": "mvp", "knobs": {"n_templates": 2, "templates": list(TEMPLATES)}},
        "train": {"epochs": 2, "batch_size": 8, "max_steps_per_epoch": 2, "lr": 1e-3},
    })
    task = make_tiny_task(n_train=16, n_eval=8)
    snapshots: list[bytes] = []

    def save(_epoch: int, _metrics: dict, state_fn) -> None:  # serialise now: state_fn aliases live tensors
        buffer = io.BytesIO()
        torch.save(state_fn(), buffer)
        snapshots.append(buffer.getvalue())

    adapter = make_tiny_adapter()
    method = build("mvp", cfg.method.knobs)
    method.setup(adapter, task)  # label words from the task: "neg" / "pos"
    before = method.head.dense.weight.detach().clone()
    state = fit(adapter, method, task, cfg, progress=None, on_epoch_end=save)
    assert state.epoch == 2 and 0 <= state.history[-1]["clean_accuracy"] <= 1
    assert not torch.equal(method.head.dense.weight, before)  # the head is optimised
    resume = torch.load(io.BytesIO(snapshots[0]), weights_only=True)
    assert any(key.startswith(HEAD_ATTR) for key in resume["model"])
    fresh_adapter = make_tiny_adapter(seed=3)
    fresh = build("mvp", cfg.method.knobs)
    fresh.setup(fresh_adapter, task)
    resumed = fit(fresh_adapter, fresh, task, cfg, resume=resume, progress=None)
    assert resumed.epoch == 2 and len(resumed.history) == 2
    torch.testing.assert_close(fresh.head.dense.weight, method.head.dense.weight)  # same run


def test_unknown_label_words_fail_loudly_with_a_real_tokenizer(tmp_path) -> None:
    from transformers import BertTokenizerFast

    vocab = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "it", "was", ".")
    (tmp_path / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab))
    adapter = make_tiny_adapter()
    adapter.tokenizer = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    method = MVP(MVPKnobs(label_words=(("bad",), ("good",)), templates=("it was [MASK] .",), n_templates=1))
    method.setup(adapter)
    assert method.templates[0].ids == (7, 8, adapter.tokenizer.mask_token_id, 9)
    with pytest.raises(MethodError, match="class 1"):
        MVP(MVPKnobs(label_words=(("bad",), ("positive",)))).setup(adapter)
