"""GPU check: one script for a lent accelerator machine (one ~8-minute call, no network).

Needs torch + transformers (and TextAttack for the attack part); never Ray or MLflow: training
goes through the in-process path (``train.loop.prepare_trial`` + ``fit``, no tracking) and the
attack through ``run_profile`` with one in-process worker. For every method it runs a short
fp32 and a short bf16 training run on the builtin encoder (step time, peak memory), then
attacks one fp32 vanilla victim with stock TextAttack, with ours in fp32 and with ours in bf16
(seconds, speed-ups, agreement of outcome and perturbed text). Results go to one JSON file
(``--out``), rewritten after every row so a run cut short still leaves what it measured.

  python benchmarks/gpu_check.py --out gpu_check.json                  # everything, on cuda
  python benchmarks/gpu_check.py --device cpu --methods vanilla pgd --steps 2 --attack-examples 1

Each training run sets its precision with the job override ``train.precision=fp32|bf16`` (the
loop's autocast; weights, optimizer, logits and evaluation stay fp32); each row records the
``train_precision`` its job actually had.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any

import torch

PRECISIONS = ("fp32", "bf16")


def job(method: str, steps: int, batch_size: int, train_rows: int, eval_rows: int,
        precision: str) -> Any:
    """A validated job for a short in-process run; ``precision`` goes in as a job override."""
    from robustsweep.config import apply_overrides
    from robustsweep.jobfile import validate_job

    raw: dict[str, Any] = {
        "name": f"gpu-check-{method}",
        "data": {"train_size": train_rows, "eval_size": eval_rows, "max_length": 64},
        "method": {"name": method, "knobs": {}},
        "train": {"epochs": 1, "batch_size": batch_size, "eval_batch_size": 64,
                  "max_steps_per_epoch": steps},
    }
    return validate_job(apply_overrides(raw, [f"train.precision={precision}"]))


def peak_memory(device: torch.device) -> dict[str, Any]:
    """CUDA: this run's peak allocated bytes; CPU: the process's peak RSS (a high-water mark
    over the whole process, so it never goes down between rows)."""
    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
                "peak_memory_kind": "torch.cuda.max_memory_allocated"}
    return {"peak_memory_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
            "peak_memory_kind": "process peak RSS (ru_maxrss), cumulative"}


def train_row(method: str, precision: str, args: argparse.Namespace, device: torch.device,
              task_cache: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """One short training run: (row, the trained method or None)."""
    from robustsweep.data import load_task
    from robustsweep.train.loop import fit, prepare_trial

    row: dict[str, Any] = {"method": method, "precision": precision}
    try:
        cfg = job(method, args.steps, args.batch_size, args.train_rows, args.eval_rows, precision)
        key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
        if key not in task_cache:
            task_cache[key] = load_task(cfg.data)
        task = task_cache[key]
        adapter, rsm = prepare_trial(cfg, task, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        state = fit(adapter, rsm, task, cfg, progress=None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        steps = max(1, state.global_step)
        last = state.history[-1] if state.history else {}
        row.update({
            "status": "ok", "train_precision": cfg.train.precision,
            "steps": state.global_step, "batch_size": cfg.train.batch_size,
            "train_s": round(state.wall_time_s, 4),
            "step_time_s": round(state.wall_time_s / steps, 5),  # includes the first (warm-up) step
            "train_loss": last.get("train_loss"), "clean_accuracy": last.get("clean_accuracy"),
            "inference_passes_per_query": last.get("cost/inference_passes_per_query"),
            **peak_memory(device),
        })
        return row, (rsm, task)
    except Exception as exc:  # noqa: BLE001 - one method failing must not hide the others' numbers
        return {**row, "status": "error", "reason": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=4)}, None


def agreement(ref: list[Any], other: list[Any]) -> dict[str, Any]:
    """Examples with the same outcome and the same perturbed text in both runs."""
    from attack_speed import agreement_counts

    *_, same, shared = agreement_counts(ref, other)
    return {"same": same, "of": shared, "share": same / shared if shared else None}


def attack_rows(victim: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Stock TextAttack vs ours fp32 vs ours bf16 on one victim, per recipe."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from attack_speed import ours_run, stock_run

    from robustsweep.evaluate.attacks import select_examples
    from robustsweep.evaluate.profiles import load_profile

    out: dict[str, Any] = {}
    for recipe in args.recipes:
        profile = load_profile(recipe).model_copy(update={"num_examples": args.attack_examples})
        examples = select_examples(victim.method, victim.task.eval, profile)
        stock, stock_s = stock_run(victim, recipe, examples, args.seed, None)
        fp32, fp32_s, _ = ours_run(victim, recipe, args.attack_examples, args.seed, 1)
        bf16, bf16_s, _ = ours_run(victim, recipe, args.attack_examples, args.seed, 1, precision="bf16")
        out[recipe] = {
            "examples": len(examples), "stock_s": round(stock_s, 3), "fp32_s": round(fp32_s, 3),
            "bf16_s": round(bf16_s, 3),
            "speedup_fp32_vs_stock": round(stock_s / fp32_s, 2) if fp32_s else None,
            "speedup_bf16_vs_stock": round(stock_s / bf16_s, 2) if bf16_s else None,
            "speedup_bf16_vs_fp32": round(fp32_s / bf16_s, 2) if bf16_s else None,
            "fp32_vs_stock": agreement(stock, fp32), "bf16_vs_fp32": agreement(fp32, bf16),
        }
    return out


def textattack_missing() -> str | None:
    """None when TextAttack imports (offline), else why not."""
    try:
        from robustsweep.resources.textattack_env import import_textattack

        import_textattack()
        return None
    except Exception as exc:  # noqa: BLE001 - any import failure is a reason to skip, stated
        return f"TextAttack does not import: {type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    from robustsweep.methods.registry import available

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json", help="JSON file to write")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", nargs="+", default=None, help="Methods (default: all registered)")
    parser.add_argument("--steps", type=int, default=20, help="Optimizer steps per training run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-rows", type=int, default=400)
    parser.add_argument("--eval-rows", type=int, default=64, help="Held-out rows fit evaluates")
    parser.add_argument("--recipes", nargs="+", default=["deepwordbug", "pwws"])
    parser.add_argument("--attack-examples", type=int, default=20, help="0 skips the attacks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    methods = args.methods or sorted(available())
    out_path = Path(args.out)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "device": str(device), "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(), "args": vars(args),
        "train": [], "attack": {},
    }

    def save() -> None:
        report["total_s"] = round(time.perf_counter() - started, 2)
        out_path.write_text(json.dumps(report, indent=2, default=str))

    tasks: dict[str, Any] = {}
    victim = None
    for method in methods:
        for precision in PRECISIONS:
            row, trained = train_row(method, precision, args, device, tasks)
            report["train"].append(row)
            if method == "vanilla" and precision == "fp32" and trained is not None:
                victim = types.SimpleNamespace(method=trained[0], task=trained[1])
            print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
            save()

    reason = None
    if args.attack_examples <= 0:
        reason = "--attack-examples 0"
    elif victim is None:
        reason = "no fp32 vanilla victim (add vanilla to --methods)"
    else:
        reason = textattack_missing()
    if reason is not None:
        report["attack"] = {"status": "skipped", "reason": reason}
    else:
        try:
            report["attack"] = {"status": "ok", "victim": f"vanilla fp32, {args.steps} steps",
                                "recipes": attack_rows(victim, args)}
        except Exception as exc:  # noqa: BLE001 - recorded in the JSON with its traceback
            report["attack"] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc(limit=4)}
    print(json.dumps(report["attack"], default=str), flush=True)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
