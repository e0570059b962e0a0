"""Load a tokenizer + sequence classifier of a known family, as an :class:`EncoderAdapter`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from robustsweep.config import ModelConfig
from robustsweep.errors import ResourceError
from robustsweep.models.adapter import EncoderAdapter
from robustsweep.models.families import Family, family_of, unknown_family_message
from robustsweep.resources import builtin_encoder_dir

BUILTIN_MODELS: dict[str, Callable[[], Path]] = {"minilm": builtin_encoder_dir}


def resolve_model_path(source: str) -> str:
    """``builtin:<name>`` -> local dir; ``hf:<id>`` -> hub id; anything else: a local dir."""
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if name not in BUILTIN_MODELS:
            raise ResourceError(
                f"model.source {source!r}: unknown builtin model (available: "
                f"{', '.join('builtin:' + k for k in BUILTIN_MODELS)})"
            )
        return str(BUILTIN_MODELS[name]())
    if source.startswith("hf:"):
        return source[3:]
    path = Path(source).expanduser()
    if not path.is_dir():
        raise ResourceError(
            f"model.source {source!r}: not a local model directory (use hf:<id> for the hub)"
        )
    return str(path.resolve())


def prepare_tokenizer(tokenizer: Any, config: Any, family: Family) -> None:
    """Family conventions: a pad token (decoders often have none: eos, else unk) known to the
    config, and the family's padding side (decoders left: the pooled last position is real)."""
    if getattr(tokenizer, "pad_token_id", None) is None:
        fallback = getattr(tokenizer, "eos_token", None) or getattr(tokenizer, "unk_token", None)
        if fallback is None:
            raise ResourceError(f"{family.name} tokenizer has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = family.padding_side


def load_model(cfg: ModelConfig, num_labels: int, max_length: int = 128, lowercase: bool = False,
               label_names: Sequence[str] | None = None) -> EncoderAdapter:
    """Tokenizer + pretrained model with a fresh head (LoRA-wrapped when asked), as an adapter."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(cfg.source)
    hf_logging.set_verbosity_error()  # "newly initialized head" warning is expected here
    kwargs: dict[str, Any] = {"num_labels": num_labels, "trust_remote_code": cfg.trust_remote_code}
    if label_names:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
        family = family_of(getattr(config, "model_type", None))
        if family is None:
            raise ResourceError(f"model.source {cfg.source!r}: "
                                    + unknown_family_message(config.model_type))
        if cfg.dropout is not None:
            for key in family.dropout_keys:
                setattr(config, key, cfg.dropout)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        prepare_tokenizer(tokenizer, config, family)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, trust_remote_code=cfg.trust_remote_code
        )
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResourceError(f"model.source {cfg.source!r}: cannot load ({first})") from None
    if cfg.peft is not None:
        from robustsweep.models.lora import wrap_lora

        model = wrap_lora(model, cfg.peft, family)
    return EncoderAdapter(tokenizer=tokenizer, model=model, max_length=max_length, lowercase=lowercase)
