"""Mixed precision for training steps: autocast, fp16 loss scaling, and what stays fp32.

One object per trial (``train.precision``) that the loop enters around each training step and
that methods route their backwards and input gradients through (``RobustMethod.backward`` /
``RobustMethod.grad``), so no method needs to know which precision it runs in.

What stays fp32 whatever the setting (docs/methods.md, "Mixed precision"):
- master weights, gradients of parameters and the optimizer state (autocast never casts them);
- logits (``EncoderAdapter.forward`` returns them as fp32), so every cross-entropy, KL and
  smoothing vote is computed in fp32;
- perturbations δ and the ascent maths on them (δ is an fp32 leaf, its gradient is fp32);
- InfoBERT's and RIFT's mutual-information bounds (their scores are cast before logsumexp);
- RoAST's Fisher scores (squared fp32 parameter gradients; the initial ones are taken in
  ``setup``, outside autocast) and its masks;
- evaluation (clean metrics run outside autocast; attacks have their own ``precision`` field).

fp32 is the default and leaves every code path exactly as it was: no autocast, no scaling.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch

PrecisionName = Literal["fp32", "bf16", "fp16"]
LOW_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    """Autocast + (fp16 only) a dynamic loss scale, for one device type."""

    def __init__(self, precision: PrecisionName = "fp32", device_type: str = "cpu") -> None:
        self.precision = precision
        self.device_type = device_type
        # fp16's narrow exponent range needs loss scaling; bf16 has fp32's range and needs none
        self.scaler = torch.amp.GradScaler(device_type) if precision == "fp16" else None

    @property
    def enabled(self) -> bool:
        return self.precision != "fp32"

    def autocast(self) -> AbstractContextManager[Any]:
        """The forward-pass context of a training step (a no-op in fp32)."""
        if not self.enabled:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=LOW_DTYPES[self.precision])

    def _outside_autocast(self) -> AbstractContextManager[Any]:
        """Backward runs with autocast off (PyTorch's advice); its ops follow the forward's dtypes."""
        if not self.enabled:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, enabled=False)

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """``loss.backward()``, scaled under fp16 (``.grad`` then holds scaled values until the
        loop unscales them before the optimizer step)."""
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        with self._outside_autocast():
            loss.backward(retain_graph=retain_graph)

    def grad(self, output: torch.Tensor, inputs: torch.Tensor | Sequence[torch.Tensor],
             retain_graph: bool | None = None, allow_unused: bool = False) -> tuple[Any, ...]:
        """``torch.autograd.grad`` returning true (unscaled) gradients.

        fp16 scales ``output`` by the current loss scale so small input gradients do not flush
        to zero; if the scaled gradients overflow, they are taken again unscaled (the graph is
        kept for that one retry)."""
        with self._outside_autocast():
            if self.scaler is None:
                return torch.autograd.grad(output, inputs, retain_graph=retain_graph,
                                           allow_unused=allow_unused)
            scale = self.scaler.get_scale()
            scaled = torch.autograd.grad(output * scale, inputs, retain_graph=True,
                                         allow_unused=allow_unused)
            if all(g is None or bool(torch.isfinite(g).all()) for g in scaled):
                return tuple(None if g is None else g / scale for g in scaled)
            return torch.autograd.grad(output, inputs, retain_graph=retain_graph,
                                       allow_unused=allow_unused)

    def unscale(self, grad: torch.Tensor) -> torch.Tensor:
        """A ``.grad`` read after ``backward`` (e.g. δ's), as a true gradient. Under fp16 an
        overflowed entry becomes 0: that step's update is skipped by the scaler anyway."""
        if self.scaler is None:
            return grad
        return torch.nan_to_num(grad / self.scaler.get_scale(), nan=0.0, posinf=0.0, neginf=0.0)

    # ---- the optimizer step (the loop's side) ------------------------------------------------
    def unscale_(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale the optimizer's gradients in place; False when they overflowed (fp16), so
        the step, clipping and method hooks must be skipped. Always True without a scaler."""
        if self.scaler is None:
            return True
        self.scaler.unscale_(optimizer)
        return all_finite(p.grad for group in optimizer.param_groups for p in group["params"])

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # skips the update when unscale_ found inf/NaN
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


def all_finite(grads: Iterable[torch.Tensor | None]) -> bool:
    """Whether every gradient is finite (one host sync)."""
    flags = [torch.isfinite(g).all() for g in grads if g is not None]
    return bool(torch.stack(flags).all()) if flags else True


FP32 = MixedPrecision()  # what a method uses outside a trial (tests, benchmarks, inference)
