"""Clean and OOD accuracy of each method next to vanilla's, at the same budget (one job, in-process).

Each variant trains exactly as ``robustsweep train JOB --set method.name=M`` does inside its Ray
Train worker (same seeding, data, model, setup and ``train.loop.fit``), but in this process and
without Ray or MLflow, so a table of many methods or knob ablations costs only the training.
Prints, per seed, the clean accuracy, its difference to vanilla's (same seed), OOD accuracy and
training time; ``--json PATH`` appends one line per finished run, so a long table survives a
crash or a timeout.

    python benchmarks/method_accuracy.py --variant vanilla rsmi rsmi:multi_mask=1 --seeds 0 1
    python benchmarks/method_accuracy.py --set train.epochs=3 --variant vanilla roast

A variant is ``method`` or ``method:knob=value,...`` (as in early_learning.py); the default is
every registered method. ``--device auto`` trains on the GPU when there is one. ``--lora`` adds,
after each variant, the same variant with LoRA (``model.peft`` with the schema's defaults, or
``--lora-set r=16`` style overrides), so full and LoRA fine-tuning stand side by side:

    python benchmarks/method_accuracy.py --variant vanilla roast --lora
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from method_cost import pick_device
from variants import parse_variant

from robustsweep.config import JobConfig
from robustsweep.data import Task, load_task
from robustsweep.errors import RobustSweepError
from robustsweep.jobfile import load_job, validate_job
from robustsweep.methods import registry
from robustsweep.train.loop import fit, prepare_trial

BASELINE = "vanilla"


LORA_SUFFIX = "+lora"


def variant_job(job: Path, overrides: list[str], variant: str, seed: int,
                lora: dict[str, object] | None = None) -> JobConfig:
    """The job of one variant: the shared overrides, then its method, knobs and seed (validated,
    so a bad knob is one error line before anything trains); ``lora``: ``model.peft`` to set."""
    name, knobs = parse_variant(variant.removesuffix(LORA_SUFFIX))
    raw = load_job(job, [*overrides, f"seed={seed}"]).model_dump()
    raw["method"] = {"name": name, "knobs": knobs}
    if lora is not None:
        raw["model"]["peft"] = dict(lora)
    return validate_job(raw, origin=f"variant {variant!r}")


def lora_settings(items: list[str]) -> dict[str, object]:
    """``--lora-set r=16`` items -> the ``model.peft`` mapping (YAML scalars)."""
    import yaml

    settings: dict[str, object] = {"method": "lora"}
    for item in items:
        key, _, value = item.partition("=")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


def run_variant(cfg: JobConfig, task: Task, device: str) -> dict[str, Any]:
    """Train one job in-process; its final epoch's metrics, the training time and the total
    (model load, setup, training and evaluation), and the trainable-parameter share."""
    started = time.perf_counter()
    adapter, method = prepare_trial(cfg, task, device)
    params = list(adapter.core.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    state = fit(adapter, method, task, cfg, progress=None)
    final = state.history[-1]
    return {
        "trainable_share": trainable / max(1, sum(p.numel() for p in params)),
        "clean_accuracy": final["clean_accuracy"],
        "ece": final["ece"],
        **{k: v for k, v in final.items() if k.startswith("ood_accuracy/")},
        "train_s": state.wall_time_s,
        "total_s": time.perf_counter() - started,
    }


def format_row(row: dict[str, Any], base: dict[str, Any] | None, width: int) -> str:
    delta = "" if base is None else f"{100 * (row['clean_accuracy'] - base['clean_accuracy']):+6.1f}"
    ood = "  ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in row.items()
                    if k.startswith("ood_accuracy/"))
    return (f"{row['variant']:<{width}} {row['seed']:>4} {row['clean_accuracy']:>7.3f} {delta:>7} "
            f"{row['ece']:>6.3f} {row['train_s']:>8.1f} {100 * row['trainable_share']:>9.2f}%  {ood}")


def main() -> None:
    try:
        run(parse_args())
    except RobustSweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, default=Path("jobs/quickstart.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override for every variant (repeatable)")
    parser.add_argument("--variant", nargs="+", help="method or method:knob=value,... "
                        "(default: every registered method)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="append one JSON line per finished run here")
    parser.add_argument("--lora", action="store_true",
                        help="also run each variant with LoRA (model.peft), shown as VARIANT+lora")
    parser.add_argument("--lora-set", action="append", default=[], metavar="KEY=VALUE",
                        help="model.peft setting for --lora, e.g. r=16 (repeatable)")
    return parser.parse_args()


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    variants = args.variant or list(registry.available())
    if BASELINE in variants:  # the baseline first, so every later row shows its difference
        variants = [BASELINE] + [v for v in variants if v != BASELINE]
    lora = lora_settings(args.lora_set) if args.lora else None
    if lora is not None:
        variants = [x for v in variants for x in (v, v + LORA_SUFFIX)]
    width = max(len("variant"), *(len(v) for v in variants))
    header = f"{'variant':<{width}} {'seed':>4} {'clean':>7} {'vs ' + BASELINE:>7} {'ece':>6} {'train s':>8} {'trainable':>10}  ood"
    runs = {(seed, v): variant_job(args.job, args.overrides, v, seed,  # all checked up front
                                   lora if v.endswith(LORA_SUFFIX) else None)
            for seed in args.seeds for v in variants}
    tasks: dict[str, Task] = {}
    lines = []
    print(header, flush=True)
    for seed in args.seeds:
        base = None
        for variant in variants:
            cfg = runs[(seed, variant)]
            key = cfg.data.model_dump_json() + str(cfg.eval.anomaly)
            if key not in tasks:
                tasks[key] = load_task(cfg.data, cfg.eval.anomaly)
            row = {"variant": variant, "seed": seed, "device": device,
                   **run_variant(cfg, tasks[key], device)}
            if variant == BASELINE:
                base = row
            lines.append(format_row(row, base if variant != BASELINE else None, width))
            print(lines[-1], flush=True)
            if args.json:
                with args.json.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
    print(f"\n{args.job} {' '.join(args.overrides)} on {device}, {args.threads} threads")
    print(header)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
