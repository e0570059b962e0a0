"""InfoBERT (Wang et al., ICLR 2021): FreeLB + two mutual-information regularisers.

For each of the K FreeLB iterates δ_k in WE space (methods.md §8.1):

1. forward on W(x) + δ_k; H0 = hidden_states[0] (EO), hL = last-layer [CLS];
2. loss_k = CE/K + β·IB/K, where IB = mean_i ‖y_i − y_π(i)‖²/2 over the real-token rows y of
   H0 and a random index π (CLUBv2 with a fixed q: a spread penalty on embedding outputs);
   backward (accumulating, graph retained);
3. anchored tokens: per example, the real tokens whose ‖∂loss_k/∂δ_t‖ ranks (ascending) fall in
   [ceil(n·cl), ceil(n·ch)); their (H0 token, hL) pairs, shuffled with a fixed seed and chunked
   by the batch size, give an InfoNCE lower bound LB with a softplus MLP critic;
   −α·mean(LB)/K is backwarded separately (the critic trains with the model);
4. δ_{k+1} = FreeLB ascent step on ∂loss_k/∂δ.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from robustsweep.methods._common import allreduce_grads
from robustsweep.methods.base import BACKWARD_COST, Batch, RobustMethod
from robustsweep.methods.freelb import FreeLBKnobs
from robustsweep.methods.perturb import ascent_step, dropout_mode, init_delta
from robustsweep.methods.registry import register

if TYPE_CHECKING:
    from robustsweep.data import Task
    from robustsweep.models import EncoderAdapter

CRITIC_HIDDEN = 300
SHUFFLE_SEED = 0  # the official code shuffles the anchored pairs with a fixed seed
RANK_TOL = 1e-9  # ceil(n·c) without float noise (10·0.9 must give 9)


class InfoBERTKnobs(FreeLBKnobs):
    """Official ANLI command / TextDefender defaults: K=3, adv_lr 0.04, init 0.08, α=β=5e-3."""

    adv_steps: int = Field(3, ge=1, le=50, description="K FreeLB forward/backward passes (3)")
    adv_lr: float = Field(0.04, ge=0, le=10, description="η, FreeLB ascent step size (0.04)")
    adv_init_mag: float = Field(0.08, ge=0, le=10, description="a0, random init magnitude (0.08)")
    adv_max_norm: float = Field(0.0, ge=0, le=100,
                                description="ε, per-example bound; 0 = unbounded (0)")
    beta_ib: float = Field(5e-3, ge=0, le=10,
                           description="β, weight of the information-bottleneck upper bound (5e-3)")
    alpha_anchor: float = Field(
        5e-3, ge=0, le=10, description="α, weight of the anchored-feature MI lower bound (5e-3)")
    cl: float = Field(0.5, ge=0, le=1,
                      description="Lower gradient-rank percentile of anchored tokens (0.5)")
    ch: float = Field(0.9, ge=0, le=1,
                      description="Upper gradient-rank percentile of anchored tokens, > cl (0.9)")

    @model_validator(mode="after")
    def _window(self) -> InfoBERTKnobs:
        if self.cl >= self.ch:
            raise ValueError(f"cl ({self.cl}) must be below ch ({self.ch})")
        return self


class InfoNCECritic(nn.Module):
    """F(a, b) = Softplus(Linear(2d → 300) → ReLU → Linear(300 → 1)) on [a; b]."""

    def __init__(self, dim: int, hidden: int = CRITIC_HIDDEN) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1),
                                 nn.Softplus())

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([a, b], dim=-1)).squeeze(-1)


def infonce_lower_bound(critic: nn.Module, local: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
    """LB = mean_i F(a_i, b_i) − (mean_i logsumexp_j F(a_j, b_i) − log n) ≤ log n."""
    n = local.shape[0]
    positive = critic(local, glob).float().mean()  # fp32 under autocast (precision.py)
    pairs = critic(local.unsqueeze(0).expand(n, -1, -1), glob.unsqueeze(1).expand(-1, n, -1)).float()
    return positive - (pairs.logsumexp(dim=1).mean() - math.log(n))


def ib_upper_bound(h0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean_i ‖y_i − y_π(i)‖²/2 over real-token rows y, π drawn with replacement (CLUBv2)."""
    rows = h0[mask.bool()].float()  # fp32 under autocast (precision.py)
    perm = torch.randint(rows.shape[0], (rows.shape[0],), device=rows.device)
    return (rows - rows[perm]).square().sum(dim=-1).mean() / 2


def anchored_positions(grad_norm: torch.Tensor, mask: torch.Tensor, cl: float,
                       ch: float) -> torch.Tensor:
    """B×L bool: real tokens whose ascending gradient-norm rank is in [ceil(n·cl), ceil(n·ch))."""
    real = mask.bool()
    n = real.sum(dim=1, keepdim=True).double()
    keyed = grad_norm.masked_fill(~real, float("inf"))  # padding sorts last
    order = keyed.argsort(dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(
        order.shape[1], device=order.device).expand_as(order))
    low = torch.ceil(n * cl - RANK_TOL)
    high = torch.ceil(n * ch - RANK_TOL)
    return real & (rank >= low) & (rank < high)


