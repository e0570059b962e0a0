"""The classifier plus the entry points robust methods perturb, for every family in the table.

Methods, evaluation and attacks call only these entry points; where a family differs (which
module is EO space, where the blocks are, which inputs the forward takes, where it pools), the
answer comes from :mod:`robustsweep.models.families`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustsweep.errors import ResourceError
from robustsweep.models.families import Family, attribute, family_of, unknown_family_message

Hook = Callable[[torch.Tensor], torch.Tensor]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (a PeftModel stays wrapped: it owns the adapter)."""
    return model.module if hasattr(model, "module") else model


def plain_model(model: nn.Module) -> nn.Module:
    """The transformers model under DDP and peft wrappers (where the family's modules live)."""
    core = unwrap(model)
    get_base = getattr(core, "get_base_model", None)
    return get_base() if callable(get_base) else core


def decoder_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted over real tokens only, so left padding does not shift positions."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


@dataclass
class EncoderAdapter:
    """The classifier plus the hooks robust methods perturb.

    ``model`` may be DDP-wrapped (forward calls go through it so gradients are all-reduced);
    ``core`` is the model without DDP (a PeftModel under LoRA); ``hf`` the transformers model.
    """

    tokenizer: Any
    model: nn.Module
    max_length: int = 128
    lowercase: bool = False

    # ---- what the model is ------------------------------------------------------------------
    @property
    def core(self) -> nn.Module:
        return unwrap(self.model)

    @property
    def hf(self) -> nn.Module:
        return plain_model(self.model)

    @property
    def family(self) -> Family:
        model_type = getattr(self.hf.config, "model_type", None)
        family = family_of(model_type)
        if family is None:
            raise ResourceError(f"{type(self.hf).__name__}: {unknown_family_message(model_type)}")
        return family

    @property
    def is_decoder(self) -> bool:
        return self.family.kind == "decoder"

    @property
    def backbone(self) -> nn.Module:
        """The transformer without its classification head (embeddings + blocks)."""
        return self.hf.base_model

    @property
    def device(self) -> torch.device:
        return next(self.core.parameters()).device

    @property
    def num_labels(self) -> int:
        return int(self.hf.config.num_labels)

    @property
    def hidden_size(self) -> int:
        return int(self.hf.config.hidden_size)

    @property
    def embedding_dim(self) -> int:
        """Width of the word embeddings (ALBERT: smaller than ``hidden_size``)."""
        return int(self.hf.get_input_embeddings().embedding_dim)

    @property
    def word_embedding_weight(self) -> torch.Tensor:
        """The V×d word-embedding matrix (RIFT's nearest-neighbour synonyms)."""
        return self.hf.get_input_embeddings().weight

    @property
    def uses_lora(self) -> bool:
        return self.core is not self.hf

    @property
    def embeddings_module(self) -> nn.Module:
        """The module whose output is the embedding-layer output (EO space)."""
        return attribute(self.backbone, self.family.eo_block)

    @property
    def encoder_layers(self) -> nn.ModuleList:
        """Transformer blocks by depth; ALBERT's shared group appears once per depth it runs at."""
        blocks = attribute(self.backbone, self.family.blocks)
        if not self.family.shared_blocks:
            return blocks
        depth = int(self.hf.config.num_hidden_layers)
        per_group = depth / len(blocks)
        return nn.ModuleList([blocks[int(i / per_group)] for i in range(depth)])

    def head_parameters(self) -> list[nn.Parameter]:
        """The classification head's parameters (outside the backbone, plus a backbone pooler)."""
        inside = {id(p) for p in self.backbone.parameters()}
        pooler = getattr(self.backbone, "pooler", None)
        pooled = {id(p) for p in pooler.parameters()} if isinstance(pooler, nn.Module) else set()
        return [p for p in self.hf.parameters() if id(p) not in inside or id(p) in pooled]

    @property
    def mask_token_id(self) -> int | None:
        """The mask token, or for decoders (none has one) unk, else pad: RSMI's masking token."""
        value = getattr(self.tokenizer, "mask_token_id", None)
        if value is None and self.is_decoder:
            for attr in ("unk_token_id", "pad_token_id"):
                value = getattr(self.tokenizer, attr, None)
                if value is not None:
                    break
        return None if value is None else int(value)

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
        keys = ("input_ids", *self.family.inputs)
        batch = {k: v for k, v in enc.items() if k in keys}
        if labels is not None:
            batch["labels"] = torch.as_tensor(list(labels), dtype=torch.long)
        return batch

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = self.device
        return {k: v.to(device) for k, v in batch.items()}

    # ---- forward entry points ---------------------------------------------------------------
    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """W(ids): the raw word-embedding lookup (no position/type, no LayerNorm): WE space."""
        return self.hf.get_input_embeddings()(input_ids)

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The forward's keyword inputs besides ids/embeddings (decoders: real-token positions)."""
        inputs = {k: batch[k] for k in self.family.inputs if k in batch}
        if self.is_decoder and "attention_mask" in batch:
            mask = batch["attention_mask"]
            if mask.device.type == "cpu" and not bool(mask[:, -1].all()):
                raise ValueError("decoder batches must be left-padded: the classifier pools the "
                                 "last position")
            inputs["position_ids"] = decoder_positions(mask)
        return inputs

    def run(self, module: nn.Module, batch: dict[str, torch.Tensor], *,
            word_embeds: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Call the classifier (or a copy of it or of its backbone) with the family's inputs.

        Decoders always get ``inputs_embeds``: their classifier then pools the last position,
        which left padding makes the last real token, whatever the token ids are.
        """
        inputs = self.model_inputs(batch)
        if word_embeds is None and self.is_decoder:
            word_embeds = unwrap(module).get_input_embeddings()(batch["input_ids"])
        if word_embeds is not None:
            inputs["inputs_embeds"] = word_embeds
        else:
            inputs["input_ids"] = batch["input_ids"]
        if self.is_decoder:
            inputs["use_cache"] = False
        return module(**inputs, **kwargs, return_dict=True)

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        *,
        word_embeds: torch.Tensor | None = None,
        embed_delta: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> Any:
        """Run the classifier; perturb in WE space (``word_embeds``) or EO space (``embed_delta``).

        Returns the HF output (``.logits``, ``.hidden_states`` when asked). Logits are fp32
        under autocast too, so every loss, KL and vote on them is computed in fp32.
        """
        with self.embedding_offset(embed_delta):
            out = self.run(self.model, batch, word_embeds=word_embeds,
                           output_hidden_states=output_hidden_states)
        if out.logits.dtype != torch.float32:
            out.logits = out.logits.float()
        return out

    def logits(self, batch: dict[str, torch.Tensor], **perturb: Any) -> torch.Tensor:
        return self.forward(batch, **perturb).logits

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """The sequence feature at the pooling position: [CLS] (encoders), last token (decoders,
        left-padded so the last position is real)."""
        return hidden[:, -1] if self.family.pooling == "last" else hidden[:, 0]

    def features(self, backbone: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled last-layer features of a backbone (e.g. a frozen copy) on the clean input."""
        return self.pooled(self.run(backbone, batch).last_hidden_state)

    def embedding_output(self, batch: dict[str, torch.Tensor],
                         input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """E(ids): a fresh call of the EO block (word + position (+ type), norm, dropout).

        ``input_ids`` overrides the batch's ids (RIFT embeds candidates at their positions).
        """
        ids = batch["input_ids"] if input_ids is None else input_ids
        module = self.embeddings_module
        if self.family.eo_call == "gpt2":
            positions = decoder_positions(batch["attention_mask"])
            return module(self.word_embeddings(ids) + self.backbone.wpe(positions))
        params = inspect.signature(module.forward).parameters
        kwargs: dict[str, Any] = {}
        if "token_type_ids" in batch and "token_type_ids" in params:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        if "mask" in params:  # DeBERTa's embedding block masks padding itself
            kwargs["mask"] = batch["attention_mask"]
        return module(ids, **kwargs)

    # ---- hooks ------------------------------------------------------------------------------
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
    def layer_hooks(self, hooks: dict[int, Hook]) -> Iterator[None]:
        """Transform the hidden states output at chosen depths (train and eval mode).

        A shared block (ALBERT) runs at several depths: its hook counts its calls within a
        forward (reset when the backbone starts) and applies the function of that depth only.
        """
        layers = self.encoder_layers
        by_module: dict[int, tuple[nn.Module, list[int]]] = {}
        for depth, block in enumerate(layers):
            by_module.setdefault(id(block), (block, []))[1].append(depth)
        calls: dict[int, int] = {}

        def make(key: int, depths: list[int]) -> Callable[..., Any]:
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
                depth = depths[calls.get(key, 0) % len(depths)]
                calls[key] = calls.get(key, 0) + 1
                fn = hooks.get(depth)
                if fn is None:
                    return output
                if isinstance(output, tuple):
                    return (fn(output[0]), *output[1:])
                return fn(output)

            return hook

        handles = [self.backbone.register_forward_pre_hook(lambda _m, _i: calls.clear())]
        for key, (block, depths) in by_module.items():
            if any(d in hooks for d in depths):
                handles.append(block.register_forward_hook(make(key, depths)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold: the whole model, or under LoRA the trainable tensors
        only (adapter + head + anything a method attached), so checkpoints stay small."""
        if not self.uses_lora:
            return self.core.state_dict()
        return {n: p.detach() for n, p in self.core.named_parameters() if p.requires_grad}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``checkpoint_state``; under LoRA the frozen base comes from the source."""
        if not self.uses_lora:
            self.core.load_state_dict(state)
            return
        result = self.core.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"checkpoint has unknown tensors: {result.unexpected_keys[:3]}")
        trainable = {n for n, p in self.core.named_parameters() if p.requires_grad}
        missing = trainable - set(state)
        if missing:
            raise ValueError(f"checkpoint lacks trainable tensors: {sorted(missing)[:3]}")
