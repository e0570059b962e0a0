"""The training loop: one plain function, readable top to bottom, no Ray inside.

``fit`` runs the same on a laptop, in a test and inside a Ray Train worker; the caller passes
the rank/world size and an ``on_epoch_end`` callback (Ray report + checkpoint + MLflow).
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from robustsweep.config import JobConfig, TrainConfig
from robustsweep.data import Task, TextSet
from robustsweep.errors import RobustSweepError
from robustsweep.evaluate.suite import clean_metrics, proxy_metrics
from robustsweep.methods.base import RobustMethod
from robustsweep.models import EncoderAdapter
from robustsweep.precision import FP32, MixedPrecision
from robustsweep.train.checkpoints import restore_rng_state, rng_state

Batch = dict[str, torch.Tensor]

StateFn = Callable[[], dict[str, Any]]


class EpochCallback(Protocol):
    def __call__(self, epoch: int, metrics: dict[str, float], state_fn: StateFn) -> None: ...


class ProgressFactory(Protocol):
    def __call__(self, total: int, desc: str) -> Any: ...


class StepCallback(Protocol):
    """Receives step-level metrics every ``train.log_every_steps`` optimizer steps (rank 0)."""

    def __call__(self, step: int, metrics: dict[str, float]) -> None: ...


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(params: list[tuple[str, torch.nn.Parameter]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with no weight decay on biases and LayerNorm weights (BERT convention)."""
    decay, no_decay = [], []
    for name, param in params:
        if not param.requires_grad:
            continue
        skip = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name or param.ndim < 2
        (no_decay if skip else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak lr, then linear decay to zero."""
    warmup = round(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def trainable_parameters(adapter: EncoderAdapter, method: RobustMethod) -> list[tuple[str, torch.nn.Parameter]]:
    """The encoder's parameters plus the method's own (RIFT's heads, InfoBERT's critic), named
    so that ``build_optimizer`` can group them."""
    return list(adapter.core.named_parameters()) + [
        (f"method.{i}", p) for i, p in enumerate(method.extra_parameters())
    ]


def prepare_trial(cfg: JobConfig, task: Task, device: torch.device | str) -> tuple[EncoderAdapter, RobustMethod]:
    """How every trial starts: seeded, the pretrained model with a fresh head on ``device``, and
    the configured method set up on it (the Ray Train worker and the benchmarks share this)."""
    from robustsweep.methods import build
    from robustsweep.models import load_model

    seed_everything(cfg.seed)
    adapter = load_model(cfg.model, task.num_labels, cfg.data.max_length, cfg.data.lowercase,
                         task.label_names)
    adapter.core.to(device)
    method = build(cfg.method.name, cfg.method.knobs)
    method.setup(adapter, task)
    return adapter, method


def train_step(method: RobustMethod, batch: Batch | Sequence[Batch], params: list[torch.Tensor],
               optimizer: torch.optim.Optimizer, scheduler: Any | None = None,
               max_grad_norm: float | None = None, *, amp: MixedPrecision = FP32,
               record_grad_norm: bool = False) -> dict[str, float]:
    """One optimisation step with the method's hooks around it, as every caller must run it.

    ``batch`` is one batch or the micro-batches of one accumulated step: ``training_step`` runs
    on each under ``amp``'s autocast (all but the last without the DDP all-reduce), and the
    summed gradients are divided by their number, so k micro-batches of b/k rows give the
    gradient of one batch of b. Then: unscale (fp16; an overflowed step is skipped and counted
    in ``amp_skipped``), ``before_optimizer_step`` (e.g. RoAST's gradient mask), clipping of the
    method's ``clipped_parameters`` when it allows clipping, the update,
    ``after_optimizer_step``, and cleared gradients. Returns the micro-batch mean of each term
    (plus ``grad_norm``, the pre-clip norm, when ``record_grad_norm``).
    """
    micro = [batch] if isinstance(batch, dict) else list(batch)
    sums: dict[str, float] = defaultdict(float)
    for i, part in enumerate(micro):
        sync = nullcontext() if i == len(micro) - 1 else method.no_sync()
        with sync, amp.autocast():
            for key, value in method.training_step(part).items():
                sums[key] += float(value)
    terms = {key: value / len(micro) for key, value in sums.items()} if len(micro) > 1 else dict(sums)
    if len(micro) > 1:
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.div_(len(micro))
    finite = amp.unscale_(optimizer)
    if amp.scaler is not None:
        terms["amp_skipped"] = 0.0 if finite else 1.0
    if finite:
        method.before_optimizer_step()
        clipped = method.clipped_parameters(params)
        if max_grad_norm and method.supports_grad_clipping:
            norm = torch.nn.utils.clip_grad_norm_(clipped, max_grad_norm)
        elif record_grad_norm:
            norm = torch.nn.utils.get_total_norm([p.grad for p in clipped if p.grad is not None])
        if record_grad_norm:
            terms["grad_norm"] = float(norm)
    amp.step(optimizer)
    if scheduler is not None:
        scheduler.step()
    if finite:
        method.after_optimizer_step()
    optimizer.zero_grad(set_to_none=True)
    return terms


@dataclass
class Sharding:
    """Which rows of the train set this rank sees in an epoch (same step count on every rank)."""

    seed: int
    rank: int = 0
    world_size: int = 1

    def epoch_indices(self, n_rows: int, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n_rows, generator=generator).tolist()
        per_rank = n_rows // self.world_size
        return order[self.rank * per_rank:(self.rank + 1) * per_rank]


def iter_batches(adapter: EncoderAdapter, rows: TextSet, indices: list[int], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Tokenized batches padded to their own longest text (dynamic padding)."""
    for start in range(0, len(indices), batch_size):
        part = rows.subset(indices[start:start + batch_size])
        yield adapter.to_device(adapter.encode(part.texts, part.pairs, part.labels))


@dataclass
class FitState:
    """What a checkpoint restores (plus model/optimizer/scheduler/method state dicts)."""

    epoch: int = 0  # epochs completed
    global_step: int = 0
    cost_passes: float = 0.0
    wall_time_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


class TrainingDiverged(RobustSweepError):
    """The loss became NaN or infinite: the trial fails (a diverged trial is never a result)."""


class DivergenceGuard:
    """Stops a trial within a few steps of its loss turning NaN/inf.

    A Python float (what ``training_step`` returns) is checked at once, for free. A tensor on
    an accelerator is folded into one on-device flag and read every ``sync_every`` steps, so the
    guard adds no per-step host sync there.
    """

    def __init__(self, sync_every: int = 16, defer_cpu_tensors: bool = False) -> None:
        self.sync_every = max(1, sync_every)
        self.defer_cpu_tensors = defer_cpu_tensors  # tests: the accelerator path on a CPU
        self._flag: torch.Tensor | None = None

    def check(self, loss: float | torch.Tensor, step: int, epoch: int) -> None:
        """Raise ``TrainingDiverged`` naming the step and the loss once a bad loss is seen."""
        if isinstance(loss, torch.Tensor) and (loss.device.type != "cpu" or self.defer_cpu_tensors):
            self._check_on_device(loss.detach(), step, epoch)
            return
        value = float(loss)
        if not math.isfinite(value):
            raise self._error(value, step, epoch)

    def flush(self, step: int, epoch: int) -> None:
        """Read the pending on-device flag (end of an epoch: never report a diverged epoch)."""
        if self._flag is not None and not bool(self._flag):
            raise self._error(float("nan"), step, epoch, approximate=True)

    def _check_on_device(self, loss: torch.Tensor, step: int, epoch: int) -> None:
        finite = torch.isfinite(loss).all()
        self._flag = finite if self._flag is None else self._flag & finite
        if step % self.sync_every == 0:
            self.flush(step, epoch)

    @staticmethod
    def _error(value: float, step: int, epoch: int, approximate: bool = False) -> TrainingDiverged:
        where = f"by step {step}" if approximate else f"at step {step}"
        return TrainingDiverged(
            f"training diverged: loss is {value} {where} (epoch {epoch}); lower train.lr"
        )


class StepLog:
    """Window means of a step's terms, handed to the callback every ``every`` optimizer steps.

    Names: ``step/train_loss``, ``step/lr`` (after the step), ``step/grad_norm`` (pre-clip) and
    ``step/<term>`` for the method's terms, at the global step; the callback sends one batch
    per flush. The window restarts at every flush, so a curve point is the mean of its steps.
    """

    def __init__(self, every: int | None, callback: StepCallback | None) -> None:
        self.every = every if callback is not None else None
        self.callback = callback
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    @property
    def enabled(self) -> bool:
        return self.every is not None

    def add(self, step: int, terms: dict[str, float], lr: float) -> None:
        if self.every is None or self.callback is None:
            return
        for key, value in terms.items():
            name = "train_loss" if key == "loss" else key
            self._sums[name] += float(value)
            self._counts[name] += 1
        if step % self.every == 0:
            metrics = {f"step/{k}": v / self._counts[k] for k, v in self._sums.items()}
            self.callback(step, {**metrics, "step/lr": lr})
            self._sums.clear()
            self._counts.clear()


def _mean_across_ranks(values: dict[str, float], world_size: int) -> dict[str, float]:
    if world_size <= 1 or not torch.distributed.is_initialized():
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return {k: float(v) / world_size for k, v in zip(keys, tensor.tolist())}


def _default_progress(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)


def fit(
    adapter: EncoderAdapter,
    method: RobustMethod,
    task: Task,
    cfg: JobConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    resume: dict[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: ProgressFactory | None = _default_progress,
    plot_dir: Path | None = None,
    on_steps: StepCallback | None = None,
) -> FitState:
    """Fine-tune ``adapter.model`` with ``method`` for ``cfg.train.epochs``; return the final state.

    ``method.setup`` must already have run (so DDP can wrap the extra parameters too).
    ``on_steps`` gets the step-level metrics every ``train.log_every_steps`` steps (rank 0).
    """
    tcfg = cfg.train
    sharding = Sharding(cfg.seed, rank, world_size)
    per_rank_batch = max(1, tcfg.batch_size // world_size)
    rows_per_rank = len(task.train) // world_size
    accumulation = tcfg.grad_accumulation_steps
    steps_per_epoch = math.ceil(math.ceil(rows_per_rank / per_rank_batch) / accumulation)
    if tcfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tcfg.max_steps_per_epoch)
    named = trainable_parameters(adapter, method)
    params = [p for _, p in named]
    optimizer = build_optimizer(named, tcfg)
    scheduler = linear_schedule(optimizer, steps_per_epoch * tcfg.epochs, tcfg.warmup_ratio)
    amp = MixedPrecision(tcfg.precision, adapter.device.type)
    method.amp = amp
    state = FitState()
    if resume is not None:
        adapter.load_checkpoint_state(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        method.load_state_dict(resume["method"])
        amp.load_state_dict(resume.get("precision", {}))
        restore_rng_state(resume)
        state = FitState(**resume["fit_state"])

    def snapshot() -> dict[str, Any]:
        return {
            "model": adapter.checkpoint_state(),  # LoRA: adapter + head only
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "method": method.state_dict(),
            **({"precision": amp.state_dict()} if amp.scaler is not None else {}),
            **rng_state(),
            "fit_state": vars(state).copy(),
        }

    guard = DivergenceGuard()
    step_log = StepLog(tcfg.log_every_steps, on_steps if rank == 0 else None)
    adapter.model.train()
    for epoch in range(state.epoch + 1, tcfg.epochs + 1):
        indices = sharding.epoch_indices(len(task.train), epoch)
        batches = iter_batches(adapter, task.train, indices, per_rank_batch)
        sums: dict[str, float] = defaultdict(float)
        bar = progress(steps_per_epoch, f"epoch {epoch}/{tcfg.epochs}") if progress and rank == 0 else None
        started = time.perf_counter()
        for step in range(steps_per_epoch):
            micro = list(itertools.islice(batches, accumulation))
            terms = train_step(method, micro[0] if accumulation == 1 else micro, params, optimizer,
                               scheduler, tcfg.max_grad_norm, amp=amp,
                               record_grad_norm=step_log.enabled)
            guard.check(terms["loss"], state.global_step + 1, epoch)
            state.global_step += 1
            step_log.add(state.global_step, terms, scheduler.get_last_lr()[0])
            terms.pop("grad_norm", None)  # step-level only: epoch metrics stay as they were
            for key, value in terms.items():
                sums[key] += float(value)
            rows = sum(len(part["labels"]) for part in micro)
            state.cost_passes += method.passes_per_step() * rows * world_size
            if bar is not None:
                bar.update(1)
                if (step + 1) % tcfg.progress_every == 0 or step + 1 == steps_per_epoch:
                    bar.set_description(f"epoch {epoch}/{tcfg.epochs} loss {sums['loss'] / (step + 1):.4f}")
        guard.flush(state.global_step, epoch)
        if bar is not None:
            bar.close()
        epoch_time = time.perf_counter() - started
        method.on_epoch_end(epoch)
        state.wall_time_s += epoch_time
        train_terms = _mean_across_ranks({k: v / steps_per_epoch for k, v in sums.items()}, world_size)
        epoch_metrics: dict[str, float] = {
            "train_loss": train_terms.pop("loss"),
            **{f"train/{k}": v for k, v in train_terms.items()},
            "epoch_time_s": epoch_time,
            "cost/fwd_bwd_passes": state.cost_passes,
            "cost/train_time_s": state.wall_time_s,
            "lr": scheduler.get_last_lr()[0],
        }
        if rank == 0:
            final = epoch == tcfg.epochs
            epoch_metrics.update(
                clean_metrics(method, task, cfg.eval, tcfg.eval_batch_size,
                              plot_dir=plot_dir if final else None)
            )
            if cfg.eval.proxy_attack and plot_dir is not None:  # cheap per-epoch robustness (ASHA)
                epoch_metrics.update(proxy_metrics(method, task, cfg, plot_dir / f"proxy_epoch_{epoch:03d}"))
        state.epoch = epoch
        state.history.append({"epoch": float(epoch), **epoch_metrics})
        if on_epoch_end is not None:
            on_epoch_end(epoch, epoch_metrics, snapshot)
        adapter.model.train()
    return state
