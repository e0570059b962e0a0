"""``robustsweep`` command line: sub-commands are discovered from ``robustsweep.commands``.

Every user error is one line on stderr and exit code 2: bad flags (argparse), bad jobs, data
and resources (RobustSweepError), and unreadable or unwritable paths (OSError). ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import math
import pkgutil
import sys
from types import ModuleType
from typing import NoReturn

from robustsweep import __version__
from robustsweep.errors import RobustSweepError, first_line, one_line

USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``error: <command>: <message>``), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"error: {self.prog}: {one_line(message)} (see --help)\n")


def _command_modules() -> list[ModuleType]:
    import robustsweep.commands as pkg

    modules = [importlib.import_module(f"{pkg.__name__}.{info.name}")
               for info in pkgutil.iter_modules(pkg.__path__) if not info.name.startswith("_")]
    return sorted(modules, key=lambda m: getattr(m, "ORDER", 50))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="robustsweep",
        description="Robust fine-tuning sweeps: Ray Train/Tune + Optuna + TextAttack + MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"robustsweep {__version__}")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__)
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="Show tracebacks on errors")
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


# ---- checked flag types: a bad value is one argparse error line naming the flag -------------


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    """A finite number above zero (seconds, rates)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text[:40]!r}")
    return value


def _fail(message: str) -> int:
    print(f"error: {one_line(message)}", file=sys.stderr)
    return USAGE_ERROR


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except RobustSweepError as exc:
        if args.debug:
            raise
        return _fail(str(exc) or type(exc).__name__)
    except OSError as exc:  # a path the user gave cannot be read or written
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or first_line(exc)} (--debug for the traceback)")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
