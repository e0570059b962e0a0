"""The RobustMethod contract every method implements.

The train loop, evaluation and attacks call only these hooks, so an inference-time defence
(RSMI's smoothing, MVP's prompts) is trained *and attacked* through its real code path.

Loop order per optimizer step (fixed): ``training_step`` once per micro-batch (does its own
backward through ``self.backward``, under autocast when ``train.precision`` asks; gradients add
up across the ``train.grad_accumulation_steps`` micro-batches) -> gradients averaged over the
micro-batches and unscaled (fp16) -> ``before_optimizer_step`` -> clip (``clipped_parameters``)
-> ``optimizer.step`` -> ``scheduler.step`` -> ``after_optimizer_step`` -> ``zero_grad``. So
``before_optimizer_step`` (RoAST's mask and Fisher scores) always sees the whole step's true
gradient. ``on_epoch_end`` runs after the last step of an epoch.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from robustsweep.precision import FP32, MixedPrecision

if TYPE_CHECKING:
    from robustsweep.data import Task
    from robustsweep.models import EncoderAdapter

Batch = dict[str, torch.Tensor]

# Shares of one vanilla step (1 forward + 1 backward = 1.0) for ``passes_per_step``: a backward
# costs about twice a forward, so a lone forward is 1/3 and a lone backward 2/3 of a step.
FORWARD_COST = 1.0 / 3.0
BACKWARD_COST = 2.0 / 3.0


class Knobs(BaseModel):
    """Base of each method's knobs: paper names, paper defaults, validated ranges.

    Every field carries a ``description`` (meaning + paper default); the ``methods`` listing,
    docs and search-space validation are all generated from these fields.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


class RobustMethod:
    """A robust fine-tuning method: a loss (training_step) plus optional inference changes."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    knobs_class: ClassVar[type[Knobs]] = Knobs
    # RSMI needs input gradients at inference (saliency masking); evaluation must not wrap it
    # in torch.no_grad().
    wants_grad_at_inference: ClassVar[bool] = False
    # RoAST rescales kept gradients by 1/keep-probability; a global clip would be dominated by
    # those entries, so such methods opt out of the loop's gradient clipping.
    supports_grad_clipping: ClassVar[bool] = True
    # Whether the clip norm also covers ``extra_parameters()``. InfoBERT's official trainer
    # clips the model only, not its MI critic, so a large critic gradient never shrinks the
    # model's update; such methods set this False.
    clips_extra_parameters: ClassVar[bool] = True

    def __init__(self, knobs: Knobs | None = None) -> None:
        self.knobs = knobs if knobs is not None else self.knobs_class()
        self.adapter: EncoderAdapter | None = None
        # the trial's precision (set by the train loop); fp32 everywhere else
        self.amp: MixedPrecision = FP32

    # ---- life cycle -------------------------------------------------------------------------
    def setup(self, adapter: EncoderAdapter, task: Task | None = None) -> None:
        """Build extra state (teachers, masks, critics). Called once, before the optimizer."""
        self.adapter = adapter

    @property
    def model(self) -> torch.nn.Module:
        """The (possibly DDP-wrapped) classifier being trained."""
        assert self.adapter is not None, "setup() was not called"
        return self.adapter.model

    def training_step(self, batch: Batch) -> dict[str, float]:
        """Compute the loss, call backward (leaving ``.grad`` filled), return logged terms.

        Must return at least ``{"loss": float}``.
        """
        raise NotImplementedError

    def before_optimizer_step(self) -> None:
        """Hook between backward and the optimizer step (e.g. RoAST's gradient mask)."""

    def after_optimizer_step(self) -> None:
        """Hook after the optimizer/scheduler step."""

    def on_epoch_end(self, epoch: int) -> None:
        """Hook after the last step of each epoch (e.g. RoAST recomputes its mask)."""

    # ---- inference --------------------------------------------------------------------------
    def predict_logits(self, batch: Batch) -> torch.Tensor:
        """Class logits for evaluation and attacks; override to change inference."""
        return self.adapter.logits(batch)  # type: ignore[union-attr]

    # ---- extra state ------------------------------------------------------------------------
    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters outside the classifier (critics, heads): go to the optimizer."""
        return []

    def clipped_parameters(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The part of the optimizer's ``params`` whose joint gradient norm the loop clips."""
        if self.clips_extra_parameters:
            return params
        extra = {id(p) for p in self.extra_parameters()}
        return [p for p in params if id(p) not in extra]

    def state_dict(self) -> dict[str, Any]:
        """Method state for checkpoints (tensors, numbers, strings only: weights_only loads)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    # ---- cost accounting --------------------------------------------------------------------
    def passes_per_step(self) -> float:
        """Theoretical cost of one training step in vanilla units (1F+1B = 1.0), from methods.md."""
        return 1.0

    # ---- helpers for subclasses -------------------------------------------------------------
    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """``loss.backward()`` in the trial's precision: every backward of a method goes here
        (fp16 scales the loss; fp32 is a plain backward)."""
        self.amp.backward(loss, retain_graph=retain_graph)

    def grad(self, output: torch.Tensor, inputs: Any, *, allow_unused: bool = False) -> tuple[Any, ...]:
        """``torch.autograd.grad`` for perturbation and saliency gradients: true gradients in
        every precision (no parameter ``.grad`` is written)."""
        return self.amp.grad(output, inputs, allow_unused=allow_unused)

    def no_sync(self) -> AbstractContextManager[Any]:
        """Skip the DDP gradient all-reduce for auxiliary backwards (all but the last)."""
        model = self.model
        return model.no_sync() if hasattr(model, "no_sync") else nullcontext()
