"""Pareto fronts over finished trials (pruned trials ran on a smaller budget: never on a front)."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and strictly better somewhere."""
    better = False
    for x, y, mode in zip(a, b, modes):
        if mode == "min":
            x, y = -x, -y
        if x < y:
            return False
        if x > y:
            better = True
    return better


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (duplicates of a front point are all kept)."""
    return [
        i
        for i, p in enumerate(points)
        if not any(dominates(q, p, modes) for j, q in enumerate(points) if j != i)
    ]
