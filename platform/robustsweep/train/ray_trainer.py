"""Ray Train wiring: one trial = one ``TorchTrainer`` with N workers running ``fit``.

The worker function rebuilds everything from the plain-dict payload (so it works on any node),
wraps the model in DDP when there are several workers, reports once per epoch with a
checkpoint from rank 0, and logs to MLflow from rank 0 through an explicit absolute URI.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from robustsweep.config import ClusterConfig, JobConfig
from robustsweep.state.trial import (
    META_FILE,
    STATE_FILE,
    TrialDir,
    checkpoint_epoch,
    checkpoint_name,
    read_checkpoint,
    write_checkpoint,
)

HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
# Quiet, localhost-only defaults; users can override any of them in their environment.
RAY_ENV_DEFAULTS = {
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_DEDUP_LOGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Train V2's controller polls its workers this often (default 2 s): a trial's start and end
    # each wait up to one interval; one poll is one cheap actor call.
    HEALTH_CHECK_ENV: "0.25",
}
# Only for the local instance we start ourselves: no preemption watcher (no spot nodes to lose
# on one machine; its actor's shutdown logs an ERROR line from core_worker.cc on every trial).
LOCAL_RAY_ENV_DEFAULTS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
# Ray 2.60 turns token auth on for a new local instance (good: other users of a shared machine
# cannot run code on it) and logs a WARNING saying so on every start. Setting RAY_AUTH_MODE
# ourselves after `import ray` leaves Ray's cached config behind (its GCS then rejects the
# driver), so the announcement is silenced at its logger instead; auth errors still show.
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
# What the driver passes to every Ray process of the job (trial drivers, Train workers).
FORWARDED_ENV = (
    "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "ROBUSTSWEEP_CACHE", "NLTK_DATA",
    "TA_CACHE_DIR", "TOKENIZERS_PARALLELISM", "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "ROBUSTSWEEP_PROGRESS", "TQDM_DISABLE",
    "ROBUSTSWEEP_MLFLOW_RETRY_S", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
    HEALTH_CHECK_ENV,
)
# "bars": live tqdm bars (a terminal); "lines": none, the driver's one line per trial event is
# the progress (logs, CI, nohup). Decided once in the driver: workers have no terminal.
PROGRESS_ENV = "ROBUSTSWEEP_PROGRESS"
# Worker log lines that say nothing a user can act on; real warnings and errors pass through.
RAY_NOISE = (
    re.compile(r"core_worker\.cc.*PreemptionWatcher"),
    re.compile(r"Failed to query Ray Train Controller actor state"),
    re.compile(r"Token authentication is (enabled|disabled) for this Ray cluster"),
)
TQDM_LINE = re.compile(r"\d+%\|")
# Runs in every Ray worker process of the job (runtime_env worker_process_setup_hook), so
# this module imports no torch at the top: Train's controller, Tune's and Ray's helper actors
# would each pay a torch import (seconds of CPU a trial's worker then waits for, per trial).
SETUP_HOOK = "robustsweep.train.ray_trainer.pin_ray_address"


def pin_ray_address() -> None:
    """Point Ray's own in-worker clients at the instance this worker belongs to.

    Train V2's PlacementGroupCleaner (a detached actor) polls the State API through
    ``StateApiClient(address=None)``; without RAY_ADDRESS that auto-detects running GCS
    processes and raises "Found multiple active Ray instances" as soon as a second job runs
    its own local instance on the machine.
    """
    import ray

    if ray.is_initialized():
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def progress_mode() -> str:
    """``bars`` when the driver writes to a terminal, else ``lines`` (ROBUSTSWEEP_PROGRESS wins)."""
    mode = os.environ.get(PROGRESS_ENV)
    if mode in ("bars", "lines"):
        return mode
    return "bars" if sys.stdout.isatty() else "lines"


def _set_console_env() -> None:
    """Fix the progress mode for the whole job; without a terminal, no tqdm bar anywhere."""
    mode = os.environ.setdefault(PROGRESS_ENV, progress_mode())
    if mode == "lines":
        os.environ.setdefault("TQDM_DISABLE", "1")


def is_noise(line: str) -> bool:
    """A worker log line to drop: known Ray noise, or a progress bar when there is no terminal."""
    if any(p.search(line) for p in RAY_NOISE):
        return True
    return os.environ.get(PROGRESS_ENV) == "lines" and (
        "__ray_tqdm_magic_token__" in line or bool(TQDM_LINE.search(line))
    )


# Tracebacks Ray itself calls harmless when transient (printed under CPU load by Train V2's
# autoscaling coordinator): the message and its traceback block are dropped together.
TRANSIENT_TRACEBACKS = (re.compile(r"Failed to send resource request for train-"),)
_TRACEBACK_BODY = re.compile(r"^(Traceback \(most recent call last\):|\s|[\w.]+(Error|Exception)\b)")


def drop_transient_tracebacks(lines: list[str]) -> list[str]:
    """``lines`` without each TRANSIENT_TRACEBACKS message and the traceback that follows it."""
    kept: list[str] = []
    skipping = False
    for line in lines:
        if any(p.search(line) for p in TRANSIENT_TRACEBACKS):
            skipping = True
            continue
        if skipping and _TRACEBACK_BODY.match(line):
            if not line[:1].isspace() and not line.startswith("Traceback"):
                skipping = False  # the exception line closes the block
            continue
        skipping = False
        kept.append(line)
    return kept


def _filter_worker_logs() -> None:
    """Drop ``is_noise`` lines from what Ray forwards to the driver's console (log_to_driver).

    Ray has no public hook for this; the wrapper replaces its module-level printer and falls
    back to printing everything if that function ever moves.
    """
    try:
        import ray._private.worker as ray_worker
    except ImportError:
        return
    original = getattr(ray_worker, "print_worker_logs", None)
    if original is None or getattr(original, "robustsweep_filter", False):
        return

    def filtered(data: dict[str, Any], print_file: Any, ignore_prefix: bool = False) -> None:
        lines = [line for line in drop_transient_tracebacks(data.get("lines", []))
                 if not is_noise(line)]
        if lines:
            original({**data, "lines": lines}, print_file, ignore_prefix)

    filtered.robustsweep_filter = True  # type: ignore[attr-defined]
    ray_worker.print_worker_logs = filtered


def ensure_ray(cluster: ClusterConfig) -> None:
    """Connect to the configured cluster (``address`` / RAY_ADDRESS) or start a local one.

    A local instance binds 127.0.0.1 (dashboard included: Train V2's State API needs it to
    clean up stopped trials, offline.md); it declares a ``trial_driver``
    resource so Tune trial drivers never take the CPUs their Train workers need (on a 2-core
    machine a driver holding 1 CPU deadlocks a 2-worker trial).
    """
    import ray

    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    _set_console_env()
    if ray.is_initialized():
        return
    _filter_worker_logs()
    logging.getLogger(RAY_AUTH_LOGGER).setLevel(logging.ERROR)
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    if not address:
        for key, value in LOCAL_RAY_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
    runtime_env = {
        "env_vars": {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ},
        "worker_process_setup_hook": SETUP_HOOK,
    }
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    num_cpus = cluster.num_cpus or os.cpu_count() or 1
    ray.init(
        num_cpus=num_cpus,
        resources={"trial_driver": 1000},
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        _node_ip_address=cluster.node_ip_address,
        runtime_env=runtime_env,
        log_to_driver=True,
        configure_logging=True,
        logging_level="WARNING",
    )


def cpus_per_worker(cfg: JobConfig) -> float:
    """CPUs per Train worker: configured, or the cluster's CPUs split evenly."""
    if cfg.scaling.cpus_per_worker:
        return cfg.scaling.cpus_per_worker
    import ray

    total = ray.cluster_resources().get("CPU", 1.0)
    return max(1.0, math.floor(total / cfg.scaling.num_workers))