@register
class InfoBERT(RobustMethod):
    """FreeLB with IB and anchored-feature MI regularisers; cost ≈K× vanilla."""

    name = "infobert"
    summary = "InfoBERT: FreeLB + information bottleneck + anchored-feature InfoNCE"
    paper = "Wang et al. ICLR 2021"
    knobs_class = InfoBERTKnobs
    knobs: InfoBERTKnobs
    clips_extra_parameters = False  # official trainer: clip_grad_norm_(model.parameters()) only

    def __init__(self, knobs: InfoBERTKnobs | None = None) -> None:
        super().__init__(knobs)
        self.critic: InfoNCECritic | None = None

    def setup(self, adapter: EncoderAdapter, task: Task | None = None) -> None:
        super().setup(adapter, task)
        self.critic = InfoNCECritic(adapter.hidden_size).to(adapter.device)

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.critic.parameters()) if self.critic is not None else []

    def anchored_lower_bound(self, h0: torch.Tensor, h_cls: torch.Tensor,
                             selected: torch.Tensor) -> torch.Tensor | None:
        """mean over chunks of the InfoNCE bound on (anchored token, [CLS]) pairs; None if none."""
        assert self.critic is not None, "setup() builds the critic"
        rows, cols = selected.nonzero(as_tuple=True)
        if rows.numel() == 0:
            return None
        order = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(SHUFFLE_SEED))
        order = order.to(rows.device)
        local, glob = h0[rows[order], cols[order]], h_cls[rows[order]]
        size = h0.shape[0]  # chunks of the train batch size, as in the official code
        bounds = [infonce_lower_bound(self.critic, local[s:s + size], glob[s:s + size])
                  for s in range(0, local.shape[0], size)]
        return torch.stack(bounds).mean()

    def training_step(self, batch: Batch) -> dict[str, float]:
        k, adapter = self.knobs, self.adapter
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        delta = init_delta(mask, adapter.embedding_dim,
                           k.adv_init_mag, k.norm_type)
        dropout_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        # Terms stay tensors until the end: an .item() per term would wait for the GPU each time.
        zero = torch.zeros((), device=ids.device)
        sums = {"ce": zero, "ib": zero, "anchor_lb": zero}
        total = zero
        # Two backwards per pass: DDP could not all-reduce twice, so accumulate locally and
        # average once at the end (a no-op in a single process).
        with self.no_sync():
            for step in range(k.adv_steps):
                delta.requires_grad_(True)
                with dropout_mode(self.model, k.adv_dropout, dropout_seed):
                    out = adapter.forward(batch, word_embeds=adapter.word_embeddings(ids) + delta,
                                          output_hidden_states=True)
                h0, h_cls = out.hidden_states[0], adapter.pooled(out.hidden_states[-1])
                ce = F.cross_entropy(out.logits, labels) / k.adv_steps
                loss = ce
                if k.beta_ib > 0:
                    ib = k.beta_ib * ib_upper_bound(h0, mask) / k.adv_steps
                    loss = loss + ib
                    sums["ib"] = sums["ib"] + ib.detach()
                anchored = k.alpha_anchor > 0
                self.backward(loss, retain_graph=anchored)
                grad = self.amp.unscale(delta.grad.detach().clone())
                sums["ce"] = sums["ce"] + ce.detach()
                total = total + loss.detach()
                if anchored:
                    selected = anchored_positions(grad.norm(dim=-1), mask, k.cl, k.ch)
                    bound = self.anchored_lower_bound(h0, h_cls, selected)
                    if bound is not None:
                        reg = -k.alpha_anchor * bound / k.adv_steps
                        self.backward(reg)
                        total = total + reg.detach()
                        sums["anchor_lb"] = sums["anchor_lb"] + bound.detach() / k.adv_steps
                if step < k.adv_steps - 1:
                    delta = ascent_step(delta, grad, k.adv_lr, k.adv_max_norm, k.norm_type)
        allreduce_grads([*adapter.core.parameters(), *self.extra_parameters()])
        return {"loss": total.item(), **{key: value.item() for key, value in sums.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {"critic": self.critic.state_dict()} if self.critic is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.critic is not None and "critic" in state:
            self.critic.load_state_dict(state["critic"])

    def passes_per_step(self) -> float:
        """K accumulating F+B passes, plus, when α > 0, a second backward through the whole
        encoder per pass (the anchored bound reads the last layer's [CLS]). The critic and the
        IB term are small next to the encoder."""
        extra_backward = BACKWARD_COST if self.knobs.alpha_anchor > 0 else 0.0
        return float(self.knobs.adv_steps) * (1.0 + extra_backward)

