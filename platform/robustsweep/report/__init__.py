"""Sweep reports: leaderboard (Markdown + CSV), paired comparison against vanilla, seed
aggregates, Pareto plot, per-knob plots -> files + MLflow.

``build_report`` reads trial records (``records``: a sweep dir, a dir of results records or an
MLflow parent run, all through one code path), writes everything into one directory and, when
the parent run is reachable, logs the files to it under ``report/``. An unreachable MLflow only
costs the upload, never the report. The files never say which way the records were read, so a
sweep's report is byte-for-byte the same from its dir and from its parent run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from robustsweep.report import comparisons, stats
from robustsweep.report import leaderboard as lb
from robustsweep.report.plots import knob_plot, pareto_axes, pareto_plot
from robustsweep.report.records import SweepRecords, load

__all__ = ["Report", "build_report", "load"]

PROXY_NOTE = (
    "Pruned trials ran on a smaller budget: they are plotted with x markers and never enter the "
    "Pareto front. Proxy robustness metrics (proxy_*) only loosely track full-attack robust "
    "accuracy (methods.md §12.3); confirm finalists with the full attack profiles."
)
STATS_NOTE = (
    "Robust accuracy and attack success rate read `value [95% Wilson interval] n=N`: N is the "
    "number of attacked examples (for ASR the non-skipped ones). Intervals of two trials that "
    "overlap do not mean they are equal; use the paired comparison, which tests the difference "
    "on the same example ids (docs/evaluation.md, \"Uncertainty\")."
)
PAIRED_NOTE = (
    "Each method's leaderboard trial (and each seed of its knobs) against the vanilla trial with "
    "the same seed (else the best vanilla trial), on the example ids both were attacked on. "
    "Δ = method − vanilla robust accuracy; 95% CI from a paired bootstrap "
    f"({stats.BOOTSTRAP_RESAMPLES:,} resamples, seed {stats.BOOTSTRAP_SEED}); McNemar's exact "
    "p-value on the discordant examples (method-only / vanilla-only correct)."
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


def _shown_path(path: str | Path) -> str:
    """Relative to the working directory when inside it: a committed report (a study's records
    dir) then reads the same on every machine."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _source_line(records: SweepRecords) -> str:
    """Where the sweep lives, the same whichever way it was read (dir, records or MLflow)."""
    where = [f"dir `{_shown_path(records.sweep_dir)}`" if records.sweep_dir else "",
             f"MLflow parent run `{records.parent_run_id}`" if records.parent_run_id else ""]
    return "Sweep: " + (", ".join(w for w in where if w) or "unknown")


def _default_out(target: str | Path) -> Path:
    source = Path(str(target)).expanduser()
    return source / "report" if source.is_dir() else Path(f"report-{str(target)[:8]}")


def _table_section(title: str, note: str, head: list[str], rows: list[list[str]],
                   empty: str) -> list[str]:
    return ["", f"## {title}", "", note, "",
            lb.markdown_table(head, rows) if rows else f"_{empty}_"]


def _pareto_section(records: SweepRecords, out_dir: Path, files: list[Path]) -> list[str]:
    pareto = pareto_plot(records, out_dir / "pareto.png")
    if pareto is None:
        return []
    path, front = pareto
    files.append(path)
    x, y = pareto_axes(records) or ("", "")
    bars = " Error bars: 95% Wilson intervals." if stats.has_interval(y) else ""
    floors = " Dotted lines: `rank_min` floors." if records.rank_min else ""
    return [
        "",
        "## Pareto front",
        "",
        f"![Pareto front]({path.name})",
        "",
        f"`{x}` vs `{y}`; front: " + (", ".join(t.label for t in front) or "none")
        + "." + bars + floors,
    ]


