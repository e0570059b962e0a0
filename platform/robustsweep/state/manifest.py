"""The sweep manifest: our own record of a sweep, so resume never depends on Tune state alone.

``<sweep dir>/manifest.json`` holds the resolved job, the MLflow parent run, the Optuna study
and, per Tune trial id, its status, Optuna number, parameters, MLflow child run, node and last
metrics. Only the sweep driver writes it; every write replaces the file atomically (temp file,
fsync, rename), so a driver killed with ``kill -9`` leaves either the old or the new version.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from robustsweep.errors import ConfigError
from robustsweep.state.files import atomic_write_json, is_temp_file

MANIFEST_FILE = "manifest.json"
TRIALS_DIR = "trials"
SWEEP_JOB_FILE = "sweep.yaml"
TUNE_DIR = "tune"
DATA_CACHE_DIR = "cache"  # the loaded Task every trial reads (task_cache.py)
# What a sweep writes at the top of its output dir (a dir holding only these is a sweep's).
SWEEP_ENTRIES = frozenset(
    {
        MANIFEST_FILE,
        SWEEP_JOB_FILE,
        "optuna.db",
        "mlflow.db",
        "mlartifacts",
        TRIALS_DIR,
        "report",
        TUNE_DIR,
        DATA_CACHE_DIR,
    }
)
VERSION = 1
# What makes a manifest.json ours (a lookalike file of someone else's must never pass).
REQUIRED_KEYS = frozenset({"version", "job", "study", "tracking", "trials", "num_samples"})

PENDING, RUNNING, FINISHED, PRUNED, FAILED, INTERRUPTED = (
    "PENDING",
    "RUNNING",
    "FINISHED",
    "PRUNED",
    "FAILED",
    "INTERRUPTED",
)
TERMINAL = frozenset({FINISHED, PRUNED, FAILED})
# What each trial status closes its MLflow child run as.
RUN_STATUS = {
    FINISHED: "FINISHED",
    PRUNED: "KILLED",
    FAILED: "FAILED",
    INTERRUPTED: "KILLED",
    RUNNING: "KILLED",
    PENDING: "KILLED",
}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def resumed_tune_dir(resumes: int) -> str:
    """The fresh Tune experiment dir of a sweep resumed without Tune state."""
    return f"{TUNE_DIR}-{resumes}"


def unexpected_entries(sweep_dir: Path) -> list[str]:
    """Entries of ``sweep_dir`` a sweep never writes (our own atomic-write temp files allowed)."""
    return sorted(
        p.name
        for p in sweep_dir.iterdir()
        if p.name not in SWEEP_ENTRIES
        and not is_temp_file(p.name)
        and not re.fullmatch(rf"{TUNE_DIR}-\d+", p.name)  # resumed without Tune state
    )


class Manifest:
    """A sweep's manifest; call ``update``/``update_trial`` and it is saved at once."""

    def __init__(self, sweep_dir: Path, data: dict[str, Any]) -> None:
        self.sweep_dir = Path(sweep_dir).resolve()
        self.data = data
        self._lock = threading.Lock()

    # ---- life cycle ---------------------------------------------------------------------------
    @staticmethod
    def path_in(sweep_dir: Path) -> Path:
        return Path(sweep_dir) / MANIFEST_FILE

    @classmethod
    def exists(cls, sweep_dir: Path) -> bool:
        return cls.path_in(sweep_dir).is_file()

    @classmethod
    def create(
        cls,
        sweep_dir: Path,
        *,
        job: dict[str, Any],
        job_file: str | None,
        num_samples: int,
        study_name: str,
        storage: str,
        tracking_uri: str | None,
        experiment: str,
        parent_run_id: str | None,
        knob_space: dict[str, list] | None = None,
        records_dir: str | None = None,
    ) -> Manifest:
        data = {
            "version": VERSION,
            "status": RUNNING,
            "created": now(),
            "updated": now(),
            "job_file": job_file,
            "job": job,
            "num_samples": num_samples,
            "study": {"name": study_name, "storage": storage},
            "knob_space": knob_space or {},
            "tracking": {
                "uri": tracking_uri,
                "experiment": experiment,
                "parent_run_id": parent_run_id,
            },
            "tune_dir": TUNE_DIR,
            "records_dir": records_dir,
            "resumes": [],
            "trials": {},
        }
        manifest = cls(sweep_dir, data)
        manifest.save()
        return manifest

    @classmethod
    def load(cls, sweep_dir: Path) -> Manifest:
        path = cls.path_in(sweep_dir)
        if not path.is_file():
            raise ConfigError(f"{sweep_dir}: not a sweep directory (no {MANIFEST_FILE})")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable manifest ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: not a robustsweep sweep manifest")
        if data.get("version") != VERSION:
            raise ConfigError(f"{path}: manifest version {data.get('version')!r} is not {VERSION}")
        if not REQUIRED_KEYS <= data.keys():
            raise ConfigError(f"{path}: not a robustsweep sweep manifest")
        return cls(Path(sweep_dir), data)

    def save(self) -> None:
        with self._lock:
            self.data["updated"] = now()
            atomic_write_json(self.path_in(self.sweep_dir), self.data)

    # ---- access ---------------------------------------------------------------------------------
    @property
    def trials(self) -> dict[str, dict[str, Any]]:
        return self.data["trials"]

    @property
    def parent_run_id(self) -> str | None:
        return self.data["tracking"]["parent_run_id"]

    @property
    def tracking_uri(self) -> str | None:
        return self.data["tracking"]["uri"]

    @property
    def tune_dir(self) -> Path:
        return self.sweep_dir / self.data["tune_dir"]

    @staticmethod
    def trial_dir_in(sweep_dir: Path, trial_id: str) -> Path:
        """Where the trial with Tune id ``trial_id`` of the sweep in ``sweep_dir`` lives."""
        return Path(sweep_dir) / TRIALS_DIR / trial_id

    @staticmethod
    def data_cache_in(sweep_dir: Path) -> Path:
        """Where the trials of the sweep in ``sweep_dir`` share their loaded data."""
        return Path(sweep_dir) / DATA_CACHE_DIR

    def trial_dir(self, trial_id: str) -> Path:
        return self.trial_dir_in(self.sweep_dir, trial_id)

    def trial_dirs(self) -> list[Path]:
        """Every trial directory on disk, also of trials the manifest lost (sorted)."""
        return sorted(p for p in (self.sweep_dir / TRIALS_DIR).glob("*") if p.is_dir())

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.data.update(fields)
        self.save()

    def update_trial(self, trial_id: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into a trial's entry (created on first use) and save."""
        with self._lock:
            entry = self.trials.setdefault(
                trial_id,
                {
                    "trial_id": trial_id,
                    "status": PENDING,
                    "attempts": 0,
                    "trial_dir": f"{TRIALS_DIR}/{trial_id}",
                },
            )
            metrics = fields.pop("metrics", None)
            if metrics is not None:
                entry["metrics"] = {**entry.get("metrics", {}), **metrics}
            entry.update(fields)
        self.save()
        return entry

    def counts(self) -> Counter[str]:
        return Counter(t["status"] for t in self.trials.values())

    def terminal(self) -> list[dict[str, Any]]:
        return [t for t in self.trials.values() if t["status"] in TERMINAL]

    def remaining(self) -> int:
        """Trials still to run: the budget minus trials that ended."""
        return max(0, int(self.data["num_samples"]) - len(self.terminal()))

    def mark_interrupted(self) -> list[str]:
        """On resume: trials the dead driver left RUNNING become INTERRUPTED (until restarted)."""
        ids = [tid for tid, t in self.trials.items() if t["status"] in (RUNNING, PENDING)]
        with self._lock:
            for tid in ids:
                self.trials[tid]["status"] = INTERRUPTED
            self.data["resumes"].append(now())
            self.data["status"] = RUNNING
        self.save()
        return ids
