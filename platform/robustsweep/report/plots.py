"""Report figures: the clean-vs-robust Pareto plot and per-method knob plots (PNG, Agg).

The Pareto plot draws each robust share with its 95 % Wilson interval as an error bar (a point
without its uncertainty invites reading noise as a ranking) and the ``rank_min`` floors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from robustsweep.report import stats
from robustsweep.report.pareto import pareto_front
from robustsweep.report.records import SweepRecords, TrialRecord

_MARKERS = "osD^vP*Xh<>"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_axes(records: SweepRecords) -> tuple[str, str] | None:
    """(x, y) metrics of the Pareto plot: clean accuracy vs the robustness objective.

    y is the first objective other than x, else the first robust/proxy/OOD accuracy measured.
    """
    metrics = {k for t in records.finished() for k in t.metrics}
    objectives = [m for m, _ in records.objectives]
    x = "clean_accuracy" if "clean_accuracy" in metrics else (objectives[0] if objectives else None)
    if x is None:
        return None
    candidates = [m for m in objectives if m != x]
    for prefix in ("robust_accuracy/", "proxy_robust_accuracy/", "ood_accuracy/"):
        candidates += sorted(m for m in metrics if m.startswith(prefix))
    y = next((m for m in candidates if m in metrics), None)
    return (x, y) if y else None


def _colors(methods: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _scatter(ax: Any, trials: list[TrialRecord], x: str, y: str, **style: Any) -> None:
    """One point per trial in (x, y); nothing (and no legend entry) for an empty group."""
    if trials:
        ax.scatter([t.metrics[x] for t in trials], [t.metrics[y] for t in trials], **style)


def interval_errors(trials: list[TrialRecord], metric: str) -> list[list[float]] | None:
    """[below, above] distances to each trial's Wilson bounds (0 where unknown), or None when
    ``metric`` has no interval for any trial."""
    shares = [stats.proportion(t.metrics, metric) for t in trials]
    known = [s if s is not None and s.n > 0 else None for s in shares]
    if not any(known):
        return None
    below = [s.value - s.low if s else 0.0 for s in known]
    above = [s.high - s.value if s else 0.0 for s in known]
    return [below, above]


def _error_bars(ax: Any, trials: list[TrialRecord], x: str, y: str, color: Any) -> None:
    """Wilson intervals of x and/or y as error bars behind the points."""
    xerr, yerr = interval_errors(trials, x), interval_errors(trials, y)
    if trials and (xerr or yerr):
        ax.errorbar([t.metrics[x] for t in trials], [t.metrics[y] for t in trials], xerr=xerr,
                    yerr=yerr, fmt="none", ecolor=color, elinewidth=0.8, alpha=0.45, zorder=2)


def draw_floors(ax: Any, floors: dict[str, float], x: str, y: str) -> list[str]:
    """Dotted ``rank_min`` lines on the plotted axes; returns the floors on other metrics."""
    elsewhere = []
    for metric, floor in floors.items():
        label = f"rank_min: {metric} ≥ {floor:g}"
        if metric == x:
            ax.axvline(floor, color="tab:red", ls=":", lw=1.2, label=label, zorder=1)
        elif metric == y:
            ax.axhline(floor, color="tab:red", ls=":", lw=1.2, label=label, zorder=1)
        else:
            elsewhere.append(label)
    for label in elsewhere:  # a legend line for floors that cannot be drawn here
        ax.plot([], [], " ", label=f"{label} (not on these axes)")
    return elsewhere


def pareto_plot(records: SweepRecords, path: Path) -> tuple[Path, list[TrialRecord]] | None:
    """Every trial in (x, y); the front of finished trials outlined and joined; pruned marked.

    Returns the figure path and the front's trials, or None when two metrics are not available.
    """
    axes = pareto_axes(records)
    if axes is None:
        return None
    x, y = axes
    modes = [records.mode_of(x), records.mode_of(y)]
    plt = _pyplot()
    methods = sorted({t.method for t in records.trials})
    colors = _colors(methods)
    finished = [t for t in records.finished() if x in t.metrics and y in t.metrics]
    front = [
        finished[i] for i in pareto_front([(t.metrics[x], t.metrics[y]) for t in finished], modes)
    ]
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=120)
    for i, method in enumerate(methods):
        done = [t for t in finished if t.method == method]
        pruned = [
            t
            for t in records.trials
            if t.method == method and not t.finished and x in t.metrics and y in t.metrics
        ]
        marker = _MARKERS[i % len(_MARKERS)]
        _error_bars(ax, done, x, y, colors[method])
        _scatter(ax, done, x, y, s=46, color=colors[method], marker=marker, label=method,
                 alpha=0.9, zorder=3)
        _scatter(ax, pruned, x, y, s=40, color=colors[method], marker="x", alpha=0.6, zorder=2,
                 label=f"{method} (pruned/unfinished)")
    if front:
        line = sorted((t.metrics[x], t.metrics[y]) for t in front)
        ax.plot(
            [p[0] for p in line],
            [p[1] for p in line],
            color="black",
            lw=1,
            ls="--",
            zorder=1,
            label="Pareto front (finished trials)",
        )
        ax.scatter(
            [p[0] for p in line],
            [p[1] for p in line],
            s=150,
            facecolors="none",
            edgecolors="black",
            lw=1.2,
            zorder=4,
        )
        for t in front:
            ax.annotate(
                t.label,
                (t.metrics[x], t.metrics[y]),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=7,
            )
    draw_floors(ax, records.rank_min, x, y)
    missing = sum(1 for t in records.trials if not (x in t.metrics and y in t.metrics))
    ax.set_xlabel(f"{x} ({modes[0]})")
    bars = ", bars: 95% Wilson" if interval_errors(finished, y) else ""
    ax.set_ylabel(f"{y} ({modes[1]}{bars})")
    title = f"{records.name}: {len(records.trials)} trials, {len(front)} on the front"
    if missing:
        title += f", {missing} without both metrics (not shown)"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path, front


def varying_knobs(trials: list[TrialRecord], order: list[str] | None = None) -> list[str]:
    """Knobs that take more than one value across ``trials`` (the searched ones), in the
    search space's order when known (strength knobs come first there), else as recorded."""
    seen: dict[str, None] = dict.fromkeys(order or [])
    for trial in trials:
        seen.update(dict.fromkeys(trial.knobs))
    return [k for k in seen if len({repr(t.knobs.get(k)) for t in trials}) > 1]


