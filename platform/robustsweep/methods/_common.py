"""Pieces shared by SMART, R3F, RoAST, RIFT and InfoBERT.

- KL divergences between the class distributions of two logit tensors (fp32, per example),
- EO-space forwards (methods.md §0): read E(x), or feed a replacement embedding-layer output,
- the per-token normalised EO ascent used by SMART and RoAST,
- a gradient all-reduce for parameters DDP does not manage (critics, projection heads).

The module name starts with ``_`` so method discovery does not treat it as a method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

from robustsweep.methods.base import Batch, RobustMethod

if TYPE_CHECKING:
    from robustsweep.models import EncoderAdapter

TokenNorm = Literal["inf", "l2"]


# ---- divergences ------------------------------------------------------------------------------
def kl_per_example(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_target ‖ p) for each row, in fp32 (gradient flows into both arguments)."""
    log_t = F.log_softmax(target_logits.float(), dim=-1)
    log_p = F.log_softmax(logits.float(), dim=-1)
    return (log_t.exp() * (log_t - log_p)).sum(dim=-1)


def sym_kl(a: torch.Tensor, b: torch.Tensor, *, detach_targets: bool = False) -> torch.Tensor:
    """KL(p_b ‖ p_a) + KL(p_a ‖ p_b) per example.

    ``detach_targets`` stops the gradient through the target side of each direction
    (mt-dnn's SymKlCriterion); otherwise gradient reaches both sides (fairseq R3F, RoAST).
    """
    ta, tb = (a.detach(), b.detach()) if detach_targets else (a, b)
    return kl_per_example(tb, a) + kl_per_example(ta, b)


# ---- EO-space forwards ------------------------------------------------------------------------
def embedding_output(adapter: EncoderAdapter, batch: Batch,
                     input_ids: torch.Tensor | None = None) -> torch.Tensor:
    """E(ids): a fresh call of the embedding block (word + position + type, LayerNorm, dropout).

    ``input_ids`` overrides the batch's ids (RIFT embeds candidate substitutions at their own
    positions). How the block is called is the family's business (``EncoderAdapter``).
    """
    return adapter.embedding_output(batch, input_ids)


@contextmanager
def capture_embedding_output(adapter: EncoderAdapter) -> Iterator[list[torch.Tensor]]:
    """Record E(x) as computed inside the forwards of this block (same dropout as the forward)."""
    seen: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        seen.append(output)

    handle = adapter.embeddings_module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def replace_embedding_output(adapter: EncoderAdapter, eo: torch.Tensor) -> Iterator[None]:
    """Feed ``eo`` to the encoder instead of E(x) for the forwards in this block."""
    handle = adapter.embeddings_module.register_forward_hook(lambda _m, _i, _out: eo)
    try:
        yield
    finally:
        handle.remove()


def eo_forward(adapter: EncoderAdapter, batch: Batch, eo: torch.Tensor,
               output_hidden_states: bool = False) -> Any:
    """Head(Enc(eo)): the classifier run on a given embedding-layer output."""
    with replace_embedding_output(adapter, eo):
        return adapter.forward(batch, output_hidden_states=output_hidden_states)


# ---- per-token normalised EO ascent (SMART, RoAST) --------------------------------------------
def token_direction(grad: torch.Tensor, norm: TokenNorm, eps: float) -> torch.Tensor:
    """Normalise each token's gradient: g/(max_j|g_j| + eps) for inf, g/(‖g‖₂ + eps) for l2."""
    if norm == "inf":
        denom = grad.abs().amax(dim=-1, keepdim=True)
    else:
        denom = grad.norm(dim=-1, keepdim=True)
    return grad / (denom + eps)


def eo_ascent(
    method: RobustMethod,
    batch: Batch,
    eo: torch.Tensor,
    delta: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    *,
    step_size: float,
    steps: int,
    norm: TokenNorm,
    eps: float,
    renormalize: bool = False,
) -> torch.Tensor | None:
    """δ after ``steps`` ascent steps δ ← δ + η·dir(∇δ objective(Head(Enc(eo + δ)))).

    ``eo`` must be detached. Only ∇δ is computed (no parameter ``.grad``). Returns None when a
    gradient is NaN/Inf, so the caller skips its regulariser. ``renormalize`` is mt-dnn's
    coded rule δ ← dir(δ + η·g), which gives a unit-size perturbation per token.
    """
    adapter = method.adapter
    assert adapter is not None
    with method.no_sync():
        for _ in range(steps):
            delta = delta.detach().requires_grad_(True)
            logits = eo_forward(adapter, batch, eo + delta).logits
            (grad,) = method.grad(objective(logits), delta)
            if not torch.isfinite(grad).all():
                return None
            if renormalize:
                delta = token_direction(delta + step_size * grad, norm, eps)
            else:
                delta = delta + step_size * token_direction(grad, norm, eps)
    return delta.detach()


# ---- distributed ------------------------------------------------------------------------------
def allreduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Average ``.grad`` across ranks (no-op in a single process).

    DDP wraps only the classifier, so method-owned parameters (critics, heads) and gradients
    accumulated under ``no_sync`` must be averaged by hand to keep the ranks identical.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    world = dist.get_world_size()
    for param in params:
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad.div_(world)
