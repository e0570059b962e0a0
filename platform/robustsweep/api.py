"""The Python API: what the CLI does, callable from a notebook or another tool.

Every function takes a job as a ``JobConfig``, a mapping or a YAML path (with ``--set``-style
overrides), runs the same pre-flight as the CLI, and returns plain result objects instead of
printing. The CLI's sub-commands are thin layers over these functions.

    import robustsweep
    job = robustsweep.load_job("jobs/smoke.yaml", ["method.name=pgd"])
    result = robustsweep.train(job)            # TrialResult: metrics, trial_dir, run_id
    sweep = robustsweep.sweep("jobs/quickstart_sweep.yaml", overwrite=True)
    report = robustsweep.report(sweep.sweep_dir)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustsweep.config import JobConfig
from robustsweep.jobfile import load_job as _load_job
from robustsweep.jobfile import validate_job as _validate_job

if TYPE_CHECKING:
    from robustsweep.export import ExportResult
    from robustsweep.report import Report
    from robustsweep.resolve import ResolvedJob
    from robustsweep.state.manifest import Manifest
    from robustsweep.train.trial import TrialResult

JobLike = JobConfig | Mapping[str, Any] | str | os.PathLike[str]


def load_job(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> JobConfig:
    """Read a job YAML and apply ``key=value`` overrides (YAML-typed, like ``--set``)."""
    return _load_job(path, list(overrides))


def _validated(job: JobLike, overrides: Sequence[str]) -> tuple[JobConfig, str | None]:
    """The schema-validated job and the origin its error lines start with."""
    if isinstance(job, JobConfig):
        if overrides:
            raise ValueError("overrides apply to a YAML path or a mapping, not a JobConfig")
        return _validate_job(job.model_dump(mode="json"), origin=f"job {job.name!r}"), None
    if isinstance(job, Mapping):
        from robustsweep.config import apply_overrides

        raw = apply_overrides(dict(job), list(overrides))
        return _validate_job(raw, origin="job mapping"), None
    return load_job(job, overrides), str(job)


def resolve(job: JobLike, overrides: Sequence[str] = (), *, need_sweep: bool = False) -> ResolvedJob:
    """The pre-flight every command runs before Ray starts: the job validated, method knobs
    typed with their defaults, attack profiles and search spaces resolved, and every
    cross-check made (a mistake is one ``RobustSweepError`` line, never a failed trial)."""
    from robustsweep.resolve import resolve_job

    cfg, origin = _validated(job, overrides)
    return resolve_job(cfg, origin=origin, need_sweep=need_sweep)


def validate(job: JobLike, overrides: Sequence[str] = ()) -> JobConfig:
    """The pre-flight (``resolve``), returning the validated job."""
    return resolve(job, overrides).cfg


def train(
    job: JobLike, overrides: Sequence[str] = (), *, resume: bool = False, max_failures: int = 0
) -> TrialResult:
    """One trial on Ray Train (train, evaluate, results record, MLflow run)."""
    from robustsweep.errors import ConfigError
    from robustsweep.state.trial import TrialDir
    from robustsweep.train.trial import run_trial

    cfg = resolve(job, overrides).cfg
    if resume and not TrialDir(cfg.resolved_output_dir()).has_record():
        raise ConfigError(f"--resume: no trial in {cfg.resolved_output_dir()} to resume")
    return run_trial(cfg, resume=resume, max_failures=max_failures)


@dataclass
class SweepResult:
    """A sweep's directory, its manifest (every trial's status and metrics) and its report."""

    sweep_dir: Path
    manifest: Manifest
    complete: bool
    report: Report | None = None

    @property
    def trials(self) -> dict[str, dict[str, Any]]:
        return self.manifest.trials


def sweep(
    job: JobLike,
    overrides: Sequence[str] = (),
    *,
    overwrite: bool = False,
    job_file: str | None = None,
    build_report: bool = True,
) -> SweepResult:
    """A Ray Tune + Optuna sweep of the job's ``sweep`` section, then its report."""
    from robustsweep.sweep.tuner import start_sweep

    cfg = resolve(job, overrides, need_sweep=True).cfg
    if job_file is None and isinstance(job, (str, os.PathLike)):
        job_file = str(Path(job).resolve())
    outcome = start_sweep(cfg, job_file=job_file, overwrite=overwrite)
    return _sweep_result(outcome, build_report)


