"""Load a tokenizer + sequence classifier and expose the few entry points methods perturb.

Nothing here is MiniLM-specific: BERT, RoBERTa, DeBERTa and ELECTRA all expose
``get_input_embeddings()``, ``base_model.embeddings`` and ``base_model.encoder.layer``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustsweep.config import ModelConfig
from robustsweep.errors import ResourceError
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


def unwrap(model: nn.Module) -> nn.Module:
    """The plain HF model inside a DDP wrapper."""
    return model.module if hasattr(model, "module") else model


@dataclass
class EncoderAdapter:
    """The classifier plus the hooks robust methods perturb.

    ``model`` may be DDP-wrapped (forward calls go through it so gradients are all-reduced);
    ``core`` is always the plain HF model (embedding tables, layers, config).
    """

    tokenizer: Any
    model: nn.Module
    max_length: int = 128
    lowercase: bool = False

    @property
    def core(self) -> nn.Module:
        return unwrap(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.core.parameters()).device

    @property
    def num_labels(self) -> int:
        return int(self.core.config.num_labels)

    @property
    def embeddings_module(self) -> nn.Module:
        """The embedding block (word + position + type, LayerNorm, dropout): EO space."""
        return self.core.base_model.embeddings

    @property
    def encoder_layers(self) -> nn.ModuleList:
        """Transformer layers, for hidden-space hooks (RSMI noise)."""
        return self.core.base_model.encoder.layer

    # ---- tokenization -----------------------------------------------------------------------
    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, labels: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Tokenize with dynamic padding (to the longest text in the batch, not max_length)."""
        if self.lowercase:
            texts = [t.lower() for t in texts]
            pairs = [p.lower() for p in pairs] if pairs is not None else None
        enc = self.tokenizer(
            list(texts),
            list(pairs) if pairs is not None else None,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if labels is not None:
            batch["labels"] = torch.as_tensor(list(labels), dtype=torch.long)
        return batch

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = self.device
        return {k: v.to(device) for k, v in batch.items()}

    # ---- forward entry points ---------------------------------------------------------------
    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """W(ids): the raw word-embedding lookup (no position/type, no LayerNorm): WE space."""
        return self.core.get_input_embeddings()(input_ids)

    @staticmethod
    def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: batch[k] for k in ("attention_mask", "token_type_ids") if k in batch}

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        *,
        word_embeds: torch.Tensor | None = None,
        embed_delta: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> Any:
        """Run the classifier; perturb in WE space (``word_embeds``) or EO space (``embed_delta``).

        Returns the HF output (``.logits``, ``.hidden_states`` when asked).
        """
        inputs = self.model_inputs(batch)
        if word_embeds is not None:
            inputs["inputs_embeds"] = word_embeds
        else:
            inputs["input_ids"] = batch["input_ids"]
        with self.embedding_offset(embed_delta):
            return self.model(**inputs, output_hidden_states=output_hidden_states, return_dict=True)

    def logits(self, batch: dict[str, torch.Tensor], **perturb: Any) -> torch.Tensor:
        return self.forward(batch, **perturb).logits

    @contextmanager
    def embedding_offset(self, delta: torch.Tensor | None) -> Iterator[None]:
        """Add ``delta`` to the embedding-layer output (EO space) for forwards in this block."""
        if delta is None:
            yield
            return
        handle = self.embeddings_module.register_forward_hook(lambda _m, _i, out: out + delta)
        try:
            yield
        finally:
            handle.remove()

    @contextmanager
    def layer_hooks(self, hooks: dict[int, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
        """Transform the hidden states output by chosen layers (works in train and eval mode)."""

        def make(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
                if isinstance(output, tuple):
                    return (fn(output[0]), *output[1:])
                return fn(output)

            return hook

        handles = [self.encoder_layers[i].register_forward_hook(make(fn)) for i, fn in hooks.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def load_model(cfg: ModelConfig, num_labels: int, max_length: int = 128, lowercase: bool = False,
               label_names: Sequence[str] | None = None) -> EncoderAdapter:
    """Tokenizer + pretrained encoder with a fresh classification head, as an adapter."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(cfg.source)
    hf_logging.set_verbosity_error()  # "newly initialized head" warning is expected here
    kwargs: dict[str, Any] = {"num_labels": num_labels, "trust_remote_code": cfg.trust_remote_code}
    if label_names:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
    if cfg.dropout is not None:
        kwargs["hidden_dropout_prob"] = cfg.dropout
        kwargs["attention_probs_dropout_prob"] = cfg.dropout
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, trust_remote_code=cfg.trust_remote_code
        )
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResourceError(f"model.source {cfg.source!r}: cannot load ({first})") from None
    return EncoderAdapter(tokenizer=tokenizer, model=model, max_length=max_length, lowercase=lowercase)
