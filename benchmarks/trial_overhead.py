"""Fixed cost of a trial: in-process work vs ``robustsweep train`` vs a sweep of N trials.

One run measures, on the same job (default ``jobs/smoke.yaml``, vanilla, no attacks):
  work   the trial's own work in this process: data, model load, training, final evaluation;
  train  ``robustsweep train JOB`` as a fresh process (wall clock);
  sweep  ``robustsweep sweep`` of N trials of that job (its method over N seeds, one at a time).
Fixed cost per trial = wall per trial - work. Phases come from ``trial_timing/sitecustomize.py``,
which every Ray process of the two commands loads (PYTHONPATH) and which logs the start and end
of robustsweep's own functions (open_trial, train_worker, load_task, prepare_trial, fit,
clean/final metrics, every tracking call) and module imports; nothing is estimated.

Run:  .venv/bin/python benchmarks/trial_overhead.py --job jobs/smoke.yaml --trials 4
Measure other code: PYTHONPATH=/path/to/checkout/platform .venv/bin/python benchmarks/...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

import yaml

ROOT = Path(__file__).resolve().parents[1]
TIMING_DIR = Path(__file__).resolve().parent / "trial_timing"
CLI = [sys.executable, "-m", "robustsweep"]
PHASES = ("Ray/Train start-up", "worker imports", "data load", "model load", "training",
          "evaluation", "MLflow + artifacts", "Ray/Train teardown", "other in trial",
          "Tune between trials")

Interval = tuple[float, float]


def in_process_work(cfg: Any) -> dict[str, float]:
    """The trial's own work, timed here: what no executor can avoid."""
    import torch

    from robustsweep.data import load_task
    from robustsweep.evaluate import suite
    from robustsweep.train.loop import fit, prepare_trial

    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker or 1)))
    out: dict[str, float] = {}
    t = time.perf_counter()
    task = load_task(cfg.data, cfg.eval.anomaly)
    out["data load"] = time.perf_counter() - t
    t = time.perf_counter()
    adapter, method = prepare_trial(cfg, task, "cpu")
    out["model load"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        state = fit(adapter, method, task, cfg, progress=None, plot_dir=Path(tmp))
        fitted = time.perf_counter() - t
        t = time.perf_counter()
        suite.final_metrics(method, task, cfg, Path(tmp))
        out["final evaluation"] = time.perf_counter() - t
    out["training + epoch eval"] = fitted
    out["training steps"] = state.wall_time_s
    out["work"] = sum(v for k, v in out.items() if k != "training steps")
    return out


def union(intervals: list[Interval]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def clip(intervals: list[Interval], lo: float, hi: float) -> list[Interval]:
    return [(max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi]


def read_events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def trial_phases(events: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per ``run_trial`` call, seconds per phase (each phase from the logged intervals)."""
    def spans(name: str, pid: int | None = None, lo: float = float("-inf"),
              hi: float = float("inf")) -> list[Interval]:
        return [(e["t0"], e["t1"]) for e in events
                if (e["name"] == name or (name.endswith("*") and e["name"].startswith(name[:-1])))
                and (pid is None or e["pid"] == pid) and e["t0"] >= lo and e["t1"] <= hi]

    trials = sorted((e for e in events if e["name"] == "trial.run_trial"), key=lambda e: e["t0"])
    fits = spans("tuner._fit")
    result = []
    previous_end = fits[0][0] if fits else None
    for run in trials:
        lo, hi = run["t0"], run["t1"]
        opened = spans("trial.open_trial", run["pid"], lo, hi)
        worker = next((e for e in events if e["name"] == "ray_trainer.train_worker"
                       and lo <= e["t0"] and e["t1"] <= hi), None)
        if worker is None or not opened:
            continue
        wpid, w0, w1 = worker["pid"], worker["t0"], worker["t1"]
        open_end = opened[0][1]
        imports = clip(spans("import:*", wpid), open_end, w1)
        before_worker = union(clip(imports, open_end, w0))
        in_worker_imports = union(clip(imports, w0, w1))
        tracking = [s for s in spans("tracking.*", None, lo, hi) if s[0] >= open_end]
        clean = union(spans("suite.clean_metrics", wpid, w0, w1))
        final = union(spans("suite.final_metrics", wpid, w0, w1))
        fit = union(spans("loop.fit", wpid, w0, w1))
        data = union([*spans("data.load_task", wpid, w0, w1),  # through the sweep's cache
                      *spans("task_cache.cached_task", wpid, w0, w1)])
        model = union(spans("loop.prepare_trial", wpid, w0, w1))
        mlflow_in_worker = union(clip(tracking, w0, w1))
        fit_span = next(iter(spans("loop.fit", wpid, w0, w1)), (w0, w0))
        mlflow_in_fit = union(clip(tracking, *fit_span))  # per-epoch metrics from the loop
        phases = {
            "Ray/Train start-up": (w0 - open_end) - before_worker,
            "worker imports": before_worker + in_worker_imports,
            "data load": data,
            "model load": model,
            "training": fit - clean - mlflow_in_fit,
            "evaluation": clean + final,
            "MLflow + artifacts": (opened[0][1] - opened[0][0]) + union(tracking),
            "Ray/Train teardown": (hi - w1) - union(clip(tracking, w1, hi)),
        }
        phases["other in trial"] = (w1 - w0) - in_worker_imports - data - model - fit - final \
            - (mlflow_in_worker - mlflow_in_fit)
        if previous_end is not None:
            phases["Tune between trials"] = lo - previous_end
        previous_end = hi
        phases["trial wall"] = hi - lo
        result.append(phases)
    if fits and result:  # after the last trial: until Tune's fit returns
        result[-1]["Tune between trials"] = result[-1].get("Tune between trials", 0.0) + \
            fits[-1][1] - previous_end
    return result


def run_command(args: list[str], log: Path, cwd: Path) -> float:
    env = {**os.environ, "TRIAL_TIMING_LOG": str(log),
           "PYTHONPATH": os.pathsep.join(p for p in (str(TIMING_DIR), os.environ.get("PYTHONPATH"))
                                         if p),
           "ROBUSTSWEEP_PROGRESS": "lines"}
    started = time.perf_counter()
    done = subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"{' '.join(args[2:4])} failed (exit {done.returncode})")
    return wall


def job_method(raw: dict[str, Any]) -> str:
    """The method the job trains (the schema's default when it names none)."""
    return (raw.get("method") or {}).get("name", "vanilla")


def sweep_job(raw: dict[str, Any], trials: int, out: Path) -> dict[str, Any]:
    """N trials of the job's own method (a grid over N seeds: a sweep trains a knob-less method
    once per seed), so each sweep trial does the work ``in_process_work`` measured; a method mix
    would count the costlier methods' extra training as fixed cost."""
    job = {**raw, "name": f"{raw['name']}_overhead_sweep", "output_dir": str(out)}
    job["eval"] = {**(raw.get("eval") or {}), "attacks": []}
    job["sweep"] = {"mode": "grid", "methods": [job_method(raw)], "seeds": list(range(trials)),
                    "max_concurrent_trials": 1,
                    "objectives": [{"metric": "clean_accuracy", "mode": "max"}]}
    return job


def mean_phases(rows: list[dict[str, float]]) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    for row in rows:
        for key, value in row.items():
            sums[key] += value
    return {k: v / len(rows) for k, v in sums.items()} if rows else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, default=ROOT / "jobs" / "smoke.yaml")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and outputs here")
    args = parser.parse_args()

    import robustsweep
    from robustsweep.jobfile import validate_job

    raw = yaml.safe_load(args.job.read_text())
    raw["eval"] = {**(raw.get("eval") or {}), "attacks": []}
    base = Path(tempfile.mkdtemp(prefix="trial_overhead_")) if args.keep is None else args.keep
    base.mkdir(parents=True, exist_ok=True)
    print(f"robustsweep from {Path(robustsweep.__file__).parent}; outputs in {base}")

    work = in_process_work(validate_job({**raw, "output_dir": str(base / "inproc")}))

    train_file = base / "train.yaml"
    train_file.write_text(yaml.safe_dump({**raw, "output_dir": str(base / "train")}))
    train_wall = run_command([*CLI, "train", str(train_file)], base / "train.timing.jsonl", base)
    train_phases = trial_phases(read_events(base / "train.timing.jsonl"))

    sweep_file = base / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep_job(raw, args.trials, base / "sweep")))
    sweep_wall = run_command([*CLI, "sweep", str(sweep_file), "--no-report"],
                             base / "sweep.timing.jsonl", base)
    events = read_events(base / "sweep.timing.jsonl")
    sweep_phases = trial_phases(events)
    fits = [(e["t0"], e["t1"]) for e in events if e["name"] == "tuner._fit"]
    tune_wall = fits[0][1] - fits[0][0] if fits else float("nan")

    w = work["work"]
    n = max(1, len(sweep_phases))
    print(f"\nin-process work of one trial ({args.job.name}, {job_method(raw)}, no attacks): "
          f"{w:.1f} s")
    for key, value in work.items():
        if key != "work":
            print(f"  {key:<24}{value:7.2f} s")
    per_trial_cmd = sweep_wall / n
    per_trial_tune = tune_wall / n
    print(f"\n{'':<28}{'wall':>9}{'fixed':>9}{'fixed/work':>12}")
    print(f"{'robustsweep train':<28}{train_wall:8.1f}s{train_wall - w:8.1f}s{(train_wall - w) / w:11.1f}x")
    print(f"{f'sweep of {n}, per trial':<28}{per_trial_cmd:8.1f}s{per_trial_cmd - w:8.1f}s"
          f"{(per_trial_cmd - w) / w:11.1f}x   (whole command {sweep_wall:.1f} s)")
    print(f"{'  inside Tune fit, per trial':<28}{per_trial_tune:8.1f}s{per_trial_tune - w:8.1f}s"
          f"{(per_trial_tune - w) / w:11.1f}x   (Tune fit {tune_wall:.1f} s)")
    print(f"\nphases (s; sweep: mean over its {n} trials)  {'train':>8}{'sweep':>8}")
    train_mean, sweep_mean = mean_phases(train_phases), mean_phases(sweep_phases)
    for phase in (*PHASES, "trial wall"):
        a, b = train_mean.get(phase), sweep_mean.get(phase)
        fmt = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"
        print(f"  {phase:<41}{fmt(a)}{fmt(b)}")
    if args.keep is None:
        print(f"(logs kept in {base})")


if __name__ == "__main__":
    main()
