"""Arguments shared by the commands that take a job file."""

from __future__ import annotations

import argparse


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """``JOB.yaml`` plus repeatable ``--set key.path=value`` overrides."""
    parser.add_argument("job", help="Job YAML file (see jobs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a config value, e.g. --set train.epochs=2 (repeatable)")
