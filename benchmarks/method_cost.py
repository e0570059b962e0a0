"""Measured cost per training step of every registered method vs the theory of methods.md §10.

For each method (iterating the registry, so new methods are included): a fresh builtin MiniLM,
``setup`` (timed separately: RoAST's Fisher pass, RIFT's synonym table, ...), then ``training_step``
+ the loop's hooks + an AdamW step on the same real MR batch: warm-up steps, then the median of
``--steps`` timed steps. Prints method, step time, ratio to vanilla, theoretical passes
(``passes_per_step()``), measured/theory and setup time; ``--markdown PATH`` writes the table.

    python benchmarks/method_cost.py --steps 5 --batch-size 16 --markdown cost.md

On a shared, loaded machine wall time mostly measures the other processes; ``--clock cpu``
times this process's CPU seconds instead (all threads), which is stabler there.
``--device cuda`` (or ``auto``) runs the model on a GPU and synchronises before reading the clock.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from robustsweep.config import DataConfig, ModelConfig, TrainConfig
from robustsweep.data import Task, TextSet, load_task
from robustsweep.methods import registry
from robustsweep.models import load_model
from robustsweep.train.loop import (
    build_optimizer,
    seed_everything,
    train_step,
    trainable_parameters,
)


@dataclass
class Row:
    method: str
    step_s: float | None
    theory: float
    setup_s: float
    note: str = ""


def measure(name: str, task: Task, rows: TextSet, args: argparse.Namespace) -> Row:
    """Setup time and median step time of one method with its default knobs."""
    seed_everything(0)
    adapter = load_model(ModelConfig(source=args.model), num_labels=task.num_labels,
                         max_length=args.max_length)
    adapter.core.to(args.device)
    method = registry.build(name)
    started = time.perf_counter()
    method.setup(adapter, task)
    setup_s = time.perf_counter() - started
    optimizer = build_optimizer(trainable_parameters(adapter, method), TrainConfig(lr=1e-5))
    batch = adapter.to_device(adapter.encode(rows.texts, rows.pairs, rows.labels))
    adapter.model.train()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = []
    for step in range(args.warmup + args.steps):
        started = clock()
        train_step(method, batch, [], optimizer)  # no clipping: the step's own cost only
        synchronize(args.device)
        if step >= args.warmup:
            times.append(clock() - started)
    return Row(name, statistics.median(times), method.passes_per_step(), setup_s)


def synchronize(device: str) -> None:
    """Wait for queued GPU kernels, so a step's wall time is its real time."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def pick_device(name: str) -> str:
    """``auto`` -> cuda when a GPU is visible, else cpu; anything else as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def table(rows: list[Row], markdown: bool) -> str:
    base = next((r.step_s for r in rows if r.method == "vanilla" and r.step_s), None)
    header = ["method", "step s", "x vanilla", "theory x", "measured/theory", "setup s"]
    lines = []
    for r in rows:
        if r.step_s is None:
            lines.append([r.method, "-", "-", f"{r.theory:.2f}", "-", "-"])
            continue
        ratio = r.step_s / base if base else float("nan")
        lines.append([r.method, f"{r.step_s:.3f}", f"{ratio:.2f}", f"{r.theory:.2f}",
                      f"{ratio / r.theory:.2f}", f"{r.setup_s:.1f}"])
    notes = [f"{r.method}: {r.note}" for r in rows if r.note]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out + [""] + [f"- {n}" for n in notes]) + "\n"
    widths = [max(len(x) for x in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*line) for line in lines] + notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=256,
                        help="train rows given to setup (bounds RoAST's Fisher pass)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="step timer: wall time or this process's CPU time")
    parser.add_argument("--model", default="builtin:minilm")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda if present)")
    parser.add_argument("--methods", nargs="*", help="subset of methods (default: all registered)")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    args = parser.parse_args()
    args.device = pick_device(args.device)
    torch.set_num_threads(args.threads)

    task = load_task(DataConfig(source="builtin:mr", train_size=args.train_size, eval_size=16))
    one_batch = task.train.subset(list(range(args.batch_size)))
    names = args.methods or list(registry.available())
    if "vanilla" in names:  # the baseline first
        names = ["vanilla"] + [n for n in names if n != "vanilla"]
    rows = []
    for name in names:
        try:
            row = measure(name, task, one_batch, args)
        except Exception as exc:  # noqa: BLE001 - one method failing must not hide the others
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            row = Row(name, None, registry.build(name).passes_per_step(), 0.0, f"skipped: {first}")
        rows.append(row)
        print(f"{name}: step {row.step_s if row.step_s is None else round(row.step_s, 3)} s, "
              f"setup {row.setup_s:.1f} s", flush=True)
    print()
    print(f"{args.model} on {args.device}, batch {args.batch_size}, max_length {args.max_length}, "
          f"{args.threads} threads, {args.clock} clock, median of {args.steps} steps after "
          f"{args.warmup} warm-up (setup: wall time)")
    print(table(rows, markdown=False))
    if args.markdown:
        args.markdown.write_text(table(rows, markdown=True))


if __name__ == "__main__":
    main()
