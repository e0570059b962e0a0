"""List registered robust fine-tuning methods with their knobs, defaults and meanings."""

from __future__ import annotations

import argparse

NAME = "methods"
HELP = "List methods and their knobs"
ORDER = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="Show one method only")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from robustsweep.methods import registry

    methods = registry.available() if args.name is None else {args.name: registry.get(args.name)}
    console = Console()
    for name, cls in methods.items():
        table = Table(title=f"[bold]{name}[/] — {cls.summary}  ({cls.paper})", title_justify="left",
                      show_lines=False, expand=False)
        table.add_column("knob", style="cyan")
        table.add_column("default")
        table.add_column("meaning")
        for knob, field in cls.knobs_class.model_fields.items():
            table.add_row(knob, repr(field.default), field.description or "")
        if not cls.knobs_class.model_fields:
            table.add_row("—", "", "no method knobs (see the train section)")
        console.print(table)
    return 0