def resume_sweep(
    sweep_dir: str | os.PathLike[str],
    *,
    address: str | None = None,
    retry_failed: bool = False,
    trust_remote_code: bool = False,
    build_report: bool = True,
) -> SweepResult:
    """Finish a sweep whose driver stopped (finished trials are not re-run). Only a directory
    with a robustsweep manifest is accepted (Tune's state there is pickled), and a job that
    runs custom model code needs ``trust_remote_code`` from the caller, never from the dir."""
    from robustsweep.resolve import preflight_resume
    from robustsweep.sweep.tuner import resume_sweep as _resume

    preflight_resume(Path(sweep_dir), address, trust_remote_code)
    outcome = _resume(Path(sweep_dir), address=address, retry_failed=retry_failed)
    return _sweep_result(outcome, build_report)


def _sweep_result(outcome: Any, build_report: bool) -> SweepResult:
    result = SweepResult(outcome.sweep_dir, outcome.manifest, outcome.complete)
    if build_report and outcome.manifest.trials:
        result.report = report(outcome.sweep_dir)
    return result


def report(
    target: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    tracking_uri: str | None = None,
    log_to_mlflow: bool = True,
) -> Report:
    """Leaderboard, tables and plots of a sweep dir, a records dir or an MLflow parent run id."""
    from robustsweep.report import build_report as _build

    return _build(
        target if isinstance(target, str) else Path(target),
        out_dir=Path(out_dir) if out_dir is not None else None,
        tracking_uri=tracking_uri,
        log_to_mlflow=log_to_mlflow,
    )


@dataclass
class EvaluationResult:
    """Metrics of an after-the-fact evaluation of a trained trial, and the files it wrote."""

    trial_dir: Path
    metrics: dict[str, float]
    tags: dict[str, str]
    artifacts: list[Path] = field(default_factory=list)


def evaluate(
    trial_dir: str | os.PathLike[str],
    *,
    attacks: Sequence[str] | None = None,
    num_examples: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
) -> EvaluationResult:
    """Clean metrics, attacks and anomaly AUROC of a trained trial's newest checkpoint.

    Nothing is logged to MLflow here (``robustsweep eval`` does that); the per-example attack
    tables land in ``out_dir`` (default ``<trial>/eval``) and resume if interrupted.
    """
    from robustsweep.evaluate import trial as trials
    from robustsweep.evaluate.suite import clean_metrics, final_metrics, profile_tags
    from robustsweep.state.trial import TrialDir

    directory, checkpoint = trials.resolve(str(trial_dir), [Path("runs").resolve()])
    loaded = trials.load_trial(directory, checkpoint)
    update: dict[str, Any] = {}
    if attacks is not None:
        update["attacks"] = list(attacks)
    if num_examples is not None:
        update["attack_examples"] = num_examples
    eval_cfg = loaded.cfg.eval.model_validate({**loaded.cfg.eval.model_dump(), **update})
    out = Path(out_dir) if out_dir is not None else TrialDir(directory).eval_dir
    metrics = clean_metrics(loaded.method, loaded.task, eval_cfg)
    extra, artifacts = final_metrics(loaded.method, loaded.task, eval_cfg, out.resolve())
    metrics.update(extra)
    return EvaluationResult(directory, metrics, profile_tags(eval_cfg), artifacts)


def export(
    ref: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    merge: bool = False,
    search: Sequence[str | os.PathLike[str]] | None = None,
    tracking_uri: str | None = None,
    trust_remote_code: bool = False,
) -> ExportResult:
    """Write a trained trial as a Hugging Face model folder (docs/export.md).

    ``ref``: a trial or checkpoint dir, a sweep dir, or an MLflow run id (a trial's, or a
    sweep's parent run: then the report's leaderboard picks the best trial). ``out`` must not
    exist or be empty. LoRA trials give peft's adapter folder, or with ``merge`` the merged model;
    MVP and RSMI also get what ``robustsweep.export.load_exported`` needs to predict like the
    trial did.
    """
    from robustsweep.export import export_trial

    return export_trial(str(ref), Path(out), merge=merge,
                        search=[Path(p) for p in search or [Path("runs")]],
                        tracking_uri=tracking_uri, trust_remote_code=trust_remote_code)


__all__ = [
    "EvaluationResult",
    "SweepResult",
    "evaluate",
    "export",
    "load_job",
    "report",
    "resolve",
    "resume_sweep",
    "sweep",
    "train",
    "validate",
]
