"""Validate a job file (with --set overrides) and print the resolved config."""

from __future__ import annotations

import argparse

from robustsweep.commands._args import add_job_arguments

NAME = "validate"
HELP = "Check a job YAML and print the resolved config"
ORDER = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from robustsweep.config import job_to_yaml, load_job

    cfg = load_job(args.job, args.overrides)
    print(job_to_yaml(cfg), end="")
    return 0
