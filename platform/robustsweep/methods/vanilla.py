"""Vanilla fine-tuning: plain cross-entropy (the baseline every method is compared with)."""

from __future__ import annotations

import torch.nn.functional as F

from robustsweep.methods.base import Batch, Knobs, RobustMethod
from robustsweep.methods.registry import register


class VanillaKnobs(Knobs):
    """Vanilla has no knobs of its own: lr, epochs and batch size live in ``train``."""


@register
class Vanilla(RobustMethod):
    """L = CE(f(x), y), batch mean. Cost 1F+1B."""

    name = "vanilla"
    summary = "Plain cross-entropy fine-tuning (baseline)"
    paper = "Devlin et al. 2019 (BERT fine-tuning)"
    knobs_class = VanillaKnobs

    def training_step(self, batch: Batch) -> dict[str, float]:
        loss = F.cross_entropy(self.adapter.logits(batch), batch["labels"])
        self.backward(loss)
        return {"loss": loss.item()}
