"""FreeLB (Zhu et al., ICLR 2020): parameter gradients averaged over K ascent iterates.

    g_θ = (1/K) Σ_{k<K} ∇_θ CE(f(W(x) + δ_k), y)

Each of the K passes backpropagates CE/K into the parameters (accumulating) and gives ∇δ for
the next iterate. K counts forward/backward passes (HF counting; fairseq's adv_steps = K − 1).
With a0 = 0 the first iterate is the clean input. Dropout across the K passes follows
``adv_dropout`` (official: the same masks).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from robustsweep.methods.base import Batch, RobustMethod
from robustsweep.methods.perturb import (
    EmbeddingAdversaryKnobs,
    ascent_step,
    dropout_mode,
    init_delta,
)
from robustsweep.methods.registry import register


class FreeLBKnobs(EmbeddingAdversaryKnobs):
    """Defaults follow TextDefender's FreeLB (K=5, eta=0.03, a0=0.05, unbounded)."""

    adv_steps: int = Field(5, ge=1, le=50, description="K forward/backward passes (5)")
    adv_dropout: Literal["same", "fresh", "off"] = Field(
        "same", description="Dropout masks across the K passes: same (official) | fresh | off"
    )


def freelb_accumulate(method: RobustMethod, batch: Batch, knobs: FreeLBKnobs) -> tuple[float, torch.Tensor]:
    """Run the K accumulating passes; returns (mean loss, last logits). Leaves ``.grad`` filled."""
    adapter = method.adapter
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    dim = adapter.embedding_dim
    delta = init_delta(mask, dim, knobs.adv_init_mag, knobs.norm_type)
    dropout_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    total = 0.0
    logits = torch.empty(0)
    for k in range(knobs.adv_steps):
        last = k == knobs.adv_steps - 1
        delta.requires_grad_(True)
        sync = torch.enable_grad() if last else method.no_sync()
        with sync, dropout_mode(method.model, knobs.adv_dropout, dropout_seed):
            logits = adapter.logits(batch, word_embeds=adapter.word_embeddings(ids) + delta)
            loss = F.cross_entropy(logits, labels) / knobs.adv_steps
            method.backward(loss)
        total += loss.item()
        if not last:
            delta = ascent_step(delta, method.amp.unscale(delta.grad), knobs.adv_lr, knobs.adv_max_norm, knobs.norm_type)
    return total, logits.detach()


@register
class FreeLB(RobustMethod):
    """K accumulating adversarial passes; cost K× vanilla."""

    name = "freelb"
    summary = "FreeLB: gradients accumulated over K word-embedding ascent iterates"
    paper = "Zhu et al. ICLR 2020"
    knobs_class = FreeLBKnobs
    knobs: FreeLBKnobs

    def training_step(self, batch: Batch) -> dict[str, float]:
        loss, _ = freelb_accumulate(self, batch, self.knobs)
        return {"loss": loss}

    def passes_per_step(self) -> float:
        return float(self.knobs.adv_steps)