def _log_scale(values: list[float]) -> bool:
    """Without a search space: log axis for positive values spanning 20x or more."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and len(values) > 1 and max(positive) / min(positive) >= 20


def _log_axis(ax: Any) -> None:
    """Log x axis labelled at 1, 2 and 5 per decade (readable over narrow ranges too)."""
    from matplotlib import ticker

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


# Knob plots wrap to at most this many panels a row, so 1-8 knobs stay readable (an 8-knob
# method used to be one 2,816-px-wide row with tiny fonts).
KNOB_PLOT_COLUMNS = 4
# Label every point with its trial number while there are at most this many points a panel.
KNOB_PLOT_MAX_LABELS = 24


def _knob_kind(values: list[Any]) -> str:
    """``integer``, ``float`` or ``categorical``: each gets its own kind of axis."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "integer"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "float"
    return "categorical"


def knob_plot(records: SweepRecords, method: str, metrics: list[str], path: Path) -> Path | None:
    """Metric vs each searched knob of one method: per metric, a block of panels (one per knob)
    wrapped at ``KNOB_PLOT_COLUMNS``; integer knobs on integer ticks, categorical knobs on
    named ticks, each point labelled with its trial number (readable without hovering)."""
    from matplotlib import ticker

    trials = [t for t in records.trials if t.method == method and t.metrics]
    space = {knob: bool(log) for knob, log in records.knob_space.get(method, [])}
    knobs = varying_knobs(trials, list(space))
    metrics = [m for m in metrics if any(m in t.metrics for t in trials)]
    if not knobs or not metrics:
        return None
    columns = min(KNOB_PLOT_COLUMNS, len(knobs))
    rows_per_metric = math.ceil(len(knobs) / columns)
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(metrics) * rows_per_metric,
        columns,
        figsize=(3.4 * columns, 2.8 * len(metrics) * rows_per_metric),
        dpi=110,
        squeeze=False,
    )
    for panel in range(len(knobs), columns * rows_per_metric):  # unused cells of each block
        for block in range(len(metrics)):
            axes[block * rows_per_metric + panel // columns][panel % columns].axis("off")
    for index, knob in enumerate(knobs):
        values = [t.knobs.get(knob) for t in trials]
        kind = _knob_kind(values)
        categories = sorted({repr(v) for v in values})
        for block, metric in enumerate(metrics):
            ax = axes[block * rows_per_metric + index // columns][index % columns]
            points = 0
            for finished, marker, alpha in ((True, "o", 0.9), (False, "x", 0.6)):
                group = [t for t in trials if t.finished == finished and metric in t.metrics]
                xs = [
                    categories.index(repr(t.knobs.get(knob))) if kind == "categorical"
                    else t.knobs.get(knob)
                    for t in group
                ]
                ys = [t.metrics[metric] for t in group]
                ax.scatter(xs, ys, marker=marker, alpha=alpha,
                           label="finished" if finished else "pruned/unfinished")
                points += len(group)
                if len(trials) <= KNOB_PLOT_MAX_LABELS:
                    for trial, x, y in zip(group, xs, ys):
                        number = trial.label.rsplit("-", 1)[-1].lstrip("0") or "0"
                        ax.annotate(number, (x, y), xytext=(3, 3), textcoords="offset points",
                                    fontsize=6, alpha=0.8)
            # without a search space (a records dir) only numeric knobs can guess a log axis
            log = space[knob] if knob in space else (
                kind != "categorical" and _log_scale([float(v) for v in values]))
            if kind != "categorical" and log:
                _log_axis(ax)
            elif kind == "integer":
                distinct = sorted(set(values))
                if len(distinct) <= 10:
                    ax.set_xticks(distinct)
                else:
                    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
            elif kind == "categorical":
                ax.set_xticks(range(len(categories)))
                ax.set_xticklabels([c.strip("'") for c in categories], fontsize=8,
                                   rotation=20 if len(categories) > 3 else 0)
                ax.set_xlim(-0.5, len(categories) - 0.5)
            ax.set_xlabel(knob, fontsize=9)
            if index % columns == 0:
                ax.set_ylabel(metric, fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{method}: metrics vs searched knobs ({len(trials)} trials; "
                 "numbers are trial numbers)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
