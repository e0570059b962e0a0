"""Run a sweep: Ray Tune over Ray Train trials, Optuna search, MLflow parent/child runs, report.

``robustsweep sweep JOB.yaml`` starts a sweep in the job's output dir; ``robustsweep sweep
--resume DIR`` finishes one whose driver stopped (finished trials are not re-run). The sweep
ends with its report and the commands that open MLflow and optuna-dashboard on its stores.

Both run ``robustsweep validate``'s pre-flight before Ray starts. ``--resume`` only accepts a
directory with a robustsweep manifest (Tune's state there is pickled) and refuses a sweep whose
job sets ``model.trust_remote_code`` unless ``--trust-remote-code`` is given.
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
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="With --resume: allow a sweep whose job sets model.trust_remote_code (never turned "
        "on by the directory's files alone)",
    )


def print_commands(outcome: SweepOutcome) -> None:  # noqa: F821 - imported lazily below
    from rich.console import Console

    from robustsweep import tracking
    from robustsweep.sweep.search import dashboard_command

    console = Console(soft_wrap=True)
    manifest = outcome.manifest
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(manifest.counts().items()))
    console.print(f"sweep     : {outcome.sweep_dir} ({counts})")
    if manifest.parent_run_id:
        uri = manifest.tracking_uri
        console.print(f"MLflow    : parent run {manifest.parent_run_id}")
        objectives = [o["metric"] for o in (manifest.data["job"].get("sweep") or {}).get(
            "objectives", [])]
        try:  # a saved runs view: method, objectives, accuracies, ECE, OOD, cost; best first
            url = tracking.sweep_view_url(
                uri, manifest.parent_run_id, manifest.data["job"]["name"], objectives
            )
        except tracking.TrackingError as exc:
            url = None
            console.print(f"[yellow]warning:[/] could not save the MLflow runs view: {exc}")
        console.print(f"MLflow UI : {tracking.ui_command(uri)}")
        if url:
            console.print(f"            then open {url}")
    console.print(
        f"Optuna    : {dashboard_command(manifest.data['study']['storage'])}"
        "   (pip install optuna-dashboard)"
    )


def run(args: argparse.Namespace) -> int:
    from robustsweep import api
    from robustsweep.errors import ConfigError

    if args.resume is not None:
        if args.job or args.overrides or args.overwrite:
            raise ConfigError("--resume takes the sweep dir only (its config is in manifest.json)")
        result = api.resume_sweep(
            args.resume,
            address=args.address,
            retry_failed=args.retry_failed,
            trust_remote_code=args.trust_remote_code,
            build_report=False,
        )
    else:
        if not args.job:
            raise ConfigError("give a job YAML, or --resume SWEEP_DIR")
        if args.retry_failed:
            raise ConfigError("--retry-failed only applies with --resume SWEEP_DIR")
        if args.trust_remote_code:
            raise ConfigError("--trust-remote-code only applies with --resume (a job file sets "
                              "model.trust_remote_code itself)")
        overrides = list(args.overrides)
        if args.address:
            overrides.append(f"cluster.address={args.address}")
        result = api.sweep(args.job, overrides, overwrite=args.overwrite, build_report=False)
    if not args.no_report and result.manifest.trials:
        from robustsweep.commands.report import print_report

        print_report(api.report(result.sweep_dir))
    print_commands(result)
    return 0 if result.complete else 3
