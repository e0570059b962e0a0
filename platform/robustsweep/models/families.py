"""The ONE family table: how each transformers architecture exposes what robust methods touch.

Nothing outside this module names a family's attributes (``bert.encoder.layer``,
``transformer.h``, ``albert_layer_groups`` ...). Methods and evaluation go through
:class:`robustsweep.models.adapter.EncoderAdapter`, which asks this table. The module imports
no torch, so the pre-flight (``resolve``) can check family/method compatibility cheaply.

Per family:
- ``eo_block``: path (from the backbone) of the module whose output is "EO space" (the
  embedding-layer output fed to the first block); ``eo_call`` says how to recompute it;
- ``blocks``: path of the transformer blocks; ALBERT's are shared (one layer group applied at
  every depth), so a per-layer operation at depth i fires at the i-th *application*;
- ``inputs``: batch keys the forward accepts besides ids/embeddings (no ``token_type_ids``
  where the family has none);
- ``padding_side`` and ``pooling``: encoders pool the first token ([CLS]) and pad right;
  decoders pool the last token and are left-padded so that the last position is always real,
  also under ``inputs_embeds``, where the HF classifier cannot see the padding;
- ``dropout_keys``: config fields that ``model.dropout`` overrides;
- ``lora_targets`` / ``lora_head``: default LoRA target modules and the head modules trained
  in full next to the adapter;
- ``refuses``: methods this family cannot run, with what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["encoder", "decoder"]

# Methods that need something only some families have (see ``refuses``).
_MVP_DECODER = ("a masked-LM head and a mask token: MVP's cloze scoring is defined for encoders; "
                "its causal analogue is not implemented")


@dataclass(frozen=True)
class Family:
    """One architecture family (one row of the table; see the module docstring)."""

    name: str
    model_types: tuple[str, ...]
    kind: Kind
    eo_block: str
    blocks: str
    inputs: tuple[str, ...] = ("attention_mask",)
    eo_call: Literal["module", "gpt2"] = "module"
    shared_blocks: bool = False
    dropout_keys: tuple[str, ...] = ("hidden_dropout_prob", "attention_probs_dropout_prob")
    lora_targets: tuple[str, ...] = ("query", "value")
    lora_head: tuple[str, ...] = ("classifier",)
    refuses: Mapping[str, str] = field(default_factory=dict)

    @property
    def padding_side(self) -> Literal["left", "right"]:
        return "left" if self.kind == "decoder" else "right"

    @property
    def pooling(self) -> Literal["first", "last"]:
        return "last" if self.kind == "decoder" else "first"

    def missing_for(self, method: str) -> str | None:
        """What this family lacks for ``method``, or None when it can run it."""
        return self.refuses.get(method)


_BERT_INPUTS = ("attention_mask", "token_type_ids")
_DECODER_DROPOUT = ("attention_dropout",)
_DECODER_LORA = ("q_proj", "v_proj")

FAMILIES: tuple[Family, ...] = (
    Family("BERT", ("bert",), "encoder", "embeddings", "encoder.layer", _BERT_INPUTS),
    Family("RoBERTa", ("roberta", "camembert"), "encoder", "embeddings", "encoder.layer",
           _BERT_INPUTS),
    Family("XLM-R", ("xlm-roberta",), "encoder", "embeddings", "encoder.layer", _BERT_INPUTS),
    Family("ELECTRA", ("electra",), "encoder", "embeddings", "encoder.layer", _BERT_INPUTS),
    Family("DeBERTa-v2/v3", ("deberta-v2", "deberta"), "encoder", "embeddings", "encoder.layer",
           _BERT_INPUTS, lora_targets=("query_proj", "value_proj"),
           lora_head=("classifier", "pooler")),
    Family("DistilBERT", ("distilbert",), "encoder", "embeddings", "transformer.layer",
           dropout_keys=("dropout", "attention_dropout"), lora_targets=("q_lin", "v_lin"),
           lora_head=("pre_classifier", "classifier")),
    Family("ALBERT", ("albert",), "encoder", "embeddings", "encoder.albert_layer_groups",
           _BERT_INPUTS, shared_blocks=True),
    Family("ModernBERT", ("modernbert",), "encoder", "embeddings", "layers",
           dropout_keys=("embedding_dropout", "attention_dropout", "mlp_dropout"),
           lora_targets=("Wqkv",), lora_head=("head", "classifier")),
    Family("GPT-2", ("gpt2",), "decoder", "drop", "h", eo_call="gpt2",
           dropout_keys=("resid_pdrop", "embd_pdrop", "attn_pdrop"), lora_targets=("c_attn",),
           lora_head=("score",), refuses={"mvp": _MVP_DECODER}),
    Family("Llama", ("llama",), "decoder", "embed_tokens", "layers",
           dropout_keys=_DECODER_DROPOUT, lora_targets=_DECODER_LORA, lora_head=("score",),
           refuses={"mvp": _MVP_DECODER}),
    Family("Qwen2", ("qwen2",), "decoder", "embed_tokens", "layers",
           dropout_keys=_DECODER_DROPOUT, lora_targets=_DECODER_LORA, lora_head=("score",),
           refuses={"mvp": _MVP_DECODER}),
    Family("Mistral", ("mistral",), "decoder", "embed_tokens", "layers",
           dropout_keys=_DECODER_DROPOUT, lora_targets=_DECODER_LORA, lora_head=("score",),
           refuses={"mvp": _MVP_DECODER}),
    Family("Gemma", ("gemma", "gemma2"), "decoder", "embed_tokens", "layers",
           dropout_keys=_DECODER_DROPOUT, lora_targets=_DECODER_LORA, lora_head=("score",),
           refuses={"mvp": _MVP_DECODER}),
)

# Where the LM-head pieces live inside ``AutoModelForMaskedLM`` models (MVP copies them):
# (dense, LayerNorm, vocabulary bias). Checked in order; the first that resolves is used.
MLM_HEAD_LAYOUTS: tuple[tuple[str, str, str], ...] = (
    ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias"),
    ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias"),  # RoBERTa, XLM-R, CamemBERT
    ("vocab_transform", "vocab_layer_norm", "vocab_projector.bias"),  # DistilBERT
    ("predictions.dense", "predictions.LayerNorm", "predictions.bias"),  # ALBERT
    ("generator_predictions.dense", "generator_predictions.LayerNorm", "generator_lm_head.bias"),
    ("head.dense", "head.norm", "decoder.bias"),  # ModernBERT
)

BY_MODEL_TYPE: dict[str, Family] = {t: f for f in FAMILIES for t in f.model_types}


def known_model_types() -> str:
    return ", ".join(sorted(BY_MODEL_TYPE))


def family_of(model_type: str | None) -> Family | None:
    """The family of a config's ``model_type`` (None when the table does not know it)."""
    return BY_MODEL_TYPE.get(model_type or "")


def unknown_family_message(model_type: str | None) -> str:
    return (f"model family (model_type) {model_type!r} is not supported "
            f"(supported: {known_model_types()})")


def incompatible_message(family: Family, method: str) -> str | None:
    """One line naming the family, the method and what is missing; None when compatible."""
    missing = family.missing_for(method)
    if missing is None:
        return None
    return f"method {method!r} cannot run on a {family.name} model ({family.kind}): needs {missing}"


def model_type_in(directory: str | Path) -> str | None:
    """``model_type`` from a model directory's config.json (None when there is none)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None


def attribute(root: Any, path: str) -> Any:
    """``root.a.b.c`` for ``path`` = "a.b.c" (the table's paths start at the backbone)."""
    for part in path.split("."):
        root = getattr(root, part)
    return root
