"""Pre-flight a job file (with --set overrides): validate it, run every cross-check ``train``
and ``sweep`` run before Ray starts, and print the resolved config.

Nothing is trained and Ray is not started; an http(s) tracking server is probed for a few
seconds at most. The method's knobs are printed with their defaults filled in.
"""

from __future__ import annotations

import argparse

import yaml

from robustsweep.commands._args import add_job_arguments

NAME = "validate"
HELP = "Pre-flight a job YAML (all cross-checks, no training) and print the resolved config"
ORDER = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--no-probe", action="store_true",
                        help="Do not contact an http(s) MLflow tracking server")


def run(args: argparse.Namespace) -> int:
    from robustsweep.jobfile import load_job
    from robustsweep.resolve import resolve_job, summary_lines

    cfg = load_job(args.job, args.overrides)
    resolved = resolve_job(cfg, origin=args.job, probe=not args.no_probe)
    raw = cfg.model_dump(mode="json")
    raw["method"]["knobs"] = resolved.knobs
    print(yaml.safe_dump(raw, sort_keys=False), end="")
    print("# pre-flight passed")
    for line in summary_lines(resolved):
        print(f"#   {line}")
    return 0
