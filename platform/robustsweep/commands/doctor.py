"""Report which attacks can run here and which resources are missing (nothing is downloaded)."""

from __future__ import annotations

import argparse

NAME = "doctor"
HELP = "Check offline resources and list which attack recipes can run"
ORDER = 85


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--deep", action="store_true",
                        help="Also load WordNet fully and build each runnable offline attack")


def _build_offline(names: list[str]) -> dict[str, str]:
    """Actually build each attack around a tiny victim; name -> error ('' when it built)."""
    from robustsweep.config import ModelConfig
    from robustsweep.evaluate.profiles import load_profile
    from robustsweep.evaluate.recipes import build_attack
    from robustsweep.evaluate.wrapper import MethodModelWrapper
    from robustsweep.methods import build
    from robustsweep.models import load_model

    method = build("vanilla")
    method.setup(load_model(ModelConfig(), 2, 64))
    errors = {}
    for name in names:
        try:
            build_attack(load_profile(name), MethodModelWrapper(method))
            errors[name] = ""
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return errors


def run(args: argparse.Namespace) -> int:
    from robustsweep import textattack_env
    from robustsweep.evaluate.recipes import RECIPES, missing_resources
    from robustsweep.resources import cache_dir

    print(f"cache dir: {cache_dir()}")
    for check in [*textattack_env.checks(deep=args.deep), textattack_env.check_plain_import()]:
        print(f"  {'ok ' if check.ok else 'MISSING'}  {check.name}: {check.detail}")
    runnable = {}
    print("attack recipes:")
    for recipe in RECIPES.values():
        missing = missing_resources(recipe)
        runnable[recipe.name] = not missing
        kind = "offline" if recipe.offline else "connected"
        state = "can run" if not missing else "cannot run: " + "; ".join(missing)
        print(f"  {recipe.name:<18} [{kind}] {recipe.title}\n      needs: {recipe.needs}\n"
              f"      {state}")
    if args.deep:
        offline = [r.name for r in RECIPES.values() if r.offline and runnable[r.name]]
        for name, error in _build_offline(offline).items():
            print(f"  build {name}: {'ok' if not error else error}")
            runnable[name] = runnable[name] and not error
    ok = all(runnable[r.name] for r in RECIPES.values() if r.offline)
    if not ok:
        print("some offline attacks cannot run: run `robustsweep prefetch`")
    return 0 if ok else 1