def _quiet_report_log() -> None:
    """Ray Train V2 logs every report (metrics dict included) at INFO under a logger named after
    its file path, which LoggingConfig does not reach; it buries the progress bars."""

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # a Ray version without this module: nothing to quiet
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _warn(message: str) -> None:
    """A worker warning: stderr reaches the driver's console (log_to_driver) and Ray's logs."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _claimed_epoch(directory: Path) -> int:
    """The epoch ``meta.json`` claims (ordering only; completeness is ``checkpoint_epoch``)."""
    try:
        return int(json.loads((directory / META_FILE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def checkpoint_candidates(trial_dir: Path | None, first: list[Path]) -> list[Path]:
    """``first`` (Ray's or ``--resume``'s pick), then every checkpoint under ``trial_dir/ray``,
    newest epoch first: the order in which a resume falls back."""
    found = list(TrialDir(trial_dir).checkpoints_dir.glob(f"*/*/{META_FILE}")) if trial_dir else []
    others = sorted((m.parent for m in found),
                    key=lambda d: (_claimed_epoch(d), d.stat().st_mtime), reverse=True)
    ordered: list[Path] = []
    for directory in [*first, *others]:
        if directory.resolve() not in {d.resolve() for d in ordered}:
            ordered.append(directory)
    return ordered


def load_resume_state(
    trial_dir: Path | None, first: list[Path]
) -> tuple[dict[str, Any] | None, Path | None]:
    """The newest checkpoint that loads, and where it is; each bad one is named in a warning.

    A worker killed while a checkpoint is copied leaves a truncated ``state.pt`` (size differs
    from ``meta.json``); a corrupt disk leaves one that no longer unpickles. Either way the
    trial resumes from the previous complete checkpoint instead of failing or starting over.
    """
    for directory in checkpoint_candidates(trial_dir, first):
        state_file = directory / STATE_FILE
        if checkpoint_epoch(directory) < 0:
            _warn(f"checkpoint {state_file} is incomplete (missing, or its size differs from "
                  f"{META_FILE}); falling back to the previous checkpoint")
            continue
        try:
            return read_checkpoint(directory), directory
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a corrupt file
            text = str(exc).strip()
            reason = text.splitlines()[0][:200] if text else type(exc).__name__
            _warn(f"checkpoint {state_file} cannot be loaded ({reason}); falling back to the "
                  "previous checkpoint")
    if first:
        _warn("no complete checkpoint left: training starts again from epoch 1")
    return None, None


def _mark_resumed(uri: str | None, run_id: str | None, state: dict[str, Any], source: str) -> None:
    """Make a resumption visible in MLflow: tags plus a metric point per resumption."""
    if not (uri and run_id):
        return
    from robustsweep import tracking

    epoch = int(state.get("fit_state", {}).get("epoch", 0))
    try:
        tracking.set_tags(uri, run_id, {"robustsweep.resumed": source,
                                        "robustsweep.resumed_from_epoch": str(epoch)})
        tracking.log_metrics(uri, run_id, {"resume/from_epoch": float(epoch),
                                           "resume/at_unix": time.time()}, step=epoch)
    except tracking.TrackingError as exc:  # a marker is not worth failing the resumed trial
        _warn(f"could not mark the resumption in MLflow: {exc}")


def _attempt_checkpoints(payload: dict[str, Any]) -> list[Path]:
    """Checkpoints this attempt already wrote, newest first: after a worker restart, one that
    was persisted but not yet registered with Ray (a kill inside ``ray.train.report``) still
    counts, instead of training again from epoch 1."""
    if not payload.get("attempt"):
        return []
    attempt = TrialDir(Path(payload["trial_dir"])).checkpoints_dir / payload["attempt"]
    done = [(checkpoint_epoch(meta.parent), meta.parent) for meta in attempt.glob(f"*/{META_FILE}")]
    return [directory for epoch, directory in sorted(done, reverse=True) if epoch >= 0]


def _resume(checkpoint: Any, payload: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The state to continue from: Ray's checkpoint (or this attempt's newest) after a worker
    restart, else --resume's."""
    trial_dir = Path(payload["trial_dir"])
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state, _ = load_resume_state(trial_dir, [Path(directory)])
        return state, "worker_restart"
    if own := _attempt_checkpoints(payload):
        state, _ = load_resume_state(trial_dir, own[:1])
        return state, "worker_restart"
    if payload.get("resume_path"):
        state, _ = load_resume_state(trial_dir, [Path(payload["resume_path"])])
        return state, "resume"
    return None, ""


