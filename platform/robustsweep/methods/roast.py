"""RoAST (Kim et al., EMNLP Findings 2023): adversarial perturbation + selective training.

Loss (methods.md §5.1, as in the official code; active when coeff_sym > 0 or adv_ce_weight > 0):

    L = 0.5·CE(z, y) + λ · Σ_b ½·symKL(z_b, z'_b) [+ adv_ce_weight · CE(z', y)]

z = f(x); z' = Head(Enc(e + δ0 + ε·dir)) with e = E(x).detach() (a second embedding call),
δ0 = U(0, 1)·1e-5 and dir the per-token l_inf-normalised ∇δ CE at e + δ0 (one step, no
projection). Gradient reaches both z and z', never the embeddings through the adversarial branch.
Unlike the official loop, the attention mask is passed.

Selective training (§5.2, when 0 < α < 1): only encoder-block parameters are masked. A
diagonal-Fisher score s = mean(g²) is ranked globally, r = rank/(N − 1), and the keep
probability is π = sigmoid(2β(r − α)). M ~ Bernoulli(π) (divided by π with ``unbiased_scale``)
multiplies the gradients in ``before_optimizer_step``. The initial scores come from a CE pass
over (at most ``fisher_batches``) train batches in ``setup``; afterwards they are the squared
RoAST gradients accumulated during each epoch, and the mask is resampled in ``on_epoch_end``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from robustsweep.methods._common import embedding_output, eo_ascent, eo_forward, sym_kl
from robustsweep.methods.base import Batch, Knobs, RobustMethod
from robustsweep.methods.registry import register

if TYPE_CHECKING:
    from robustsweep.data import Task
    from robustsweep.models import EncoderAdapter

DELTA0_SCALE = 1e-5  # δ0 = U(0, 1)·1e-5 (official code)
DIRECTION_EPS = 1e-8
PI_EPS = 1e-12
MAX_EXACT_RANK = 1 << 24  # above this many scores, rank against a random subsample
RANK_SAMPLE = 1 << 21  # subsample size: ranks to ~5e-7, far below the 1e-3 needed


class RoASTKnobs(Knobs):
    """Official run.sh defaults, sentiment setting (α = 0.9, β = 10); entailment uses 0.6 / 1."""

    adv_eps: float = Field(
        0.1, ge=0, le=10, description="ε, per-token max-abs step of the EO perturbation (0.1)")
    coeff_sym: float = Field(
        0.01, ge=0, le=10, description="λ, weight of the symmetric KL, summed over a batch (0.01)")
    alpha: float = Field(
        0.9, ge=0, le=1, description="α, rank threshold of the keep probability, ≈ fraction NOT "
                                     "updated; outside (0, 1): no masking (sentiment 0.9, NLI 0.6)")
    beta: float = Field(
        10.0, gt=0, le=100, description="β, keep-probability sharpness (sentiment 10, NLI 1)")
    unbiased_scale: bool = Field(True, description="Divide kept gradients by π (True)")
    adv_ce_weight: float = Field(
        0.0, ge=0, le=1, description="Weight of CE on the adversarial logits (0 = official code)")
    kl_reduction: Literal["sum", "mean"] = Field(
        "sum", description="Reduction of the KL term over the batch: sum (official) | mean (sum)")
    mask_mode: Literal["code", "strict"] = Field(
        "code", description="code: mask the gradient only (official); strict: masked entries also "
                            "keep their value through momentum and weight decay (code)")
    fisher_batches: int = Field(
        64, ge=0, le=100_000, description="Cap on train batches of the initial Fisher pass; "
                                          "0 = the whole train set (paper: whole set)")
    fisher_batch_size: int = Field(
        16, ge=1, le=4096, description="Batch size of the initial Fisher pass (16)")
    mask_seed: int = Field(
        0, ge=0, description="Seed of the mask sampler: the same mask on every rank (0)")


def expected_keep(alpha: float, beta: float) -> float:
    """Closed-form E[keep] = ∫₀¹ σ(2β(r − α)) dr (0.106 for α=0.9, β=10; 0.454 for 0.6, 1)."""
    k = 2.0 * beta
    return (math.log1p(math.exp(k * (1 - alpha))) - math.log1p(math.exp(-k * alpha))) / k


def relative_ranks(scores: list[torch.Tensor],
                   generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Global relative rank r ∈ [0, 1] of every entry among all ``scores`` (ties share a rank).

    Exact (rank/(N − 1)) up to ``MAX_EXACT_RANK`` entries; above that, ranked against a sorted
    stratified random subsample, so memory stays at one subsample instead of argsorting all N.
    """
    total = sum(s.numel() for s in scores)
    if total <= MAX_EXACT_RANK:
        ref = torch.cat([s.reshape(-1) for s in scores]).sort().values
    else:
        parts = []
        for s in scores:
            take = max(1, round(RANK_SAMPLE * s.numel() / total))
            idx = torch.randint(s.numel(), (take,), generator=generator, device=s.device)
            parts.append(s.reshape(-1)[idx])
        ref = torch.cat(parts).sort().values
    denom = max(ref.numel() - 1, 1)
    ranks = []
    for s in scores:
        flat = s.reshape(-1).contiguous()
        lo = torch.searchsorted(ref, flat, right=False)
        hi = torch.searchsorted(ref, flat, right=True)
        r = (lo + hi - 1).to(torch.float32) / (2 * denom)
        ranks.append(r.clamp(0, 1).view_as(s))
    return ranks


