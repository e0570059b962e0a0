"""SMART (Jiang et al., ACL 2020): smoothness-inducing adversarial regularisation in EO space.

    L = CE(f(x), y) + λ_s · ℓ_s(f(x), f(E(x) + δ̂))
    ℓ_s(z, z') = KL(sg(p') ‖ p) + KL(sg(p) ‖ p')          (mt-dnn SymKlCriterion, batchmean)

δ̂ starts at Gaussian noise σ·N(0, I) on real tokens and takes K per-token normalised ascent
steps on KL(sg(p(x)) ‖ p(E(x) + δ)) (methods.md §4). The perturbation lives in EO space (the
embedding-layer output), read from the clean forward so both branches share its dropout.

Optional (off by default, not in mt-dnn): the paper's Bregman proximal point term
μ·ℓ_s(f(x; θ), f(x; θ̃)) against a momentum teacher θ̃ ← β·θ̃ + (1 − β)·θ.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from robustsweep.methods._common import (
    capture_embedding_output,
    eo_ascent,
    eo_forward,
    kl_per_example,
    sym_kl,
)
from robustsweep.methods.base import FORWARD_COST, Batch, Knobs, RobustMethod
from robustsweep.methods.registry import register

if TYPE_CHECKING:
    from robustsweep.data import Task
    from robustsweep.models import EncoderAdapter


class SMARTKnobs(Knobs):
    """mt-dnn ``SmartPerturbation`` defaults (λ_s = adv_alpha = 1, K = 1, σ = 1e-5, inf)."""

    lambda_s: float = Field(1.0, ge=0, le=100,
                            description="λ_s, weight of the smoothness regulariser (1)")
    step_size: float = Field(
        1e-5, ge=0, le=10, description="η, EO-space ascent step (mt-dnn scripts 1e-5; paper 1e-3)")
    noise_var: float = Field(1e-5, ge=0, le=1,
                             description="σ, std of the Gaussian start δ0 on real tokens (1e-5)")
    norm_p: Literal["inf", "l2"] = Field(
        "inf", description="Per-token normalisation of the ascent gradient: inf | l2 (inf)")
    adv_epsilon: float = Field(1e-6, gt=0, le=1e-2,
                               description="ε_n, added to the normalisation denominator (1e-6)")
    adv_steps: int = Field(1, ge=1, le=10, description="K, ascent steps on δ (1)")
    renormalize: bool = Field(
        False, description="mt-dnn coded rule δ ← dir(δ + η·g): unit per-token perturbation, "
                           "η only mixes noise and gradient; False = δ + η·dir (spec) (False)")
    prox_weight: float = Field(0.0, ge=0, le=100,
                               description="μ, Bregman proximal term vs a momentum teacher; "
                                           "0 = off (paper 1, not in mt-dnn)")
    prox_momentum: float = Field(0.99, ge=0, lt=1,
                                 description="β, momentum of the proximal teacher (paper 0.99)")


@register
class SMART(RobustMethod):
    """Clean CE + λ_s · symmetric KL to a K-step EO-space adversary; cost (K + 2)× vanilla."""

    name = "smart"
    summary = "SMART: symmetric-KL smoothness regulariser against an EO-space adversary"
    paper = "Jiang et al. ACL 2020 (mt-dnn SmartPerturbation)"
    knobs_class = SMARTKnobs
    knobs: SMARTKnobs

    def __init__(self, knobs: SMARTKnobs | None = None) -> None:
        super().__init__(knobs)
        self.teacher: torch.nn.Module | None = None

    def setup(self, adapter: EncoderAdapter, task: Task | None = None) -> None:
        super().setup(adapter, task)
        if self.knobs.prox_weight > 0:
            self.teacher = copy.deepcopy(adapter.core).eval().requires_grad_(False)

    def adversarial_logits(self, batch: Batch, logits: torch.Tensor,
                           eo: torch.Tensor) -> torch.Tensor | None:
        """Logits at E(x) + δ̂, or None when the ascent gradient is not finite (mt-dnn skips)."""
        k = self.knobs
        eo = eo.detach()
        real = batch["attention_mask"].unsqueeze(-1).to(eo.dtype)
        delta0 = torch.randn_like(eo) * k.noise_var * real
        target = logits.detach()
        delta = eo_ascent(
            self, batch, eo, delta0, lambda adv: kl_per_example(target, adv).mean(),
            step_size=k.step_size, steps=k.adv_steps, norm=k.norm_p, eps=k.adv_epsilon,
            renormalize=k.renormalize,
        )
        if delta is None:
            return None
        return eo_forward(self.adapter, batch, eo + delta).logits

    def training_step(self, batch: Batch) -> dict[str, float]:
        k = self.knobs
        with capture_embedding_output(self.adapter) as seen:
            logits = self.adapter.logits(batch)
        ce = F.cross_entropy(logits, batch["labels"])
        loss = ce
        terms: dict[str, float] = {"ce": ce.item()}
        if k.lambda_s > 0:
            adv_logits = self.adversarial_logits(batch, logits, seen[0])
            reg = (sym_kl(logits, adv_logits, detach_targets=True).mean()
                   if adv_logits is not None else logits.new_zeros(()))
            loss = loss + k.lambda_s * reg
            terms["smart_reg"] = reg.item()
            terms["smart_skipped"] = float(adv_logits is None)
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.adapter.run(self.teacher, batch).logits
            prox = sym_kl(logits, teacher_logits, detach_targets=True).mean()
            loss = loss + k.prox_weight * prox
            terms["prox"] = prox.item()
        self.backward(loss)
        return {"loss": loss.item(), **terms}

    def after_optimizer_step(self) -> None:
        """Momentum teacher θ̃ ← β·θ̃ + (1 − β)·θ (only with the proximal term on)."""
        if self.teacher is None:
            return
        with torch.no_grad():
            for t, p in zip(self.teacher.parameters(), self.adapter.core.parameters(), strict=True):
                t.lerp_(p, 1.0 - self.knobs.prox_momentum)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict()} if self.teacher is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.teacher is not None and "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])

    def passes_per_step(self) -> float:
        """Clean F + K·(F+B) ascent + adversarial F + backward over both graphs (≈2B)."""
        cost = 1.0
        if self.knobs.lambda_s > 0:
            cost = self.knobs.adv_steps + 2.0
        if self.knobs.prox_weight > 0:
            cost += FORWARD_COST  # teacher forward
        return cost
