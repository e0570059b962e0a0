"""Attack speed: robustsweep's attack evaluation vs TextAttack's ``Attacker``, side by side.

Same recipe (built by the same function), same victim weights, same examples, same per-example
seeds and the same cores. Ray pool start-up (seconds, paid once per evaluation) is timed and
printed apart from the attack time. Three ways to run it:

  stock     TextAttack ``Attacker`` + ``HuggingFaceModelWrapper`` as shipped (pads to 512)
  padfix    the same with the tokenizer's ``model_max_length`` set to the job's max_length
  ours      ``robustsweep.evaluate.attacks.run_profile`` (batched, cached, dynamic padding),
            with 1 worker in-process and with N Ray actor workers

It checks that every example gets the same outcome (and perturbed text) in all runs and prints
the speed-ups and the throughput against the number of attack workers.

  .venv/bin/python benchmarks/attack_speed.py --run runs/attack_victim --recipe pwws -n 10
  .venv/bin/python benchmarks/attack_speed.py --train-rows 2000     # trains a quick victim first
  .venv/bin/python benchmarks/attack_speed.py --breakdown --stock-examples 0 --workers 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from robustsweep.evaluate.attacks import run_profile, select_examples
from robustsweep.evaluate.outcomes import ExampleResult
from robustsweep.evaluate.profiles import load_profile
from robustsweep.evaluate.recipes import get_recipe
from robustsweep.evaluate.runner import Example, example_seed, warm_up
from robustsweep.evaluate.trial import LoadedTrial, load_trial, resolve, write_trial
from robustsweep.resources.textattack_env import import_textattack


def train_victim(rows: int, out: Path, method_name: str = "vanilla",
                 knobs: dict[str, object] | None = None) -> Path:
    """Fine-tune the builtin MiniLM on ``rows`` MR sentences for 1 epoch (max_length 64)
    with ``method_name`` (an inference-time defence such as RSMI is then attacked through
    its own ``predict_logits``)."""
    from robustsweep.data import load_task
    from robustsweep.jobfile import validate_job
    from robustsweep.methods import build
    from robustsweep.models import load_model
    from robustsweep.train.loop import fit, seed_everything

    cfg = validate_job({"name": "attack-victim", "data": {"train_size": rows, "eval_size": 500,
                                                          "max_length": 64},
                        "method": {"name": method_name, "knobs": dict(knobs or {})}})
    seed_everything(cfg.seed)
    task = load_task(cfg.data)
    adapter = load_model(cfg.model, task.num_labels, cfg.data.max_length)
    method = build(cfg.method.name, cfg.method.knobs)
    method.setup(adapter, task)
    fit(adapter, method, task, cfg)
    write_trial(out, cfg, method)
    return out


def stock_run(victim: LoadedTrial, recipe: str, examples: list[Example], seed: int,
              max_length: int | None) -> tuple[list[ExampleResult], float]:
    """TextAttack's Attacker, one example per call so each gets its per-example seed."""
    import copy

    import textattack
    from textattack.models.wrappers import HuggingFaceModelWrapper

    from robustsweep.evaluate.runner import AttackRunner

    adapter = victim.method.adapter
    tokenizer = copy.copy(adapter.tokenizer)
    if max_length is not None:
        tokenizer.model_max_length = max_length
    adapter.core.eval()
    wrapper = HuggingFaceModelWrapper(adapter.core, tokenizer)
    attack = get_recipe(recipe).build(wrapper)
    warm_up(attack)  # as our runner does: loading WordNet is not attacking
    results = []
    started = time.perf_counter()
    for ex in examples:
        dataset = textattack.datasets.Dataset([(ex.text, ex.label)])
        args = textattack.AttackArgs(num_examples=1, random_seed=example_seed(seed, ex.example_id),
                                     silent=True, disable_stdout=True)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            [result] = textattack.Attacker(attack, dataset, args).attack_dataset()
        results.append(AttackRunner._from_result(ex, result, time.perf_counter() - t0))
    return results, time.perf_counter() - started


def ours_run(victim: LoadedTrial, recipe: str, n: int, seed: int,
             workers: int, precision: str = "fp32") -> tuple[list[ExampleResult], float, float]:
    """(rows, attack seconds, start-up seconds): Ray start-up is timed apart from the attack."""
    profile = load_profile(recipe).model_copy(
        update={"num_examples": n, "seed": seed, "precision": precision})
    out = Path(tempfile.mkdtemp(prefix="attack_speed_"))
    pool = None
    try:
        started = time.perf_counter()
        if workers > 1:
            from robustsweep.evaluate.attack_pool import AttackPool

            pool = AttackPool(victim.method, profile, workers)
        startup = time.perf_counter() - started
        report = run_profile(victim.method, victim.task.eval, profile, out, workers=workers,
                             progress=False, pool=pool)
        rows = sorted(report.table.read(), key=lambda r: r.example_id)
        return rows, report.seconds, startup
    finally:
        if pool is not None:
            pool.close()
        shutil.rmtree(out, ignore_errors=True)


