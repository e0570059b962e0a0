"""The package's shape, as docs/architecture.md states it: no import circles, one owner of the
on-disk layout (``state/``), one MLflow user (``tracking.py``)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import robustsweep

PACKAGE = Path(robustsweep.__file__).resolve().parent
# Modules that may import mlflow besides tracking.py, each with its reason (none today).
MLFLOW_ALLOWED: dict[str, str] = {}
# File names of a trial's on-disk layout: spelled in state/ only.
LAYOUT_NAMES = ("trial.json", "results.json")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imported_names(module: str, path: Path) -> list[str]:
    """Every module name ``module`` imports, at any depth (functions and ``TYPE_CHECKING``
    blocks included: an annotation-only import back up the layers is a circle too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # ``from pkg import submodule`` imports the submodule; ``from mod import name``
                # imports the module itself
                full = f"{base}.{alias.name}"
                names.append(full if full in MODULES else base)
    return names


def _resolve(name: str) -> str | None:
    """The package module ``name`` refers to (a name imported from a module: that module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, path in MODULES.items():
        for name in _imported_names(module, path):
            if name == "robustsweep" or name.startswith("robustsweep."):
                target = _resolve(name)
                if target and target != module:
                    graph[module].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (the import circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    # api.py imports the trial runner inside a function only
    assert "robustsweep.train.trial" in graph["robustsweep.api"]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles() -> None:
    circles = strongly_connected(import_graph())
    assert circles == [], "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_layout_file_names_are_spelled_in_state_only() -> None:
    state = PACKAGE / "state"
    offenders = [
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in MODULES.values()
        if state not in path.parents
        for name in LAYOUT_NAMES
        if name in path.read_text()
    ]
    assert offenders == []


def test_mlflow_is_imported_by_tracking_only() -> None:
    importers = sorted(
        module
        for module, path in MODULES.items()
        if any(name == "mlflow" or name.startswith("mlflow.")
               for name in _imported_names(module, path))
    )
    assert set(importers) - set(MLFLOW_ALLOWED) == {"robustsweep.tracking"}
