"""Train and evaluate one configuration (one trial) on Ray Train, logged to MLflow.

The job is pre-flighted (``robustsweep validate``'s checks) before Ray starts.
"""

from __future__ import annotations

import argparse

from robustsweep.cli import non_negative_int
from robustsweep.commands._args import add_job_arguments

NAME = "train"
HELP = "Run one trial of a job (Ray Train workers, MLflow run)"
ORDER = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="Continue from the newest checkpoint in the job's output dir")
    parser.add_argument("--max-failures", type=non_negative_int, default=0, metavar="N",
                        help="Restart failed workers from the last checkpoint up to N times")


def print_summary(result: TrialResult) -> None:  # noqa: F821 - imported lazily below
    from rich.console import Console
    from rich.table import Table

    from robustsweep import tracking
    from robustsweep.state.trial import TrialDir

    table = Table(title="Trial results", title_justify="left")
    table.add_column("metric", style="cyan")
    table.add_column("value", justify="right")
    for key in sorted(k for k in result.metrics if k != "lr"):
        value = result.metrics[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console = Console(soft_wrap=True)
    console.print(table)
    console.print(f"results   : {TrialDir(result.trial_dir).results_file}")
    if result.run_id:
        console.print(f"MLflow run: {result.run_id}")
        console.print(f"MLflow UI : {tracking.ui_command(result.tracking_uri)}")


def run(args: argparse.Namespace) -> int:
    from robustsweep import api

    result = api.train(
        args.job, args.overrides, resume=args.resume, max_failures=args.max_failures
    )
    print_summary(result)
    return 0
