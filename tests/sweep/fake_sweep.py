"""A fake-but-realistic finished sweep dir: manifest.json + results.json as trials write them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robustsweep.state import manifest as mf

OBJECTIVES = [
    {"metric": "clean_accuracy", "mode": "max"},
    {"metric": "robust_accuracy/deepwordbug", "mode": "max"},
]

# (trial id, method, optuna number, status, knobs, clean, robust) — pruned "p1" looks best on
# both axes but ran one epoch only: it must stay off the front and off the leaderboard.
TRIALS: list[tuple[str, str, int, str, dict[str, Any], float, float]] = [
    ("v0", "vanilla", 0, mf.FINISHED, {}, 0.84, 0.10),
    (
        "g1",
        "pgd",
        1,
        mf.FINISHED,
        {"adv_max_norm": 0.1, "adv_lr": 0.01, "adv_steps": 1, "norm_type": "l2"},
        0.83,
        0.25,
    ),
    (
        "f2",
        "freelb",
        2,
        mf.FINISHED,
        {"adv_lr": 0.05, "adv_max_norm": 0.3, "adv_steps": 2},
        0.80,
        0.20,
    ),
    ("v3", "vanilla", 3, mf.FINISHED, {}, 0.82, 0.12),
    (
        "g4",
        "pgd",
        4,
        mf.FINISHED,
        {"adv_max_norm": 1.5, "adv_lr": 0.1, "adv_steps": 2, "norm_type": "linf"},
        0.78,
        0.35,
    ),
    (
        "f5",
        "freelb",
        5,
        mf.FINISHED,
        {"adv_lr": 0.2, "adv_max_norm": 0.0, "adv_steps": 1},
        0.81,
        0.18,
    ),
    (
        "p1",
        "pgd",
        6,
        mf.PRUNED,
        {"adv_max_norm": 0.5, "adv_lr": 0.05, "adv_steps": 1, "norm_type": "l2"},
        0.90,
        0.50,
    ),
    ("x7", "freelb", 7, mf.FAILED, {"adv_lr": 0.3, "adv_max_norm": 1.0, "adv_steps": 2}, 0.0, 0.0),
]
FRONT = {"v0", "g1", "g4"}
# The search spaces' knob order (strength first) and log flags, as the sweep records them.
KNOB_SPACE = {
    "vanilla": [],
    "pgd": [["adv_max_norm", True], ["adv_lr", True], ["adv_steps", False], ["norm_type", False]],
    "freelb": [["adv_lr", True], ["adv_max_norm", False], ["adv_steps", False]],
}
SWEEP = {
    "objectives": OBJECTIVES,
    "rank_by": "robust_accuracy/deepwordbug",
}  # non-dominated among finished trials (clean, robust both max)


def metrics(clean: float, robust: float, method: str) -> dict[str, float]:
    passes = {"vanilla": 1, "pgd": 3, "freelb": 2}[method] * 4096.0
    return {
        "clean_accuracy": clean,
        "ece": 0.05 + (1 - clean) / 10,
        "train_loss": 0.4,
        "ood_accuracy/imdb": clean - 0.12,
        "anomaly_auroc/news": 0.7,
        "robust_accuracy/deepwordbug": robust,
        "attack_success_rate/deepwordbug": 1 - robust / clean,
        "avg_queries/deepwordbug": 20.0,
        "cost/fwd_bwd_passes": passes,
        "cost/train_time_s": passes / 100,
        "epoch_time_s": passes / 100,
    }


def results_record(trial_id: str, method: str, knobs: dict, clean: float, robust: float) -> dict:
    """What finish_trial writes (robustsweep.train.results)."""
    m = metrics(clean, robust, method)
    epoch = {
        k: v for k, v in m.items() if not k.startswith(("robust_", "attack_", "avg_", "anomaly_"))
    }
    return {
        "run_id": f"run-{trial_id}",
        "trial_id": trial_id,
        "method": method,
        "knobs": knobs,
        "seed": 0,
        "config_hash": "0123456789abcdef",
        "git_sha": "unknown",
        "epochs": 2,
        "metrics": m,
        "history": [{"epoch": 1.0, **epoch}, {"epoch": 2.0, **epoch}],
        "data_stats": {},
        "finished_at": "2026-01-01T00:00:00+0000",
    }


def make_sweep_dir(
    root: Path, tracking_uri: str | None = None, parent_run_id: str | None = None
) -> Path:
    job = {"name": "fake", "sweep": SWEEP}
    manifest = mf.Manifest.create(
        root,
        job=job,
        job_file=None,
        num_samples=len(TRIALS),
        study_name="fake",
        storage=f"sqlite:///{root}/optuna.db",
        tracking_uri=tracking_uri,
        experiment="robustsweep",
        parent_run_id=parent_run_id,
        knob_space=KNOB_SPACE,
    )
    for trial_id, method, number, status, knobs, clean, robust in TRIALS:
        params = {
            "method": method,
            "optuna_trial": number,
            **{f"{method}.{k}": v for k, v in knobs.items()},
        }
        entry: dict[str, Any] = {
            "status": status,
            "method": method,
            "optuna_trial": number,
            "params": params,
            "knobs": knobs,
            "seed": None,
            "attempts": 1,
        }
        trial_dir = manifest.trial_dir(trial_id)
        trial_dir.mkdir(parents=True)
        if status == mf.FINISHED:
            record = results_record(trial_id, method, knobs, clean, robust)
            (trial_dir / "results.json").write_text(json.dumps(record, sort_keys=True))
            entry["metrics"] = {"clean_accuracy": 0.0}  # stale: results.json wins
        elif status == mf.PRUNED:
            entry["metrics"] = {
                "clean_accuracy": clean,
                "robust_accuracy/deepwordbug": robust,
                "epoch": 1.0,
            }
        else:
            entry["error"] = "TrialFailed: trial x7 failed: loss is NaN"
        manifest.update_trial(trial_id, **entry)
    return root
