"""Run a sweep: Ray Tune over Ray Train trials, Optuna search, MLflow parent/child runs, report.

``robustsweep sweep JOB.yaml`` starts a sweep in the job's output dir; ``robustsweep sweep
--resume DIR`` finishes one whose driver stopped (finished trials are not re-run). The sweep
ends with its report and the commands that open MLflow and optuna-dashboard on its stores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "sweep"
HELP = "Search robust fine-tuning methods and knobs (Ray Tune + Optuna), then report"
ORDER = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", nargs="?", help="Job YAML with a sweep: section (see jobs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a config value, e.g. --set sweep.num_samples=4 (repeatable)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="SWEEP_DIR",
        help="Finish the sweep in SWEEP_DIR (after a crash, kill or Ctrl-C)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="With --resume: run failed trials again from their last checkpoint",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (overrides cluster.address and RAY_ADDRESS)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Delete an earlier sweep in the job's output dir first",
    )
    parser.add_argument("--no-report", action="store_true", help="Skip the report at the end")


def print_commands(outcome: SweepOutcome) -> None:  # noqa: F821 - imported lazily below
    from rich.console import Console

    from robustsweep import tracking
    from robustsweep.sweep.search import dashboard_command

    console = Console(soft_wrap=True)
    manifest = outcome.manifest
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(manifest.counts().items()))
    console.print(f"sweep     : {outcome.sweep_dir} ({counts})")
    if manifest.parent_run_id:
        console.print(f"MLflow    : parent run {manifest.parent_run_id}")
        console.print(f"MLflow UI : {tracking.ui_command(manifest.tracking_uri)}")
    console.print(
        f"Optuna    : {dashboard_command(manifest.data['study']['storage'])}"
        "   (pip install optuna-dashboard)"
    )


def run(args: argparse.Namespace) -> int:
    from robustsweep.config import load_job
    from robustsweep.errors import ConfigError
    from robustsweep.sweep.tuner import resume_sweep, start_sweep

    if args.resume is not None:
        if args.job or args.overrides or args.overwrite:
            raise ConfigError("--resume takes the sweep dir only (its config is in manifest.json)")
        outcome = resume_sweep(args.resume, address=args.address, retry_failed=args.retry_failed)
    else:
        if not args.job:
            raise ConfigError("give a job YAML, or --resume SWEEP_DIR")
        overrides = list(args.overrides)
        if args.address:
            overrides.append(f"cluster.address={args.address}")
        cfg = load_job(args.job, overrides)
        outcome = start_sweep(cfg, job_file=str(Path(args.job).resolve()), overwrite=args.overwrite)
    if not args.no_report and outcome.manifest.trials:
        from robustsweep.commands.report import print_report
        from robustsweep.report import build_report

        print_report(build_report(outcome.sweep_dir))
    print_commands(outcome)
    return 0 if outcome.complete else 3
