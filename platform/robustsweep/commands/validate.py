"""Validate a job file (with --set overrides) and print the resolved config."""

from __future__ import annotations

import argparse

NAME = "validate"
HELP = "Check a job YAML and print the resolved config"
ORDER = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="Job YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a config value, e.g. --set train.epochs=2 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from robustsweep.config import job_to_yaml, load_job

    cfg = load_job(args.job, args.overrides)
    print(job_to_yaml(cfg), end="")
    return 0
