"""Tiny random models of every family in the table, with tokenizers of the family's conventions.

Each tokenizer is a WordLevel ``tokenizers`` model wrapped in ``PreTrainedTokenizerFast`` with
the family's special tokens, template ([CLS] x [SEP], <s> x </s>, <bos> x, or nothing) and, as
``load_model`` would set it, its pad token and padding side. No hub access.

Run ``python tests/models/tiny_families.py`` to rewrite the family x method matrix in
docs/methods.md from these parameters (``test_doc_matrix`` checks it is current).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robustsweep.config import PeftConfig
from robustsweep.models.adapter import EncoderAdapter
from robustsweep.models.families import Family, family_of, incompatible_message
from robustsweep.models.loading import prepare_tokenizer

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "film", "plot", "the", "a", "neg", "pos",
         "movie", "was", "is", "this", "sentiment", "of", "statement"]
DIM, LAYERS, HEADS, FFN, POSITIONS = 32, 2, 2, 64, 64

# Cheap knobs so a step of each method takes milliseconds on a tiny model.
CHEAP_KNOBS: dict[str, dict[str, Any]] = {
    "vanilla": {},
    "pgd": {"adv_steps": 1},
    "freelb": {"adv_steps": 2},
    "smart": {},
    "r3f": {},
    "roast": {"fisher_batches": 1, "fisher_batch_size": 4},
    "rift": {"ascc_steps": 1, "n_synonyms": 2, "min_similarity": -1.0, "polarity_filter": False},
    "mvp": {"n_templates": 2},
    "infobert": {"adv_steps": 2},
    "rsmi": {"num_ensemble": 2, "binom_ensemble": 2, "fixed_noise": True, "multi_mask": 1},
}
METHODS = tuple(CHEAP_KNOBS)
MATRIX_START, MATRIX_END = "<!-- family-matrix:start -->", "<!-- family-matrix:end -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "methods.md"


@dataclass(frozen=True)
class TokenizerSpec:
    """Special tokens in id order, their roles, and the single-text template."""

    specials: tuple[str, ...]
    roles: dict[str, str]
    single: str | None = None
    pair: str | None = None
    type_ids: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


_BERT = TokenizerSpec(("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
                      {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                       "sep_token": "[SEP]", "mask_token": "[MASK]"},
                      "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1", type_ids=True)
_ROBERTA = TokenizerSpec(("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
                         {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
                          "unk_token": "<unk>", "mask_token": "<mask>", "cls_token": "<s>",
                          "sep_token": "</s>"},
                         "<s> $A </s>", "<s> $A </s> </s> $B </s>")
_GPT2 = TokenizerSpec(("<|endoftext|>",), {"bos_token": "<|endoftext|>",
                                            "eos_token": "<|endoftext|>",
                                            "unk_token": "<|endoftext|>"})
_LLAMA = TokenizerSpec(("<unk>", "<s>", "</s>"),
                       {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}, "<s> $A",
                       "<s> $A <s> $B")
_QWEN = TokenizerSpec(("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                      {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
_GEMMA = TokenizerSpec(("<pad>", "<eos>", "<bos>", "<unk>"),
                       {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>",
                        "unk_token": "<unk>"}, "<bos> $A", "<bos> $A <eos> $B")

TOKENIZERS: dict[str, TokenizerSpec] = {
    "bert": _BERT, "electra": _BERT, "deberta-v2": _BERT, "distilbert": _BERT, "albert": _BERT,
    "modernbert": _BERT, "roberta": _ROBERTA, "xlm-roberta": _ROBERTA, "gpt2": _GPT2,
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _QWEN, "gemma": _GEMMA,
}
MODEL_TYPES = tuple(TOKENIZERS)  # one tiny model per family (the table's first model_type)


def make_tokenizer(model_type: str) -> Any:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    spec = TOKENIZERS[model_type]
    vocab = {tok: i for i, tok in enumerate((*spec.specials, *WORDS))}
    unk = spec.roles.get("unk_token", spec.specials[0])
    backend = Tokenizer(WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = Whitespace()
    if spec.single:
        used = {t for t in (spec.single + " " + (spec.pair or "")).split()
                if t in vocab}
        backend.post_processor = TemplateProcessing(
            single=spec.single, pair=spec.pair or spec.single + " $B",
            special_tokens=[(t, vocab[t]) for t in sorted(used)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **spec.roles)
    if not spec.type_ids:
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    return tokenizer


def make_config(model_type: str, vocab: int, tokenizer: Any, num_labels: int = 2) -> Any:
    import transformers as tf

    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    ids = {k: v for k, v in ids.items() if v is not None}
    common = dict(vocab_size=vocab, hidden_size=DIM, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, intermediate_size=FFN, num_labels=num_labels,
                  **ids)
    bertish = dict(common, max_position_embeddings=POSITIONS, hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0)
    decoder = dict(common, max_position_embeddings=POSITIONS, num_key_value_heads=1)
    build = {
        "bert": lambda: tf.BertConfig(**bertish),
        "electra": lambda: tf.ElectraConfig(embedding_size=16, **bertish),
        "roberta": lambda: tf.RobertaConfig(**dict(bertish, max_position_embeddings=POSITIONS + 2)),
        "xlm-roberta": lambda: tf.XLMRobertaConfig(
            **dict(bertish, max_position_embeddings=POSITIONS + 2)),
        "deberta-v2": lambda: tf.DebertaV2Config(
            relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"],
            type_vocab_size=0, **bertish),
        "distilbert": lambda: tf.DistilBertConfig(
            vocab_size=vocab, dim=DIM, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
            max_position_embeddings=POSITIONS, num_labels=num_labels, dropout=0.0,
            attention_dropout=0.0, pad_token_id=tokenizer.pad_token_id),
        "albert": lambda: tf.AlbertConfig(embedding_size=16, num_hidden_groups=1,
                                          **dict(bertish, num_hidden_layers=3)),
        "modernbert": lambda: tf.ModernBertConfig(
            global_attn_every_n_layers=1, local_attention=16, cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id, reference_compile=False,
            **dict(common, max_position_embeddings=POSITIONS)),
        "gpt2": lambda: tf.GPT2Config(vocab_size=vocab, n_embd=DIM, n_layer=LAYERS, n_head=HEADS,
                                      n_positions=POSITIONS, num_labels=num_labels, **ids),
        "llama": lambda: tf.LlamaConfig(**decoder),
        "mistral": lambda: tf.MistralConfig(**decoder),
        "qwen2": lambda: tf.Qwen2Config(**decoder),
        "gemma": lambda: tf.GemmaConfig(head_dim=DIM // HEADS, **decoder),
    }
    return build[model_type]()


def make_adapter(model_type: str, *, seed: int = 0, lora: PeftConfig | None = None,
                 lora_seed: int = 0, max_length: int = 32) -> EncoderAdapter:
    """A tiny random classifier of the family, prepared as ``load_model`` prepares one."""
    from transformers import AutoModelForSequenceClassification

    family = family_of(model_type)
    assert family is not None
    tokenizer = make_tokenizer(model_type)
    config = make_config(model_type, len(tokenizer), tokenizer)
    prepare_tokenizer(tokenizer, config, family)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    if lora is not None:
        from robustsweep.models.lora import wrap_lora

        torch.manual_seed(lora_seed)
        model = wrap_lora(model, lora, family)
    return EncoderAdapter(tokenizer=tokenizer, model=model, max_length=max_length)


# ---- the matrix -------------------------------------------------------------------------------
def family_for(model_type: str) -> Family:
    family = family_of(model_type)
    assert family is not None
    return family


def matrix_markdown() -> str:
    """The family x method table the tests exercise: ✓ trains/saves/predicts/is attacked,
    refused (with the reason from the family table) otherwise."""
    head = "| family (model_type tested) | kind | " + " | ".join(METHODS) + " |"
    rule = "|---|---|" + "---|" * len(METHODS)
    rows, reasons = [head, rule], {}
    for model_type in MODEL_TYPES:
        family = family_for(model_type)
        cells = []
        for method in METHODS:
            message = incompatible_message(family, method)
            if message is None:
                cells.append("✓")
            else:
                cells.append("refused")
                reasons[family.missing_for(method)] = method
        rows.append(f"| {family.name} (`{model_type}`) | {family.kind} | " + " | ".join(cells) + " |")
    notes = [f"\n\nRefused {m}: needs {r}." for r, m in reasons.items()]
    return "\n".join(rows) + "".join(notes) + "\n"


def doc_matrix() -> str | None:
    text = DOC.read_text()
    match = re.search(re.escape(MATRIX_START) + r"\n(.*?)" + re.escape(MATRIX_END), text, re.DOTALL)
    return match.group(1) if match else None


def write_doc_matrix() -> None:
    text = DOC.read_text()
    block = f"{MATRIX_START}\n{matrix_markdown()}{MATRIX_END}"
    if MATRIX_START in text:
        text = re.sub(re.escape(MATRIX_START) + r".*?" + re.escape(MATRIX_END), lambda _m: block,
                      text, flags=re.DOTALL)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text)


if __name__ == "__main__":
    write_doc_matrix()
