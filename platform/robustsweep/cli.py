"""``robustsweep`` command line: sub-commands are discovered from ``robustsweep.commands``.

User errors (RobustSweepError) print one line and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType

from robustsweep import __version__
from robustsweep.errors import RobustSweepError


def _command_modules() -> list[ModuleType]:
    import robustsweep.commands as pkg

    modules = [importlib.import_module(f"{pkg.__name__}.{info.name}")
               for info in pkgutil.iter_modules(pkg.__path__) if not info.name.startswith("_")]
    return sorted(modules, key=lambda m: getattr(m, "ORDER", 50))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
