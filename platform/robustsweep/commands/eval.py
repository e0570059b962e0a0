"""Evaluate a trained trial after the fact (attacks + anomaly detection) and log the results
into the trial's own MLflow run.

``--run`` takes a trial output dir, a checkpoint dir inside it, or an MLflow run id (found by
searching ``--search`` dirs for the trial record that names it). Per-example tables resume: run
the same command again after an interruption and it continues where it stopped.

Trust: only a directory with a robustsweep trial record (``TrialDir.trial_file`` holding a valid job)
is loaded, its checkpoint with ``torch.load(weights_only=True)``; a record asking for
``model.trust_remote_code`` is refused unless ``--trust-remote-code`` is given (docs/reliability.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robustsweep.cli import positive_float, positive_int

NAME = "eval"
HELP = "Attack / anomaly-evaluate a trained trial and log into its MLflow run"
ORDER = 60
DEFAULT_ATTACKS = ["deepwordbug", "pwws", "textfooler-glove"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="REF",
                        help="MLflow run id, trial output dir or checkpoint dir")
    parser.add_argument("--attack", action="append", default=None, metavar="PROFILE",
                        help="Attack profile (repeatable); default: the job's eval.attacks, "
                        f"else {' '.join(DEFAULT_ATTACKS)}")
    parser.add_argument("--num-examples", type=positive_int, default=None, metavar="N",
                        help="Examples per attack (default: the job's eval.attack_examples)")
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="Parallel attack workers (Ray actors); default: the job's setting")
    parser.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS",
                        help="Per-example time limit (a timeout is its own outcome)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="Where tables and plots go (default: <trial dir>/eval)")
    parser.add_argument("--search", type=Path, action="append", default=None, metavar="DIR",
                        help="Where to look for the trial of an MLflow run id (default: runs/)")
    parser.add_argument("--no-log", action="store_true", help="Do not log to MLflow")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="Allow a trial whose job sets model.trust_remote_code to run its "
                        "model's custom code (never turned on by the directory alone)")


def check_trial_record(trial_dir: Path, trust_remote_code: bool) -> dict[str, Any]:
    """The trial record if ``trial_dir`` holds a robustsweep trial whose model this command
    may load: a JSON object with a valid ``job``; remote code only with the user's flag."""
    import json

    from robustsweep.errors import ConfigError
    from robustsweep.jobfile import validate_job
    from robustsweep.state.trial import TrialDir

    path = TrialDir(trial_dir).trial_file
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable trial record ({exc})") from None
    if not isinstance(info, dict) or not isinstance(info.get("job"), dict):
        raise ConfigError(f"{path}: not a robustsweep trial record (no job)")
    cfg = validate_job(info["job"], origin=f"{path}: job")
    if cfg.model.trust_remote_code and not trust_remote_code:
        raise ConfigError(
            f"{path}: the trial's model.source {cfg.model.source!r} needs trust_remote_code "
            "(custom model code runs on load); pass --trust-remote-code if you trust it"
        )
    return info


def _eval_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The eval settings the flags change, checked before anything is loaded."""
    from robustsweep.errors import ConfigError, RobustSweepError
    from robustsweep.evaluate.profiles import load_profile

    update: dict[str, object] = {}
    if args.attack:
        for name in args.attack:
            if args.attack.count(name) > 1:
                raise ConfigError(f"--attack {name!r} given twice")
            try:
                load_profile(name)
            except RobustSweepError as exc:
                raise ConfigError(f"--attack: {exc}") from None
        update["attacks"] = list(args.attack)
    if args.num_examples is not None:
        update["attack_examples"] = args.num_examples
    if args.workers is not None:
        update["attack_workers"] = args.workers
    if args.timeout is not None:
        update["attack_timeout_s"] = args.timeout
    return update


def log_to_mlflow(tracking_uri: str, run_id: str, metrics: dict[str, float],
                  tags: dict[str, str], artifacts: list[Path], step: int) -> None:
    """Append metrics, tags and artifacts to an existing run (which stays in its state)."""
    from robustsweep import tracking

    tracking.log_metrics(tracking_uri, run_id, metrics, step=step)
    tracking.set_tags(tracking_uri, run_id, tags)
    for path in artifacts:
        sub = "eval" if path.parent.name in ("eval", "") else f"eval/{path.parent.name}"
        tracking.log_artifacts(tracking_uri, run_id, [path], artifact_path=sub)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from robustsweep.config import check_output_dir
    from robustsweep.errors import ConfigError, format_validation_error

    update = _eval_overrides(args)
    if args.out is not None:
        try:
            check_output_dir(args.out, "--out")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    from robustsweep.evaluate import trial as trials
    from robustsweep.evaluate.suite import clean_metrics, final_metrics, profile_tags
    from robustsweep.state.trial import TrialDir

    search = args.search or [Path("runs")]
    trial_dir, checkpoint = trials.resolve(args.run, [p.resolve() for p in search])
    check_trial_record(trial_dir, args.trust_remote_code)
    loaded = trials.load_trial(trial_dir, checkpoint)
    eval_cfg = loaded.cfg.eval
    update.setdefault("attacks", eval_cfg.attacks or DEFAULT_ATTACKS)
    try:
        eval_cfg = eval_cfg.model_validate({**eval_cfg.model_dump(), **update})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "eval flags")) from None
    out_dir = (args.out or TrialDir(trial_dir).eval_dir).resolve()
    print(f"trial {trial_dir} (checkpoint {checkpoint.relative_to(trial_dir)})")

    clean = clean_metrics(loaded.method, loaded.task, eval_cfg)
    metrics, artifacts = final_metrics(loaded.method, loaded.task, eval_cfg, out_dir)
    tags = profile_tags(eval_cfg)
    width = max(len(k) for k in [*clean, *metrics])
    for key, value in [*clean.items(), *sorted(metrics.items())]:
        print(f"  {key:<{width}}  {value:.4f}")
    for key, value in tags.items():
        if key.startswith("attack_profile/"):
            print(f"  {key:<{width}}  {value}")
    if args.no_log:
        return 0
    if not loaded.run_id:
        print("the trial record names no MLflow run: results stay in", out_dir)
        return 0
    log_to_mlflow(loaded.tracking_uri, loaded.run_id, metrics, tags, artifacts,
                  step=loaded.cfg.train.epochs)
    print(f"logged {len(metrics)} metrics and {len(artifacts)} artifacts to run {loaded.run_id}")
    return 0
