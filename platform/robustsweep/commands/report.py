"""Build a sweep's report: leaderboard (Markdown + CSV), paired comparison against vanilla,
seed aggregates, Pareto plot and per-knob plots.

From a sweep directory the report is built from the trials' results records (no MLflow
needed); from a plain directory of results records (``*.json``, any depth) the same way; from
an MLflow parent run id it is read through MlflowClient. All three give the same files for the
same trials; they are logged to the sweep's parent run when MLflow is reachable.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "report"
HELP = (
    "Leaderboard (with intervals), paired comparison vs vanilla, Pareto front and knob plots "
    "of a sweep (sweep dir, dir of results records, or MLflow parent run id)"
)
ORDER = 25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        help="Sweep directory, directory of results records (*.json), or a sweep's MLflow "
        "parent run id",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Output directory (default: <dir>/report or ./report-<run id>)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI for a run id (default: MLFLOW_TRACKING_URI)",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="Do not log the report to MLflow")


def print_report(report: Report) -> None:  # noqa: F821 - imported lazily below
    """The leaderboard as a rich table, then where the files are."""
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    if not console.is_terminal:  # logs and pipes: wide enough for the metric columns
        console = Console(soft_wrap=True, width=200)
    table = Table(
        title=f"Leaderboard — {report.records.name} (best trial per method by "
        f"{report.records.rank_by}; knobs in leaderboard.md)",
        title_justify="left",
    )
    shown = report.head[:-1]  # the knobs column is too wide for a terminal
    for i, column in enumerate(shown):
        table.add_column(
            column,
            justify="right" if i > 2 else "left",
            style="cyan" if column == "method" else None,
        )
    for row in report.rows:
        table.add_row(*row[:-1])
    if not report.rows:
        console.print("[yellow]no finished trial reported the ranking metric[/]")
    else:
        console.print(table)
    console.print(f"source    : {report.records.source}")
    console.print(f"report    : {report.out_dir / 'leaderboard.md'}")
    if report.logged_to:
        console.print(f"logged to : MLflow run {report.logged_to} (artifacts/report)")


def run(args: argparse.Namespace) -> int:
    from robustsweep.report import build_report

    report = build_report(
        args.target,
        out_dir=args.out,
        tracking_uri=args.tracking_uri,
        log_to_mlflow=not args.no_mlflow,
    )
    print_report(report)
    return 0
