"""Measured cost per training step of every registered method vs the theory of methods.md §10.

For each method (iterating the registry, so new methods are included): a fresh builtin MiniLM,
``setup`` (timed separately: RoAST's Fisher pass, RIFT's synonym table, ...), then ``train_step``
(``training_step`` + the loop's hooks + an AdamW step) on the same real MR batch, under every
``--precision`` (fp32 | bf16 | fp16, default fp32 and bf16; the loop's ``MixedPrecision``, as
``train.precision`` sets it). The precisions of one method take turns step by step on the same
model, so a change of load hits them alike: warm-up steps, then the median of ``--steps`` timed
steps per precision. Prints per method the step time under each precision, the ratio to vanilla
(fp32), the theoretical passes (``passes_per_step()``), measured/theory (fp32), the bf16 (and
fp16) speed-up ``fp32 step / low-precision step`` and the setup time; ``--markdown PATH`` writes
the table.

    python benchmarks/method_cost.py --steps 5 --batch-size 16 --markdown cost.md
    python benchmarks/method_cost.py --precision fp32 bf16 fp16 --device cuda --methods vanilla pgd

``--lora`` measures every method twice, full fine-tuning (``METHOD``) and LoRA (``METHOD+lora``,
``model.peft`` with the schema's defaults or ``--lora-set r=16`` style overrides, as in
method_accuracy.py), one after the other, and adds the columns: trainable share of all encoder
parameters, LoRA's step over full fine-tuning's (fp32) and peak memory. A LoRA row's
``x vanilla`` and measured/theory are against ``vanilla+lora``.

    python benchmarks/method_cost.py --lora --lora-set r=16 --methods vanilla roast --device cuda

Peak memory (columns on CUDA, and with ``--lora``) is ``torch.cuda.max_memory_allocated`` over a
precision's timed steps (reset before each step: weights, optimizer state, gradients and
activations of the one model on the GPU); on CPU it shows ``-`` and the run ends with the
process's peak RSS instead: ``--lora --only full`` and ``--lora --only lora`` in two processes
compare full fine-tuning's memory with LoRA's.

    python benchmarks/method_cost.py --methods vanilla --lora --only lora --precision fp32

On a shared, loaded machine wall time mostly measures the other processes; ``--clock cpu``
times this process's CPU seconds instead (all threads), which is stabler there.
``--device cuda`` (or ``auto``) runs the model on a GPU and synchronises before reading the clock.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import gc
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robustsweep.config import DataConfig, ModelConfig, PeftConfig, TrainConfig
from robustsweep.data import Task, TextSet, load_task
from robustsweep.errors import first_line
from robustsweep.methods import registry
from robustsweep.models import load_model
from robustsweep.precision import MixedPrecision
from robustsweep.train.loop import (
    build_optimizer,
    seed_everything,
    train_step,
    trainable_parameters,
)

PRECISIONS = ("fp32", "bf16", "fp16")
REFERENCE = "fp32"  # x vanilla, measured/theory and the speed-ups are read in fp32
LORA_SUFFIX = "+lora"
MIB = 2 ** 20


@dataclass
class Row:
    method: str  # the registry name, plus LORA_SUFFIX for a LoRA measurement
    theory: float
    setup_s: float = 0.0
    step_s: dict[str, float] = field(default_factory=dict)  # precision -> median step seconds
    peak_bytes: dict[str, int] = field(default_factory=dict)  # precision -> peak (CUDA only)
    trainable_share: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def lora(self) -> bool:
        return self.method.endswith(LORA_SUFFIX)


def measure(name: str, task: Task, rows: TextSet, args: argparse.Namespace,
            peft: PeftConfig | None = None) -> Row:
    """Setup time, trainable share and, per precision, the median step time (and CUDA peak
    memory) of one method with its default knobs; ``peft``: build the model with LoRA."""
    seed_everything(0)
    adapter = load_model(ModelConfig(source=args.model, peft=peft), num_labels=task.num_labels,
                         max_length=args.max_length)
    adapter.core.to(args.device)
    method = registry.build(name)
    row = Row(name + (LORA_SUFFIX if peft is not None else ""), method.passes_per_step())
    params = list(adapter.core.parameters())
    row.trainable_share = (sum(p.numel() for p in params if p.requires_grad)
                           / max(1, sum(p.numel() for p in params)))
    started = time.perf_counter()
    method.setup(adapter, task)
    row.setup_s = time.perf_counter() - started
    optimizer = build_optimizer(trainable_parameters(adapter, method), TrainConfig(lr=1e-5))
    batch = adapter.to_device(adapter.encode(rows.texts, rows.pairs, rows.labels))
    adapter.model.train()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    device_type = torch.device(args.device).type
    amps = {p: MixedPrecision(p, device_type) for p in args.precision}
    times: dict[str, list[float]] = {p: [] for p in args.precision}
    peaks: dict[str, int] = {}
    for step in range(args.warmup + args.steps):
        for precision, amp in list(amps.items()):  # the precisions take turns, step by step
            method.amp = amp
            if device_type == "cuda":
                torch.cuda.reset_peak_memory_stats(args.device)
            try:
                started = clock()
                train_step(method, batch, [], optimizer, amp=amp)  # no clipping: the step only
                synchronize(args.device)
                elapsed = clock() - started
            except Exception as exc:  # noqa: BLE001 - one precision failing must not hide the others
                row.notes.append(f"{precision} skipped: {first_line(exc)}")
                del amps[precision]
                optimizer.zero_grad(set_to_none=True)
                continue
            if step >= args.warmup:
                times[precision].append(elapsed)
                if device_type == "cuda":
                    peaks[precision] = max(peaks.get(precision, 0),
                                           int(torch.cuda.max_memory_allocated(args.device)))
    row.step_s = {p: statistics.median(t) for p, t in times.items() if t and p in amps}
    row.peak_bytes = {p: b for p, b in peaks.items() if p in row.step_s}
    return row


def release(device: str) -> None:
    """Free the last measurement's model, so the next one's CUDA peak is its own."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def synchronize(device: str) -> None:
    """Wait for queued GPU kernels, so a step's wall time is its real time."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def pick_device(name: str) -> str:
    """``auto`` -> cuda when a GPU is visible, else cpu; anything else as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def lora_config(items: list[str]) -> PeftConfig:
    """``--lora-set r=16`` items -> ``model.peft`` (YAML scalars; the schema's defaults else)."""
    import yaml

    settings: dict[str, object] = {"method": "lora"}
    for item in items:
        key, _, value = item.partition("=")
        settings[key.strip()] = yaml.safe_load(value)
    return PeftConfig.model_validate(settings)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def table(rows: list[Row], precisions: list[str], markdown: bool, lora: bool = False,
          cuda: bool = False) -> str:
    """One line per measurement; the precisions (and with ``lora`` full vs LoRA) side by side."""
    ref = REFERENCE if REFERENCE in precisions else precisions[0]
    low = [p for p in precisions if p != REFERENCE] if REFERENCE in precisions else []
    header = ["method", *(f"{p} step s" for p in precisions), f"x vanilla ({ref})", "theory x",
              f"measured/theory ({ref})", *(f"{p} speed-up" for p in low)]
    if lora:
        header += ["trainable %", f"lora/full ({ref})"]
    if lora or cuda:
        header += [f"{p} peak MiB" for p in precisions]
    header.append("setup s")
    base = {False: None, True: None}
    for r in rows:
        if r.method.removesuffix(LORA_SUFFIX) == "vanilla":
            base[r.lora] = r.step_s.get(ref)
    full = {r.method: r for r in rows if not r.lora}
    lines = []
    for r in rows:
        step = r.step_s.get(ref)
        x = ratio(step, base[r.lora])
        line = [r.method, *(fmt(r.step_s.get(p), ".4f") for p in precisions), fmt(x, ".2f"),
                f"{r.theory:.2f}", fmt(ratio(x, r.theory), ".2f"),
                *(fmt(ratio(r.step_s.get(REFERENCE), r.step_s.get(p)), ".2f") for p in low)]
        if lora:
            other = full.get(r.method.removesuffix(LORA_SUFFIX)) if r.lora else None
            line += [fmt(None if r.trainable_share is None else 100 * r.trainable_share, ".2f"),
                     fmt(ratio(step, other.step_s.get(ref)) if other else None, ".2f")]
        if lora or cuda:
            line += [fmt(r.peak_bytes[p] / MIB if cuda and p in r.peak_bytes else None, ".0f")
                     for p in precisions]
        line.append(f"{r.setup_s:.1f}" if r.step_s else "-")
        lines.append(line)
    notes = [f"{r.method}: {n}" for r in rows for n in r.notes]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out + [""] + [f"- {n}" for n in notes]) + "\n"
    widths = [max(len(x) for x in col) for col in zip(header, *lines, strict=True)]
    form = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([form.format(*header)] + [form.format(*line) for line in lines] + notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5,
                        help="timed steps per method and precision (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (each precision)")
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
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32", "bf16"],
                        help="training-step precisions, measured in turns (default: fp32 bf16)")
    parser.add_argument("--lora", action="store_true",
                        help="also measure each method with LoRA (model.peft), as METHOD+lora")
    parser.add_argument("--lora-set", action="append", default=[], metavar="KEY=VALUE",
                        help="model.peft setting for --lora, e.g. r=16 or alpha=32 (repeatable)")
    parser.add_argument("--only", choices=["full", "lora"],
                        help="with --lora: measure one variant only (one process per variant "
                             "makes the CPU peak RSS printed at the end that variant's)")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    args = parser.parse_args()
    if args.only and not args.lora:
        parser.error("--only picks a variant of --lora: add --lora")
    args.device = pick_device(args.device)
    args.precision = list(dict.fromkeys(args.precision))  # unique, in the given order
    torch.set_num_threads(args.threads)
    peft = lora_config(args.lora_set) if args.lora else None  # a bad setting fails before any work

    task = load_task(DataConfig(source="builtin:mr", train_size=args.train_size, eval_size=16))
    one_batch = task.train.subset(list(range(args.batch_size)))
    names = args.methods or list(registry.available())
    if "vanilla" in names:  # the baseline first
        names = ["vanilla"] + [n for n in names if n != "vanilla"]
    variants = {"full": [None], "lora": [peft]}.get(args.only, [None, peft]) if args.lora else [None]
    rows = []
    for name in names:
        for variant in variants:
            try:
                row = measure(name, task, one_batch, args, variant)
            except Exception as exc:  # noqa: BLE001 - one method failing must not hide the others
                row = Row(name + (LORA_SUFFIX if variant is not None else ""),
                          registry.build(name).passes_per_step(), notes=[f"skipped: {first_line(exc)}"])
            release(args.device)
            rows.append(row)
            steps = ", ".join(f"{p} {s:.4f} s" for p, s in row.step_s.items()) or "no step"
            print(f"{row.method}: {steps}, setup {row.setup_s:.1f} s", flush=True)
    print()
    lora_note = (f", LoRA r={peft.r} alpha={peft.alpha:g} dropout={peft.dropout:g}"
                 if peft is not None else "")
    print(f"{args.model} on {args.device}, batch {args.batch_size}, max_length {args.max_length}, "
          f"{args.threads} threads, {args.clock} clock, median of {args.steps} steps after "
          f"{args.warmup} warm-up per precision ({' '.join(args.precision)} in turns){lora_note} "
          f"(setup: wall time)")
    cuda = args.device.startswith("cuda")
    print(table(rows, args.precision, markdown=False, lora=args.lora, cuda=cuda))
    if args.markdown:
        args.markdown.write_text(table(rows, args.precision, markdown=True, lora=args.lora, cuda=cuda))
    if not cuda:  # the process's high-water mark: weights, gradients, optimizer state, activations
        print(f"process peak RSS: {peak_rss_mib():.0f} MiB (all rows of this run)")


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
