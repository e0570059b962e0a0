"""Per-step overhead of the platform path vs a bare PyTorch loop (goal: ratio ≤ 1.05).

Platform path: ``run_trial`` -> Ray Train TorchTrainer worker -> ``fit`` with the vanilla
method's hooks, Ray progress bar, per-epoch report + checkpoint and MLflow logging.
Bare loop: the same model, tokenizer, batches (same rows, same order, dynamic padding), AdamW
and clipping, written as plain PyTorch. Both use the same number of threads; both time the
training steps only (model loading, Ray start-up and evaluation are excluded on both sides,
and reported separately for the platform).

Run:  .venv/bin/python benchmarks/overhead.py --steps 40 --batch-size 32
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

from robustsweep.data import load_task
from robustsweep.jobfile import validate_job
from robustsweep.train.loop import Sharding


def job(args: argparse.Namespace, out: Path):
    return validate_job({
        "name": "overhead", "seed": 0, "output_dir": str(out),
        "data": {"source": "builtin:mr", "train_size": args.steps * args.batch_size,
                 "eval_size": 64, "max_length": args.max_length},
        "train": {"epochs": 1, "batch_size": args.batch_size, "lr": 5e-5, "warmup_ratio": 0.0},
        "scaling": {"num_workers": 1, "cpus_per_worker": args.threads},
        "cluster": {"num_cpus": args.threads},
    })


def bare_loop(cfg, threads: int) -> float:
    """Seconds for one epoch of plain PyTorch training over the platform's exact batches."""
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
    model.train()
    started = time.perf_counter()
    for start in range(0, len(order), cfg.train.batch_size):
        rows = order[start:start + cfg.train.batch_size]
        enc = tokenizer([task.train.texts[i] for i in rows], truncation=True,
                        max_length=cfg.data.max_length, padding=True, return_tensors="pt")
        labels = torch.tensor([task.train.labels[i] for i in rows])
        loss = F.cross_entropy(model(**enc).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bare, plat, walls = [], [], []
        for i in range(args.repeats):
            cfg = job(args, Path(tmp) / f"run{i}")
            bare.append(bare_loop(cfg, args.threads))
            epoch_s, wall_s = platform_path(cfg)
            plat.append(epoch_s)
            walls.append(wall_s)
    per_bare = statistics.median(bare) / args.steps
    per_plat = statistics.median(plat) / args.steps
    print(f"\nbuiltin MiniLM, MR, batch {args.batch_size}, max_length {args.max_length}, "
          f"{args.steps} steps, {args.threads} threads, {args.repeats} alternating repeats")
    print(f"{'path':<34}{'s/step (median)':>16}{'runs (s/epoch)':>40}")
    print(f"{'bare PyTorch loop':<34}{per_bare:>16.4f}{[round(b, 2) for b in bare]!s:>40}")
    print(f"{'platform (Ray Train + hooks + log)':<34}{per_plat:>16.4f}{[round(p, 2) for p in plat]!s:>40}")
    print(f"ratio platform / bare: {per_plat / per_bare:.3f}  (goal <= 1.05)")
    print(f"whole-trial wall time incl. Ray start-up, model load, eval, checkpoint: "
          f"{[round(w, 1) for w in walls]} s")


if __name__ == "__main__":
    main()
