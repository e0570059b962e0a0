"""How fast the clean CE falls in a method's first steps, next to vanilla's (knob ablations).

A regulariser that holds the model flat (a strong KL to an adversary, a masked input) shows up
as a clean CE that stays near ln 2 while vanilla's falls. This runs each variant in-process on
the quickstart setting (builtin MiniLM, MR, batch 32, lr 1e-4 with 6 % warm-up and linear decay
over one 125-step epoch, seed 0, the same batches for every variant) for ``--steps`` steps and
prints the mean clean CE per window of ``--every`` steps.

    python benchmarks/early_learning.py --steps 40 \
        --variant vanilla rift:ascc_steps=2,w_kl=0 rift:ascc_steps=2,w_mi=0

A variant is ``method`` or ``method:knob=value,knob=value`` (values parsed as YAML scalars).
Methods whose step reports a ``ce`` term are scored on it, the others on their loss.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import math

import torch
from variants import parse_variant

from robustsweep.config import DataConfig, ModelConfig, TrainConfig
from robustsweep.data import load_task
from robustsweep.methods import registry
from robustsweep.models import load_model
from robustsweep.train.loop import (
    build_optimizer,
    linear_schedule,
    seed_everything,
    train_step,
    trainable_parameters,
)

EPOCH_STEPS = 125  # 4,000 rows / batch 32: the schedule of jobs/quickstart.yaml


def clean_ce_curve(name: str, knobs: dict[str, object], args: argparse.Namespace) -> list[float]:
    """Per-step clean CE (or loss) of ``name`` with ``knobs`` over the first ``args.steps``."""
    seed_everything(args.seed)
    task = load_task(DataConfig(source="builtin:mr", train_size=4000, eval_size=16))
    adapter = load_model(ModelConfig(source="builtin:minilm"), num_labels=2, max_length=64)
    method = registry.build(name, knobs)
    method.setup(adapter, task)
    named = trainable_parameters(adapter, method)
    train = TrainConfig(lr=1e-4, batch_size=32, warmup_ratio=0.06, epochs=1)
    optimizer = build_optimizer(named, train)
    scheduler = linear_schedule(optimizer, EPOCH_STEPS, train.warmup_ratio)
    params = [p for _, p in named]
    order = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(args.seed))
    adapter.model.train()
    curve = []
    for step in range(args.steps):
        rows = task.train.subset(order[step * 32:(step + 1) * 32].tolist())
        batch = adapter.to_device(adapter.encode(rows.texts, rows.pairs, rows.labels))
        terms = train_step(method, batch, params, optimizer, scheduler, train.max_grad_norm)
        curve.append(float(terms.get("ce", terms["loss"])))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs="+", default=["vanilla"],
                        help="method or method:knob=value,... (vanilla first is a good idea)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    windows = [(s, min(s + args.every, args.steps)) for s in range(0, args.steps, args.every)]
    header = "".join(f"{f'steps {a + 1}-{b}':>14}" for a, b in windows)
    width = max(len("variant"), *(len(v) for v in args.variant)) + 2
    lines = []
    for text in args.variant:
        curve = clean_ce_curve(*parse_variant(text), args)
        cells = "".join(f"{sum(curve[a:b]) / (b - a):>14.4f}" for a, b in windows)
        lines.append(f"{text:<{width}}{cells}")
        print(lines[-1], flush=True)
    print(f"\nmean clean CE per window (ln 2 = {math.log(2):.4f}), seed {args.seed}, "
          f"{args.threads} threads")
    print(f"{'variant':<{width}}{header}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
