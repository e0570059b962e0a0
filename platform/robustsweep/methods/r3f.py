"""R3F (Aghajanyan et al., ICLR 2021; fairseq ``sentence_prediction_r3f``).

    L = CE(f(W(x)), y) + λ · mean_b symKL(f(W(x)), f(W(x).detach() + ξ))

ξ is random noise in WE space, U(−ε, ε) or N(0, ε²) elementwise, with no ascent step. The
symmetric KL lets gradient reach both branches (fairseq). Training only; inference unchanged.
Like fairseq, the noise term is skipped when ε = 0 or λ = 0.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from robustsweep.methods._common import sym_kl
from robustsweep.methods.base import Batch, Knobs, RobustMethod
from robustsweep.methods.registry import register

NoiseType = Literal["uniform", "normal"]


class R3FKnobs(Knobs):
    """fairseq defaults: λ = 1, ε = 1e-5, uniform noise (``lambda`` is a Python keyword)."""

    r3f_lambda: float = Field(
        1.0, ge=0, le=100, description="λ, weight of the symmetric-KL noise term (--r3f-lambda 1)")
    eps: float = Field(1e-5, ge=0, le=1,
                       description="ε, noise scale in WE space: U(−ε, ε) or N(0, ε²) (1e-5)")
    noise_type: NoiseType = Field(
        "uniform", description="Noise distribution: uniform | normal (uniform)")


def sample_noise(like: torch.Tensor, eps: float, noise_type: NoiseType) -> torch.Tensor:
    """ξ with the shape, dtype and device of ``like``: U(−ε, ε) or N(0, ε²) elementwise."""
    if noise_type == "uniform":
        return torch.empty_like(like).uniform_(-eps, eps)
    return torch.randn_like(like) * eps


@register
class R3F(RobustMethod):
    """Clean CE + λ · symmetric KL to a randomly perturbed copy; cost 2× vanilla."""

    name = "r3f"
    summary = "R3F: symmetric-KL consistency to random word-embedding noise"
    paper = "Aghajanyan et al. ICLR 2021 (fairseq sentence_prediction_r3f)"
    knobs_class = R3FKnobs
    knobs: R3FKnobs

    @property
    def _active(self) -> bool:
        return self.knobs.r3f_lambda > 0 and self.knobs.eps > 0

    def training_step(self, batch: Batch) -> dict[str, float]:
        logits = self.adapter.logits(batch)
        ce = F.cross_entropy(logits, batch["labels"])
        loss = ce
        terms: dict[str, float] = {"ce": ce.item()}
        if self._active:
            with torch.no_grad():
                words = self.adapter.word_embeddings(batch["input_ids"])
            noised = words + sample_noise(words, self.knobs.eps, self.knobs.noise_type)
            noised_logits = self.adapter.logits(batch, word_embeds=noised)
            reg = sym_kl(logits, noised_logits).mean()
            loss = loss + self.knobs.r3f_lambda * reg
            terms["r3f_symkl"] = reg.item()
        self.backward(loss)
        return {"loss": loss.item(), **terms}

    def passes_per_step(self) -> float:
        """Clean and noisy forwards, one backward through both: 2F + 2B = 2×."""
        return 2.0 if self._active else 1.0
