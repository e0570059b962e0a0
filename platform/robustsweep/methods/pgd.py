"""PGD adversarial training on word embeddings (Madry et al. 2018; TextDefender's ``pgd``).

    min_θ E[ CE(f(W(x) + δ*), y) ],  δ* ≈ argmax_{‖δ‖≤ε} CE(f(W(x) + δ), y)

K normalised ascent steps on δ (only ∇δ is computed: no parameter ``.grad`` is written), then
one update on the final adversarial embeddings. ``clean_weight`` > 0 mixes in the clean loss:
L = clean_weight·CE(clean) + (1 − clean_weight)·CE(adv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from robustsweep.methods.base import Batch, RobustMethod
from robustsweep.methods.perturb import EmbeddingAdversaryKnobs, ascent_step, init_delta
from robustsweep.methods.registry import register


class PGDKnobs(EmbeddingAdversaryKnobs):
    """TextDefender defaults: K=5, eta=0.03, a0=0.05, epsilon=0 (unbounded), l2."""

    clean_weight: float = Field(
        0.0, ge=0, le=1, description="Weight of the clean CE term (0 = adversarial loss only)"
    )


def embedding_adversary(method: RobustMethod, batch: Batch, knobs: EmbeddingAdversaryKnobs) -> torch.Tensor:
    """δ_K from K ascent steps on the batch-mean CE, with no parameter gradients written."""
    adapter = method.adapter
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    dim = adapter.embedding_dim
    delta = init_delta(mask, dim, knobs.adv_init_mag, knobs.norm_type)
    with method.no_sync():
        for _ in range(knobs.adv_steps):
            delta.requires_grad_(True)
            logits = adapter.logits(batch, word_embeds=adapter.word_embeddings(ids) + delta)
            (grad,) = method.grad(F.cross_entropy(logits, labels), delta)
            delta = ascent_step(delta, grad, knobs.adv_lr, knobs.adv_max_norm, knobs.norm_type)
    return delta.detach()


@register
class PGD(RobustMethod):
    """K-step PGD on word embeddings; cost (K+1)× vanilla."""

    name = "pgd"
    summary = "K-step PGD adversarial training on word embeddings (l2/linf)"
    paper = "Madry et al. ICLR 2018; TextDefender (Li et al. EMNLP 2021)"
    knobs_class = PGDKnobs
    knobs: PGDKnobs

    def training_step(self, batch: Batch) -> dict[str, float]:
        delta = embedding_adversary(self, batch, self.knobs)
        labels = batch["labels"]
        words = self.adapter.word_embeddings(batch["input_ids"])
        adv_loss = F.cross_entropy(self.adapter.logits(batch, word_embeds=words + delta), labels)
        terms = {"adv_loss": adv_loss.item()}
        loss = adv_loss
        if self.knobs.clean_weight > 0:
            clean_loss = F.cross_entropy(self.adapter.logits(batch), labels)
            loss = self.knobs.clean_weight * clean_loss + (1 - self.knobs.clean_weight) * adv_loss
            terms["clean_loss"] = clean_loss.item()
        self.backward(loss)
        return {"loss": loss.item(), **terms}

    def passes_per_step(self) -> float:
        return self.knobs.adv_steps + 1 + (1 if self.knobs.clean_weight > 0 else 0)