def _knob_section(records: SweepRecords, out_dir: Path, files: list[Path]) -> list[str]:
    shown = list(
        dict.fromkeys([m for m, _ in records.objectives] + list(pareto_axes(records) or ()))
    )
    figures = []
    for method in sorted({t.method for t in records.trials}):
        figure = knob_plot(records, method, shown, out_dir / f"knobs_{method}.png")
        if figure is not None:
            figures.append(figure)
    files += figures
    return ["", "## Knobs", ""] + [f"![{p.stem}]({p.name})" for p in figures] if figures else []


def build_report(
    target: str | Path,
    *,
    out_dir: Path | None = None,
    tracking_uri: str | None = None,
    log_to_mlflow: bool = True,
) -> Report:
    """Write the report of a sweep dir, a dir of results records or an MLflow parent run id;
    log it to the parent run."""
    out_dir = (out_dir or _default_out(target)).resolve()
    records = load(str(target), tracking_uri, skip=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    head, rows = lb.leaderboard_rows(records)
    winners = lb.best_per_method(records)
    paired = comparisons.paired_table(records, winners)
    seeds = comparisons.seeds_table(records, lb.metric_columns(records.finished()), lb.header)
    files = [
        lb.write_csv(out_dir / "leaderboard.csv", head, rows),
        lb.write_csv(out_dir / "trials.csv", *lb.trials_table(records)),
        lb.write_csv(out_dir / "paired_vs_vanilla.csv", *paired),
        lb.write_csv(out_dir / "seeds.csv", *seeds),
    ]
    sections = [
        f"# Sweep report: {records.name}",
        "",
        _source_line(records),
        "",
        _summary(records),
        "",
        "## Leaderboard",
        "",
        lb.markdown_table(head, rows)
        if rows
        else "_No finished trial reported the ranking metric._",
    ]
    sections += _table_section("Paired comparison against vanilla", PAIRED_NOTE, *paired,
                               "No vanilla trial or no other method finished.")
    sections += _table_section(
        "Per method over seeds",
        "Finished trials with the same method and knobs over several seeds: mean ± sample std "
        "over seeds; robust accuracy also pooled over the examples of all seeds (Wilson).",
        *seeds, "No method has finished trials with the same knobs over several seeds.")
    sections += _pareto_section(records, out_dir, files)
    sections += _knob_section(records, out_dir, files)
    sections += ["", "## Notes", "", STATS_NOTE, "", PROXY_NOTE, ""]
    markdown = "\n".join(sections)
    md_path = out_dir / "leaderboard.md"
    md_path.write_text(markdown)
    files.insert(0, md_path)
    report = Report(out_dir, records, markdown, head, rows, files)
    if log_to_mlflow:
        report.logged_to = _log(records, files)
    return report


NOTE_LIMIT = 7_500  # characters of the leaderboard shown as the parent run's description


def _log(records: SweepRecords, files: list[Path]) -> str | None:
    """Upload the report files to the parent run; None (with a warning) if MLflow is down."""
    from robustsweep import tracking

    if not (records.tracking_uri and records.parent_run_id):
        return None
    try:
        tracking.log_artifacts(
            records.tracking_uri, records.parent_run_id, files, artifact_path="report"
        )
        leaderboard = next((p for p in files if p.name == "leaderboard.md"), None)
        if leaderboard is not None:  # the parent run's description in the MLflow UI
            text = leaderboard.read_text()
            if len(text) > NOTE_LIMIT:  # MLflow caps tag values; the full file is an artifact
                text = text[:NOTE_LIMIT] + "\n\n… (cut: see the report/leaderboard.md artifact)"
            tracking.set_tags(records.tracking_uri, records.parent_run_id,
                              {"mlflow.note.content": text})
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
                {"robustsweep.best_trial": top.label, "robustsweep.best_method": top.method,
                 **({"robustsweep.best_run_id": top.run_id} if top.run_id else {})},
            )
    except tracking.TrackingError as exc:
        import sys

        print(f"warning: report not logged to MLflow ({exc})", file=sys.stderr)
        return None
    return records.parent_run_id