def breakdown(victim: LoadedTrial, recipe: str, examples: list[Example], seed: int) -> str:
    """Where one in-process worker spends its time: the encoder (tokenize + predict_logits)
    vs TextAttack's search, transformations and constraints."""
    from robustsweep.evaluate.runner import AttackRunner

    profile = load_profile(recipe).model_copy(update={"seed": seed})
    runner = AttackRunner(victim.method, profile)
    started = time.perf_counter()
    for ex in examples:
        runner.run(ex)
    total = time.perf_counter() - started
    st = runner.wrapper.stats
    return (f"breakdown (ours x1): {total:.1f} s, {st.model_seconds:.1f} s "
            f"({100 * st.model_seconds / total:.0f} %) in the encoder; {st.scored} texts scored "
            f"in {st.forwards} forwards, mean padded length "
            f"{st.padded_tokens / max(st.scored, 1):.1f} tokens "
            f"({st.padded_tokens / max(st.tokens, 1):.2f}x the real ones), {st.cache_hits} cache hits")


def batch_curve(victim: LoadedTrial, length: int = 37, sizes: tuple[int, ...] = (1, 5, 10, 32, 64)
                ) -> str:
    """Encoder ms per text against batch size (what batching across examples could still win)."""
    from robustsweep.evaluate.inference import inference_mode

    method = victim.method
    adapter = method.adapter
    length = min(length, adapter.max_length)
    parts = []
    for size in sizes:
        text = " ".join(["film"] * (length - 2))  # + CLS and SEP
        batch = adapter.to_device(adapter.encode([text] * size))
        with inference_mode(method):  # as the wrapper scores: eval mode, grads only for RSMI
            method.predict_logits(batch)
            repeats = max(3, 128 // size)
            started = time.perf_counter()
            for _ in range(repeats):
                method.predict_logits(batch)
        parts.append(f"{size}: {(time.perf_counter() - started) / repeats / size * 1000:.2f}")
    return f"encoder ms/text by batch size ({length} tokens): " + ", ".join(parts)


def agreement_counts(ref: list[ExampleResult],
                     other: list[ExampleResult]) -> tuple[int, int, int, int]:
    """On the examples both runs attacked: (same outcome, same perturbed text, both, shared)."""
    other_by = {r.example_id: r for r in other}
    pairs = [(r, other_by[r.example_id]) for r in ref if r.example_id in other_by]
    outcome = [a.outcome == b.outcome for a, b in pairs]
    text = [a.perturbed_text == b.perturbed_text for a, b in pairs]
    return sum(outcome), sum(text), sum(o and t for o, t in zip(outcome, text)), len(pairs)


def compare(name: str, ref: list[ExampleResult], other: list[ExampleResult]) -> str:
    """Per-example agreement on the examples both runs attacked."""
    same_outcome, same_text, both, shared = agreement_counts(ref, other)
    return (f"{name:<12} outcomes identical {same_outcome}/{shared}, "
            f"perturbed texts identical {same_text}/{shared}, "
            f"both {both}/{shared} ({100 * both / max(shared, 1):.0f} %)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--run", default="runs/attack_victim", help="Victim trial/checkpoint dir")
    parser.add_argument("--train-rows", type=int, default=None,
                        help="Train a quick victim on this many MR rows first (into --run)")
    parser.add_argument("--method", default="vanilla",
                        help="Method of the victim --train-rows trains (e.g. rsmi)")
    parser.add_argument("--knob", action="append", default=[], metavar="KEY=JSON",
                        help="A knob of --method for the trained victim, e.g. fixed_noise=true")
    parser.add_argument("--recipe", action="append", default=None,
                        help="Recipe(s) to compare (default: deepwordbug and pwws)")
    parser.add_argument("-n", "--num-examples", type=int, default=10)
    parser.add_argument("--workers", default="1,2", help="Worker counts for our runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stock-examples", type=int, default=None, metavar="K",
                        help="Run the (slow) 512-padding baseline on the first K examples only; "
                        "its speed-up is then per example (0 skips it)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the in-process runs (default: all cores); Ray "
                        "workers always get cores / workers threads each")
    parser.add_argument("--bf16", action="store_true",
                        help="Also run ours with bf16 victim queries (eval.attack_precision) and "
                        "print its speed-up and its agreement with the fp32 outcomes")
    parser.add_argument("--breakdown", action="store_true",
                        help="Also time one in-process run split into encoder vs search time")
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(args.threads or cores)
    import_textattack()
    run_dir = Path(args.run)
    if args.train_rows:
        knobs = {key: json.loads(value) for key, value in (k.split("=", 1) for k in args.knob)}
        train_victim(args.train_rows, run_dir, args.method, knobs)
    trial_dir, checkpoint = resolve(str(run_dir), [])
    victim = load_trial(trial_dir, checkpoint, anomaly=False)
    max_length = victim.cfg.data.max_length
    workers = [int(w) for w in args.workers.split(",")]
    from robustsweep.evaluate.recipes import textattack_version

    print(f"victim {trial_dir} | {cores} cores, {torch.get_num_threads()} torch threads in-process "
          f"| max_length {max_length} | N={args.num_examples} | textattack {textattack_version()}")

    for recipe in args.recipe or ["deepwordbug", "pwws"]:
        profile = load_profile(recipe).model_copy(update={"num_examples": args.num_examples})
        examples = select_examples(victim.method, victim.task.eval, profile)
        print(f"\n== {recipe}: {get_recipe(recipe).title}")
        timings: dict[str, float] = {}
        runs: dict[str, list[ExampleResult]] = {}
        k = len(examples) if args.stock_examples is None else min(args.stock_examples, len(examples))
        if k:
            rows, seconds = stock_run(victim, recipe, examples[:k], args.seed, None)
            runs["stock"], timings["stock"] = rows, seconds * len(examples) / k
        runs["padfix"], timings["padfix"] = stock_run(victim, recipe, examples, args.seed, max_length)
        startups: dict[str, float] = {}
        for w in workers:
            key = f"ours x{w}"
            runs[key], timings[key], startups[key] = ours_run(victim, recipe, args.num_examples,
                                                              args.seed, w)
            if args.bf16:
                key16 = f"bf16 x{w}"
                runs[key16], timings[key16], startups[key16] = ours_run(
                    victim, recipe, args.num_examples, args.seed, w, precision="bf16")
        n = len(examples)
        print(f"{'run':<12} {'seconds':>8} {'s/example':>10} {'examples/s':>11}")
        for key, seconds in timings.items():
            extra = f"  (+{startups[key]:.1f} s Ray pool start-up)" if startups.get(key) else ""
            if key == "stock" and k < n:
                extra = f"  (measured on {k} examples, scaled to {n})"
            print(f"{key:<12} {seconds:8.1f} {seconds / n:10.3f} {n / seconds:11.3f}{extra}")
        best = min((k for k in timings if k.startswith("ours")), key=timings.get)
        fastest = min((k for k in timings if k.startswith(("ours", "bf16"))), key=timings.get)
        if "stock" in timings:
            print(f"speed-up of {best} vs stock TextAttack (512 padding): "
                  f"{timings['stock'] / timings[best]:.1f}x (goal >= 20x)")
        print(f"speed-up of {best} vs TextAttack with padding fixed: "
              f"{timings['padfix'] / timings[best]:.1f}x (goal >= 2x)")
        if args.bf16:
            if "stock" in timings:
                print(f"speed-up of {fastest} vs stock TextAttack (512 padding): "
                      f"{timings['stock'] / timings[fastest]:.1f}x (goal >= 20x)")
            for w in workers:
                versus = (f"{timings['stock'] / timings[f'bf16 x{w}']:.1f}x stock, "
                          if "stock" in timings else "")
                print(f"bf16 x{w}: {versus}{timings['padfix'] / timings[f'bf16 x{w}']:.1f}x "
                      f"padding fixed, {timings[f'ours x{w}'] / timings[f'bf16 x{w}']:.2f}x fp32 "
                      f"x{w}; agreement with fp32 x{w}: "
                      + compare("", runs[f"ours x{w}"], runs[f"bf16 x{w}"]).strip()
                      + " (goal >= 99 % both)")
        one = timings.get("ours x1")
        if one:
            for w in workers:
                print(f"throughput with {w} worker(s): {n / timings[f'ours x{w}']:.3f} ex/s "
                      f"({one / timings[f'ours x{w}']:.2f}x of 1 worker)")
        reference = runs["padfix"]
        for key, rows in runs.items():
            print(compare(key, reference, rows))
        outcomes = {o: sum(r.outcome == o for r in runs[best]) for o in
                    ("successful", "failed", "skipped", "timeout")}
        print(f"outcomes: {outcomes}")
        if args.breakdown:
            print(breakdown(victim, recipe, examples, args.seed))
    if args.breakdown:
        print(batch_curve(victim))
    return 0


if __name__ == "__main__":
    sys.exit(main())
