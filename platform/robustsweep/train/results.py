"""The end of a trial on rank 0: final evaluation, one results record, MLflow artifacts.

Each finished trial writes its results record (``TrialDir.results_file``) (RobustBench-style: metrics, knobs, config hash,
git SHA, seed, history, and per attack profile the outcome of every example by id), so reports
can be built even when MLflow is unreachable and two trials can be compared example by example.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from robustsweep import tracking
from robustsweep.config import JobConfig
from robustsweep.data import Task
from robustsweep.methods.base import RobustMethod
from robustsweep.state.trial import TrialDir

# Config sections that define *what* is trained and measured (not where it is logged).
_HASHED_SECTIONS = ("seed", "data", "model", "method", "train", "eval")


def config_hash(cfg: JobConfig, sections: tuple[str, ...] = _HASHED_SECTIONS) -> str:
    """Short hash of the parts of a config that change results.

    Only values that differ from the schema's defaults are hashed, so a new config field with
    a default leaves every earlier hash (and a records dir of a long study) valid; the cost is
    that changing a default does not change the hash of jobs that relied on it.
    """
    dumped = cfg.model_dump(mode="json", exclude_defaults=True)
    canonical = json.dumps({k: dumped.get(k) for k in sections}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def setup_hash(cfg: JobConfig) -> str:
    """``config_hash`` without the seed: the trials of one setup over several seeds share it,
    so reports can aggregate over seeds even when train settings are not among the knobs."""
    return config_hash(cfg, tuple(s for s in _HASHED_SECTIONS if s != "seed"))


def git_sha() -> str:
    """Commit of the robustsweep checkout, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def profiles_measured(metrics: dict[str, Any]) -> list[str]:
    """Attack profiles the final evaluation reported (stale tables of other profiles are left)."""
    return sorted(k.split("/", 1)[1] for k in metrics if k.startswith("robust_accuracy/"))


def finish_trial(method: RobustMethod, task: Task, cfg: JobConfig, state: Any, out: Path,
                 payload: dict[str, Any]) -> dict[str, Any]:
    """Run the final evaluation suite, write the results record, log everything to MLflow."""
    from robustsweep.evaluate import suite
    from robustsweep.evaluate.outcomes import attack_outcomes

    trial = TrialDir(out)
    artifacts_dir = trial.artifacts_dir
    final = {k: v for k, v in state.history[-1].items() if k != "epoch"} if state.history else {}
    extra: dict[str, float] = {}
    files: list[Path] = []
    if hasattr(suite, "final_metrics"):
        extra, files = suite.final_metrics(method, task, cfg, artifacts_dir)
    final.update(extra)
    record = {
        "run_id": payload.get("run_id"),
        "trial_id": payload.get("trial_id"),
        "method": cfg.method.name,
        "knobs": method.knobs.model_dump(mode="json"),
        "seed": cfg.seed,
        "config_hash": config_hash(cfg),
        "setup_hash": setup_hash(cfg),
        "git_sha": payload.get("git_sha") or git_sha(),
        "epochs": state.epoch,
        "metrics": final,
        "history": state.history,
        "data_stats": task.stats,
        # per profile {"ids", "outcomes", "profile_hash"}: what paired comparisons pair on
        "attack_outcomes": attack_outcomes(artifacts_dir / "attacks", profiles_measured(extra)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    results_file = trial.write_results(record)
    uri, run_id = payload.get("tracking_uri"), payload.get("run_id")
    if uri and run_id:
        tracking.log_metrics(uri, run_id, extra, step=state.epoch)
        tracking.set_tags(uri, run_id, suite.profile_tags(cfg))
        tracking.log_artifacts(uri, run_id, [results_file])
        evaluation_files = sorted({p.resolve() for p in [*artifacts_dir.glob("*"), *files] if p.is_file()})
        tracking.log_artifacts(uri, run_id, evaluation_files, artifact_path="evaluation")
    return record