def train_worker(payload: dict[str, Any]) -> None:
    """Runs on every Train worker: build task/model/method, resume, fit, final eval (rank 0)."""
    import ray.train
    import ray.train.torch
    import torch
    from ray.experimental.tqdm_ray import tqdm as ray_tqdm

    from robustsweep import tracking
    from robustsweep.task_cache import cached_task
    from robustsweep.train.loop import fit, prepare_trial
    from robustsweep.train.results import finish_trial

    _quiet_report_log()
    cfg = JobConfig.model_validate(payload["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(payload["threads"])))
    cache = Path(payload["data_cache"]) if payload.get("data_cache") else None
    task = cached_task(cfg.data, cfg.eval.anomaly, cache)  # seeded by cfg.data, not global RNG
    adapter, method = prepare_trial(cfg, task, ray.train.torch.get_device())
    if world > 1:
        adapter.model = ray.train.torch.prepare_model(adapter.core, move_to_device=False)

    resume, source = _resume(ray.train.get_checkpoint(), payload)
    out = Path(payload["trial_dir"])
    uri, run_id = payload.get("tracking_uri"), payload.get("run_id")
    if resume is not None and rank == 0:
        _mark_resumed(uri, run_id, resume, source)

    def on_epoch_end(epoch: int, metrics: dict[str, float], state_fn: Any) -> None:
        report = {**metrics, "epoch": epoch, "done": epoch == cfg.train.epochs}
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                write_checkpoint(Path(tmp), state_fn(), epoch)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
                if uri and run_id:
                    tracking.log_metrics(uri, run_id, metrics, step=epoch)
            ray.train.report(report, checkpoint=ckpt, checkpoint_dir_name=checkpoint_name(epoch))
        # rank 0 only: its synchronous report returns once the checkpoint is persisted, so the
        # injected failure never cuts a checkpoint copy short (real crashes may; see state/trial.py)
        if rank == 0 and epoch == payload.get("fail_after_epoch"):
            raise RuntimeError(f"injected failure after epoch {epoch} (ROBUSTSWEEP_FAIL_AFTER_EPOCH)")

    def progress(total: int, desc: str) -> Any:
        return ray_tqdm(total=total, desc=desc)

    # Bars only for a terminal: in a log, Ray re-prints every bar around each forwarded line.
    bars = os.environ.get(PROGRESS_ENV, "lines") == "bars"
    def on_steps(step: int, metrics: dict[str, float]) -> None:
        if uri and run_id:  # one log_batch per flush (train.log_every_steps)
            tracking.log_metrics(uri, run_id, metrics, step=step)

    state = fit(adapter, method, task, cfg, rank=rank, world_size=world, resume=resume,
                on_epoch_end=on_epoch_end, progress=progress if bars else None,
                plot_dir=TrialDir(out).artifacts_dir, on_steps=on_steps)
    if rank == 0:
        finish_trial(method, task, cfg, state, out, payload)


def build_trainer(cfg: JobConfig, payload: dict[str, Any], storage: Path, attempt: str,
                  callbacks: list[Any] | None = None, max_failures: int = 0) -> Any:
    """The TorchTrainer for one trial (checkpoints under ``storage/attempt/epoch_NNN``)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    cpus = cpus_per_worker(cfg)
    payload = {**payload, "threads": max(1, int(cpus)), "attempt": attempt}
    resources = {"CPU": cpus}
    if cfg.scaling.use_gpu:  # a share (0.25) lets several trials' workers share one GPU
        resources["GPU"] = cfg.scaling.gpu_share()
    return TorchTrainer(
        train_worker,
        train_loop_config=payload,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=attempt,
            storage_path=str(storage),
            # newest N per attempt: the final model is always kept
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
            logging_config=ray.train.LoggingConfig(log_level=os.environ.get("ROBUSTSWEEP_TRAIN_LOG_LEVEL", "WARNING")),
        ),
    )