def keep_probability(ranks: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """π = sigmoid(2β(r − α))."""
    return torch.sigmoid(2.0 * beta * (ranks - alpha))


def sample_mask(pi: torch.Tensor, unbiased: bool,
                generator: torch.Generator | None) -> torch.Tensor:
    """M ~ Bernoulli(π), divided by π when ``unbiased`` (so E[M] = 1 per entry)."""
    keep = (torch.rand(pi.shape, generator=generator, device=pi.device) < pi).to(pi.dtype)
    return keep / (pi + PI_EPS) if unbiased else keep


@register
class RoAST(RobustMethod):
    """EO-space adversarial consistency + Fisher-ranked gradient masking; cost ≈3× vanilla."""

    name = "roast"
    supports_grad_clipping = False  # unbiased mask scaling would dominate a global clip norm
    summary = "RoAST: EO-space adversarial symmetric KL + selective (gradient-masked) training"
    paper = "Kim et al. EMNLP Findings 2023 (arXiv 2312.04032)"
    knobs_class = RoASTKnobs
    knobs: RoASTKnobs

    def __init__(self, knobs: RoASTKnobs | None = None) -> None:
        super().__init__(knobs)
        self.masked: dict[str, torch.nn.Parameter] = {}
        self.mask: dict[str, torch.Tensor] | None = None
        self.fisher_sum: dict[str, torch.Tensor] = {}
        self.fisher_steps = 0
        self.generator: torch.Generator | None = None
        self._before_step: dict[str, torch.Tensor] = {}

    @property
    def selective(self) -> bool:
        return 0.0 < self.knobs.alpha < 1.0

    @property
    def adversarial(self) -> bool:
        return self.knobs.coeff_sym > 0 or self.knobs.adv_ce_weight > 0

    # ---- life cycle -------------------------------------------------------------------------
    def setup(self, adapter: EncoderAdapter, task: Task | None = None) -> None:
        """Pick the encoder-block parameters and, with a task, sample the initial mask."""
        super().setup(adapter, task)
        layer_ids = {id(p) for p in adapter.encoder_layers.parameters()}
        self.masked = {n: p for n, p in adapter.core.named_parameters()
                       if id(p) in layer_ids and p.requires_grad}
        self.generator = torch.Generator(device=adapter.device).manual_seed(self.knobs.mask_seed)
        if self.selective:  # the g² accumulator is a params-sized buffer: only when masking
            self.fisher_sum = {n: torch.zeros_like(p) for n, p in self.masked.items()}
        if self.selective and task is not None:
            self.refresh_mask(self.initial_fisher(task))

    def initial_fisher(self, task: Task) -> dict[str, torch.Tensor]:
        """mean over batches of (∂CE/∂p)² on the pretrained model (train mode, no update).

        Gradients come from ``autograd.grad``, so no ``.grad`` is written.
        """
        adapter, k = self.adapter, self.knobs
        order = torch.randperm(len(task.train),
                               generator=torch.Generator().manual_seed(k.mask_seed)).tolist()
        n_batches = math.ceil(len(order) / k.fisher_batch_size)
        if k.fisher_batches:
            n_batches = min(n_batches, k.fisher_batches)
        size = k.fisher_batch_size
        names, params = list(self.masked), list(self.masked.values())
        sums = [torch.zeros_like(p) for p in params]
        was_training = self.model.training
        self.model.train()
        with self.no_sync():
            for b in range(n_batches):
                rows = task.train.subset(order[b * size:(b + 1) * size])
                batch = adapter.to_device(adapter.encode(rows.texts, rows.pairs, rows.labels))
                loss = F.cross_entropy(adapter.logits(batch), batch["labels"])
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for s, g in zip(sums, grads, strict=True):
                    if g is not None:
                        s.addcmul_(g, g)
        self.model.train(was_training)
        return {n: s / max(n_batches, 1) for n, s in zip(names, sums, strict=True)}

    def refresh_mask(self, scores: dict[str, torch.Tensor]) -> None:
        """Rank the scores globally and sample a new mask (held fixed for a whole epoch)."""
        names = list(self.masked)
        ranks = relative_ranks([scores[n] for n in names], self.generator)
        self.mask = {}
        for n, r in zip(names, ranks, strict=True):
            pi = keep_probability(r, self.knobs.alpha, self.knobs.beta)
            self.mask[n] = sample_mask(pi, self.knobs.unbiased_scale, self.generator)

    def on_epoch_end(self, epoch: int) -> None:
        """New mask from the squared RoAST gradients of this epoch (taken before masking)."""
        if not self.selective or self.fisher_steps == 0:
            return
        self.refresh_mask({n: s / self.fisher_steps for n, s in self.fisher_sum.items()})
        for s in self.fisher_sum.values():
            s.zero_()
        self.fisher_steps = 0

    # ---- loss -------------------------------------------------------------------------------
    def adversarial_embeddings(
        self, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(e, δ0, δ) with e = E(x).detach() and δ = δ0 + ε·dir; δ is None if ∇ is not finite."""
        eo = embedding_output(self.adapter, batch).detach()
        delta0 = torch.rand_like(eo) * DELTA0_SCALE
        labels = batch["labels"]
        delta = eo_ascent(self, batch, eo, delta0, lambda z: F.cross_entropy(z, labels),
                          step_size=self.knobs.adv_eps, steps=1, norm="inf", eps=DIRECTION_EPS)
        return eo, delta0, delta

    def training_step(self, batch: Batch) -> dict[str, float]:
        k, labels = self.knobs, batch["labels"]
        logits = self.adapter.logits(batch)
        ce = F.cross_entropy(logits, labels)
        if not self.adversarial:
            self.backward(ce)
            return {"loss": ce.item(), "ce": ce.item()}
        loss = 0.5 * ce
        terms: dict[str, float] = {"ce": ce.item(), "sym_kl": 0.0, "adv_skipped": 1.0}
        eo, _, delta = self.adversarial_embeddings(batch)
        if delta is not None:
            adv_logits = eo_forward(self.adapter, batch, eo + delta).logits
            per_example = 0.5 * sym_kl(logits, adv_logits)
            kl = per_example.sum() if k.kl_reduction == "sum" else per_example.mean()
            loss = loss + k.coeff_sym * kl
            terms.update(sym_kl=kl.item(), adv_skipped=0.0)
            if k.adv_ce_weight > 0:
                adv_ce = F.cross_entropy(adv_logits, labels)
                loss = loss + k.adv_ce_weight * adv_ce
                terms["adv_ce"] = adv_ce.item()
        self.backward(loss)
        return {"loss": loss.item(), **terms}

    # ---- gradient masking -------------------------------------------------------------------
    def before_optimizer_step(self) -> None:
        """Accumulate g² (before masking) for the next mask, then multiply the grads by M."""
        if not self.selective:
            return
        for n, p in self.masked.items():
            if p.grad is not None:
                self.fisher_sum[n].addcmul_(p.grad, p.grad)
        self.fisher_steps += 1
        if self.mask is None:
            return
        for n, p in self.masked.items():
            if p.grad is not None:
                p.grad.mul_(self.mask[n])
        if self.knobs.mask_mode == "strict":
            self._before_step = {n: p.detach().clone() for n, p in self.masked.items()}

    def after_optimizer_step(self) -> None:
        """strict: put masked entries back, undoing momentum and weight-decay moves."""
        if not self._before_step or self.mask is None:
            return
        with torch.no_grad():
            for n, p in self.masked.items():
                p.copy_(torch.where(self.mask[n] == 0, self._before_step[n], p))
        self._before_step = {}

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"fisher_sum": self.fisher_sum, "fisher_steps": self.fisher_steps}
        if self.mask is not None:
            state["mask"] = self.mask
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.adapter.device
        self.fisher_sum = {n: t.to(device) for n, t in state["fisher_sum"].items()}
        self.fisher_steps = int(state["fisher_steps"])
        self.mask = {n: t.to(device) for n, t in state["mask"].items()} if "mask" in state else None
        if "generator" in state and self.generator is not None:
            self.generator.set_state(state["generator"].cpu())

    def passes_per_step(self) -> float:
        """Clean F + ascent (F+B) + adversarial F + backward through both graphs (≈2B)."""
        return 3.0 if self.adversarial else 1.0
