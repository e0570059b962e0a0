"""Models: the adapter every method and attack uses, and the ONE family table behind it.

- ``families``: how each architecture exposes embeddings, EO block, blocks, inputs, padding,
  pooling and LoRA targets (torch-free, so the pre-flight can read it);
- ``adapter``: :class:`EncoderAdapter`, the entry points methods call;
- ``loading``: ``load_model`` / ``resolve_model_path``; ``lora``: peft wrapping.

Names are imported lazily so ``robustsweep.models.families`` stays importable without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robustsweep.models.adapter import EncoderAdapter, unwrap
    from robustsweep.models.loading import BUILTIN_MODELS, load_model, resolve_model_path

__all__ = ["BUILTIN_MODELS", "EncoderAdapter", "load_model", "resolve_model_path", "unwrap"]

_WHERE = {
    "EncoderAdapter": "adapter",
    "unwrap": "adapter",
    "BUILTIN_MODELS": "loading",
    "load_model": "loading",
    "resolve_model_path": "loading",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"robustsweep.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'robustsweep.models' has no attribute {name!r}")
