"""Per-step overhead of the platform path vs a bare PyTorch loop (goal: ratio ≤ 1.05).

Platform path: ``run_trial`` -> Ray Train TorchTrainer worker -> ``fit`` with the vanilla
method's hooks, Ray progress bar, per-epoch report + checkpoint and MLflow logging.
Bare loop: the same model, tokenizer, batches (same rows, same order, dynamic padding), AdamW
and clipping, written as plain PyTorch. Both use the same number of threads; both time the
training steps only (model loading, Ray start-up and evaluation are excluded on both sides,
and reported separately for the platform).

``--precision fp32 bf16`` (default fp32; fp16 too) runs both paths under each listed precision,
alternating with the repeats: the platform with the job's ``train.precision``, the bare loop with
its forward in ``torch.autocast(dtype=bfloat16 | float16)`` (fp16 with a ``GradScaler``, as the
platform does). One row per precision (both step times, platform/bare), then the bf16 (fp16)
speed-up ``fp32 step / low-precision step`` of each path.

``--accumulation K`` adds, per precision, the platform path with ``train.batch_size`` B/K and
``train.grad_accumulation_steps`` K: the same rows, the same optimizer steps and the same global
batch B as the plain platform row, so ``accumulated / plain`` is what accumulation costs per
optimizer step (smaller matmuls, K forward/backward calls instead of one).

Run:  .venv/bin/python benchmarks/overhead.py --steps 40 --batch-size 32
      .venv/bin/python benchmarks/overhead.py --steps 40 --batch-size 32 --precision fp32 bf16
      .venv/bin/python benchmarks/overhead.py --steps 40 --batch-size 32 --accumulation 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.nn.functional as F

PRECISIONS = ("fp32", "bf16", "fp16")
LOW_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

from robustsweep.data import load_task
from robustsweep.jobfile import validate_job
from robustsweep.train.loop import Sharding


def job(args: argparse.Namespace, out: Path, precision: str = "fp32", accumulation: int = 1):
    """The benchmark's job: ``args.steps`` optimizer steps of global batch ``args.batch_size``
    (micro-batches of batch_size / accumulation)."""
    return validate_job({
        "name": "overhead", "seed": 0, "output_dir": str(out),
        "data": {"source": "builtin:mr", "train_size": args.steps * args.batch_size,
                 "eval_size": 64, "max_length": args.max_length},
        "train": {"epochs": 1, "batch_size": args.batch_size // accumulation, "lr": 5e-5,
                  "warmup_ratio": 0.0, "precision": precision,
                  "grad_accumulation_steps": accumulation},
        "scaling": {"num_workers": 1, "cpus_per_worker": args.threads},
        "cluster": {"num_cpus": args.threads},
    })


def bare_loop(cfg, threads: int) -> float:
    """Seconds for one epoch of plain PyTorch training over the platform's exact batches, in
    ``cfg.train.precision`` (autocast around the forward; fp16 with loss scaling)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from robustsweep.models import resolve_model_path

    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    path = resolve_model_path(cfg.model.source)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    task = load_task(cfg.data)
    order = Sharding(cfg.seed).epoch_indices(len(task.train), epoch=1)
    precision = cfg.train.precision
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    model.train()
    started = time.perf_counter()
    for start in range(0, len(order), cfg.train.batch_size):
        rows = order[start:start + cfg.train.batch_size]
        enc = tokenizer([task.train.texts[i] for i in rows], truncation=True,
                        max_length=cfg.data.max_length, padding=True, return_tensors="pt")
        labels = torch.tensor([task.train.labels[i] for i in rows])
        if precision in LOW_DTYPES:
            with torch.autocast("cpu", dtype=LOW_DTYPES[precision]):
                logits = model(**enc).logits
        else:
            logits = model(**enc).logits
        loss = F.cross_entropy(logits.float(), labels)
        if scaler is None:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def platform_path(cfg) -> tuple[float, float]:
    """(seconds of the training epoch inside the Ray worker, wall seconds of the whole trial)."""
    from robustsweep.train.trial import run_trial

    started = time.perf_counter()
    result = run_trial(cfg)
    return result.metrics["epoch_time_s"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="Alternating runs of each path")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"],
                        help="training precisions, each run on both paths (default: fp32)")
    parser.add_argument("--accumulation", type=int, default=1, metavar="K",
                        help="also run the platform with micro-batches of batch-size/K, "
                             "accumulated over K (same global batch; default 1: not run)")
    args = parser.parse_args()
    if args.accumulation < 1 or args.batch_size % args.accumulation:
        parser.error(f"--accumulation {args.accumulation}: expected a divisor of --batch-size "
                     f"{args.batch_size}")
    precisions = list(dict.fromkeys(args.precision))
    bare: dict[str, list[float]] = {p: [] for p in precisions}
    plat: dict[str, list[float]] = {p: [] for p in precisions}
    walls: dict[str, list[float]] = {p: [] for p in precisions}
    accum: dict[str, list[float]] = {p: [] for p in precisions}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for precision in precisions:  # alternating, so load drifts hit every row alike
                cfg = job(args, Path(tmp) / f"run{i}-{precision}", precision)
                bare[precision].append(bare_loop(cfg, args.threads))
                epoch_s, wall_s = platform_path(cfg)
                plat[precision].append(epoch_s)
                walls[precision].append(wall_s)
                if args.accumulation > 1:
                    cfg = job(args, Path(tmp) / f"run{i}-{precision}-acc", precision,
                              args.accumulation)
                    accum[precision].append(platform_path(cfg)[0])
    per_bare = {p: statistics.median(bare[p]) / args.steps for p in precisions}
    per_plat = {p: statistics.median(plat[p]) / args.steps for p in precisions}
    print(f"\nbuiltin MiniLM, MR, batch {args.batch_size}, max_length {args.max_length}, "
          f"{args.steps} steps, {args.threads} threads, {args.repeats} alternating repeats, "
          f"precision {' '.join(precisions)}")
    print(f"{'precision':<10}{'bare s/step':>12}{'platform s/step':>16}{'platform/bare':>14}"
          f"{'bare runs (s/epoch)':>28}{'platform runs (s/epoch)':>28}")
    for p in precisions:
        print(f"{p:<10}{per_bare[p]:>12.4f}{per_plat[p]:>16.4f}{per_plat[p] / per_bare[p]:>14.3f}"
              f"{[round(b, 2) for b in bare[p]]!s:>28}{[round(x, 2) for x in plat[p]]!s:>28}")
    print("goal: platform/bare <= 1.05 (medians of the runs)")
    if "fp32" in precisions:
        for p in precisions:
            if p != "fp32":
                print(f"{p} speed-up (fp32 step / {p} step): bare {per_bare['fp32'] / per_bare[p]:.2f}x, "
                      f"platform {per_plat['fp32'] / per_plat[p]:.2f}x")
    if args.accumulation > 1:
        k = args.accumulation
        print(f"accumulation {k} (micro-batch {args.batch_size // k}, global {args.batch_size}), "
              "platform s per optimizer step:")
        for p in precisions:
            per_acc = statistics.median(accum[p]) / args.steps
            print(f"  {p:<8}plain {per_plat[p]:.4f}  accumulated {per_acc:.4f}  "
                  f"accumulated/plain {per_acc / per_plat[p]:.3f}  "
                  f"runs {[round(x, 2) for x in accum[p]]}")
    print("whole-trial wall time incl. Ray start-up, model load, eval, checkpoint: "
          + ", ".join(f"{p} {[round(w, 1) for w in walls[p]]} s" for p in precisions))


if __name__ == "__main__":
    main()
