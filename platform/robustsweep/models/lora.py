"""LoRA through peft: adapters on the family's attention projections, the head trained in full.

Only the adapter and the head train; the base is frozen. Embedding-space methods still work:
their perturbation tensor requires grad, so ∇δ flows through the frozen embeddings without
``enable_input_require_grads`` (which only matters for gradient checkpointing, unused here).
"""

from __future__ import annotations

from torch import nn

from robustsweep.config import PeftConfig
from robustsweep.errors import ConfigError
from robustsweep.models.families import Family


def wrap_lora(model: nn.Module, cfg: PeftConfig, family: Family) -> nn.Module:
    """A PeftModel for sequence classification around ``model`` (base frozen)."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = list(cfg.target_modules or family.lora_targets)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    absent = [t for t in targets if t not in names]
    if absent:
        raise ConfigError(f"model.peft.target_modules: {absent} not in this {family.name} model")
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        modules_to_save=list(family.lora_head),
        fan_in_fan_out=family.name == "GPT-2",  # GPT-2's Conv1D stores weights transposed
    )
    return get_peft_model(model, lora)
