"""Sweep reports: leaderboard (Markdown + CSV), Pareto plot, per-knob plots -> files + MLflow.

``build_report`` reads trial records (``records``), writes everything into one directory and,
when the parent run is reachable, logs the files to it under ``report/``. An unreachable
MLflow only costs the upload, never the report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from robustsweep.report import leaderboard as lb
from robustsweep.report.plots import knob_plot, pareto_axes, pareto_plot
from robustsweep.report.records import SweepRecords, load

__all__ = ["Report", "build_report", "load"]

PROXY_NOTE = (
    "Pruned trials ran on a smaller budget: they are plotted with x markers and never enter the "
    "Pareto front. Proxy robustness metrics (proxy_*) only loosely track full-attack robust "
    "accuracy (methods.md §12.3); confirm finalists with the full attack profiles."
)


@dataclass
class Report:
    out_dir: Path
    records: SweepRecords
    markdown: str
    head: list[str]
    rows: list[list[str]]
    files: list[Path] = field(default_factory=list)
    logged_to: str | None = None


def _summary(records: SweepRecords) -> str:
    counts = Counter(t.status for t in records.trials)
    parts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    objectives = ", ".join(f"{mode} `{metric}`" for metric, mode in records.objectives)
    floors = ", ".join(f"`{m}` ≥ {v:g}" for m, v in records.rank_min.items())
    return (
        f"{len(records.trials)} trials ({parts}). Objectives: {objectives}. "
        f"Best trial per method by `{records.rank_by}`"
        + (f" among trials with {floors}." if floors else ".")
    )


def build_report(
    target: str | Path,
    *,
    out_dir: Path | None = None,
    tracking_uri: str | None = None,
    log_to_mlflow: bool = True,
) -> Report:
    """Write the report of a sweep dir or MLflow parent run id; log it to the parent run."""
    records = load(str(target), tracking_uri)
    if out_dir is None:
        source = Path(str(target)).expanduser()
        out_dir = source / "report" if source.is_dir() else Path(f"report-{str(target)[:8]}")
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    head, rows = lb.leaderboard_rows(records)
    files = [
        lb.write_csv(out_dir / "leaderboard.csv", head, rows),
        lb.write_csv(out_dir / "trials.csv", *lb.trials_table(records)),
    ]
    sections = [
        f"# Sweep report: {records.name}",
        "",
        f"Source: {records.source}",
        "",
        _summary(records),
        "",
        "## Leaderboard",
        "",
        lb.markdown_table(head, rows)
        if rows
        else "_No finished trial reported the ranking metric._",
    ]
    pareto = pareto_plot(records, out_dir / "pareto.png")
    if pareto is not None:
        path, front = pareto
        files.append(path)
        x, y = pareto_axes(records) or ("", "")
        sections += [
            "",
            "## Pareto front",
            "",
            f"![Pareto front]({path.name})",
            "",
            f"`{x}` vs `{y}`; front: " + (", ".join(t.label for t in front) or "none"),
        ]
    knob_figures = []
    shown = list(
        dict.fromkeys([m for m, _ in records.objectives] + list(pareto_axes(records) or ()))
    )
    for method in sorted({t.method for t in records.trials}):
        figure = knob_plot(records, method, shown, out_dir / f"knobs_{method}.png")
        if figure is not None:
            knob_figures.append(figure)
    if knob_figures:
        files += knob_figures
        sections += ["", "## Knobs", ""] + [f"![{p.stem}]({p.name})" for p in knob_figures]
    sections += ["", "## Notes", "", PROXY_NOTE, ""]
    markdown = "\n".join(sections)
    md_path = out_dir / "leaderboard.md"
    md_path.write_text(markdown)
    files.insert(0, md_path)
    report = Report(out_dir, records, markdown, head, rows, files)
    if log_to_mlflow:
        report.logged_to = _log(records, files)
    return report


def _log(records: SweepRecords, files: list[Path]) -> str | None:
    """Upload the report files to the parent run; None (with a warning) if MLflow is down."""
    from robustsweep import tracking

    if not (records.tracking_uri and records.parent_run_id):
        return None
    try:
        tracking.log_artifacts(
            records.tracking_uri, records.parent_run_id, files, artifact_path="report"
        )
        best = lb.best_per_method(records)
        if best:
            top = best[0]
            tracking.log_metrics(
                records.tracking_uri,
                records.parent_run_id,
                {f"best/{k}": v for k, v in top.metrics.items()},
            )
            tracking.set_tags(
                records.tracking_uri,
                records.parent_run_id,
                {"robustsweep.best_trial": top.label, "robustsweep.best_method": top.method},
            )
    except tracking.TrackingError as exc:
        import sys

        print(f"warning: report not logged to MLflow ({exc})", file=sys.stderr)
        return None
    return records.parent_run_id
