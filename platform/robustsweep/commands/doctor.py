"""Check what a run needs here and print the command that fixes each missing piece.

Always: offline resources (NLTK data, TextAttack), which attack recipes can run, GPU/CUDA
visibility. With a job (``robustsweep doctor JOB.yaml``) also: its Ray cluster address, its
MLflow tracking URI (both with a short timeout, never a hang) and whether its hub models and
datasets are in the Hugging Face cache. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from robustsweep.config import JobConfig

NAME = "doctor"
HELP = "Check offline resources, GPU, Ray, MLflow and the HF cache; print how to fix gaps"
ORDER = 85

OK, MISSING, NOTE = "ok", "MISSING", "note"
CUDA_TORCH = ("pip install --force-reinstall torch==2.13.0 --index-url "
              "https://download.pytorch.org/whl/cu128   # pick the CUDA build your driver runs")
RAY_HEAD = ("ray start --head --node-ip-address=<private ip> --port=6379 "
            "--resources='{\"trial_driver\": 100}'   (docs/multi-node.md)")
MLFLOW_SERVER = ("mlflow server --backend-store-uri sqlite:////shared/mlflow/mlflow.db "
                 "--artifacts-destination /shared/mlflow/artifacts --host <private ip> --port 5000")


@dataclass
class Finding:
    """One line of the doctor's output; ``fix`` is the command that resolves it."""

    status: str
    name: str
    detail: str
    fix: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", nargs="?", help="Also check this job's cluster, tracking URI and "
                        "hub models/datasets")
    parser.add_argument("--deep", action="store_true",
                        help="Also load WordNet fully and build each runnable offline attack")
    parser.add_argument("--timeout", type=float, default=3.0, metavar="S",
                        help="Seconds to wait for the Ray cluster and the MLflow server")


# ---- GPU ------------------------------------------------------------------------------------


def check_gpu(required: bool) -> Finding:
    """CUDA devices torch can see; missing ones only fail a job that sets scaling.use_gpu."""
    import torch

    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        return Finding(OK, "GPU", f"{torch.cuda.device_count()} x {', '.join(names)} "
                       f"(torch {torch.__version__}, CUDA {torch.version.cuda})")
    if torch.version.cuda is None:
        detail, fix = f"torch {torch.__version__} is a CPU-only build", CUDA_TORCH
    else:
        detail = f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
        fix = "nvidia-smi   # driver loaded? CUDA_VISIBLE_DEVICES set to an empty list?"
    return Finding(MISSING if required else NOTE, "GPU", detail + (
        "; the job sets scaling.use_gpu" if required else "; CPU training only"), fix)


# ---- Ray ------------------------------------------------------------------------------------


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """Host and port of a Ray address (``host:port``, ``ray://host:port``); None for ``auto``."""
    if address in ("auto", "local"):
        return None
    default = 10001 if address.startswith("ray://") else 6379
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    return parsed.hostname or "127.0.0.1", parsed.port or default


def tcp_reachable(host: str, port: int, timeout: float) -> str:
    """'' if a TCP connection opens within ``timeout`` seconds, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return ""
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def check_ray(address: str | None, timeout: float) -> Finding:
    """The cluster a run attaches to answers on its port (no ray.init: that can wait minutes)."""
    if not address:
        return Finding(OK, "Ray", "no cluster address: each run starts a local instance on "
                       "127.0.0.1 (set cluster.address or RAY_ADDRESS to use a cluster)")
    endpoint = ray_endpoint(address)
    if endpoint is None:
        return Finding(NOTE, "Ray", f"address {address!r}: ray.init looks for a cluster "
                       "started on this machine", "ray status")
    error = tcp_reachable(*endpoint, timeout)
    if error:
        return Finding(MISSING, "Ray", f"{address}: no answer within {timeout:g} s ({error})",
                       f"{RAY_HEAD}; then `ray status --address={endpoint[0]}:{endpoint[1]}`")
    return Finding(OK, "Ray", f"{address} answers (token auth: export RAY_AUTH_MODE=token and "
                   "copy ~/.ray/auth_token if the cluster uses it)")


# ---- MLflow ---------------------------------------------------------------------------------


def check_mlflow(uri: str | None, timeout: float) -> Finding:
    """An MLflow server answers /health; a local sqlite store's directory can be written."""
    if not uri:
        return Finding(NOTE, "MLflow", "tracking disabled or no URI")
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                return Finding(OK, "MLflow", f"{uri} answers")
        except urllib.error.HTTPError as exc:
            return Finding(MISSING, "MLflow", f"{uri} answered HTTP {exc.code} on /health: "
                           "not an MLflow server (or a proxy in front of it)", MLFLOW_SERVER)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return Finding(MISSING, "MLflow", f"{uri}: no answer within {timeout:g} s "
                           f"({reason})", MLFLOW_SERVER)
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
        if os.access(existing, os.W_OK):
            return Finding(OK, "MLflow", f"{uri} (local store, created on first run)")
        return Finding(MISSING, "MLflow", f"{uri}: {existing} is not writable",
                       "--set tracking.tracking_uri=sqlite:///<writable dir>/mlflow.db")
    return Finding(NOTE, "MLflow", f"{uri}: not checked (only http(s) and sqlite are)")


# ---- Hugging Face cache ---------------------------------------------------------------------


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def in_hub_cache(repo_id: str, kind: str, cache: Path) -> bool:
    """Whether the hub cache holds a snapshot of ``repo_id`` (``kind``: models/datasets).

    A bare dataset name (``glue``) also matches its owner's canonical repo (``nyu-mll/glue``).
    """
    flat = repo_id.replace("/", "--")
    folders = [cache / f"{kind}--{flat}"]
    if "/" not in repo_id and cache.is_dir():
        folders += sorted(cache.glob(f"{kind}--*--{flat}"))
    return any(any((f / "snapshots").glob("*/*")) for f in folders if (f / "snapshots").is_dir())


def check_hub_sources(job: JobConfig, cache: Path, offline: bool) -> list[Finding]:
    """One finding per hub model/dataset of ``job``: cached, or the prefetch that caches it."""
    from robustsweep.commands.prefetch import hub_sources

    models, datasets = hub_sources(job)
    found = []
    for kind, flag, sources in (("models", "--model", models), ("datasets", "--data", datasets)):
        for source in sources:
            repo = source[3:].partition(":")[0] if kind == "datasets" else source[3:]
            if in_hub_cache(repo, kind, cache):
                found.append(Finding(OK, "HF cache", f"{source} in {cache}"))
                continue
            status, when = (MISSING, "HF_HUB_OFFLINE is set") if offline else (
                NOTE, "downloaded at run time (every node needs hub access)")
            found.append(Finding(status, "HF cache", f"{source} not in {cache}: {when}",
                                 f"robustsweep prefetch {flag} {source}   (on a connected "
                                 "machine; copy its HF_HOME to the nodes)"))
    return found


# ---- offline resources and attacks (unchanged behaviour) ------------------------------------


def _build_offline(names: list[str]) -> dict[str, str]:
    """Actually build each attack around a tiny victim; name -> error ('' when it built)."""
    from robustsweep.config import ModelConfig
    from robustsweep.evaluate.profiles import load_profile
    from robustsweep.evaluate.recipes import build_attack
    from robustsweep.evaluate.wrapper import MethodModelWrapper
    from robustsweep.methods import build
    from robustsweep.models import load_model

    method = build("vanilla")
    method.setup(load_model(ModelConfig(), 2, 64))
    errors = {}
    for name in names:
        try:
            build_attack(load_profile(name), MethodModelWrapper(method))
            errors[name] = ""
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return errors


def offline_findings(deep: bool) -> list[Finding]:
    from robustsweep.resources import textattack_env

    return [Finding(OK if c.ok else MISSING, c.name, c.detail,
                    "" if c.ok else "robustsweep prefetch")
            for c in [*textattack_env.checks(deep=deep), textattack_env.check_plain_import()]]


def report_attacks(deep: bool) -> bool:
    """Print which recipes can run; True when every offline recipe can."""
    from robustsweep.evaluate.recipes import RECIPES, missing_resources

    runnable = {}
    print("attack recipes:")
    for recipe in RECIPES.values():
        missing = missing_resources(recipe)
        runnable[recipe.name] = not missing
        kind = "offline" if recipe.offline else "connected"
        state = "can run" if not missing else "cannot run: " + "; ".join(missing)
        print(f"  {recipe.name:<18} [{kind}] {recipe.title}\n      needs: {recipe.needs}\n"
              f"      {state}")
    if deep:
        offline = [r.name for r in RECIPES.values() if r.offline and runnable[r.name]]
        for name, error in _build_offline(offline).items():
            print(f"  build {name}: {'ok' if not error else error}")
            runnable[name] = runnable[name] and not error
    ok = all(runnable[r.name] for r in RECIPES.values() if r.offline)
    if not ok:
        print("some offline attacks cannot run: run `robustsweep prefetch`")
    return ok


def job_findings(job: JobConfig, timeout: float) -> list[Finding]:
    from huggingface_hub import constants

    address = job.cluster.address or os.environ.get("RAY_ADDRESS")
    uri = job.resolved_tracking_uri() if job.tracking.enabled else None
    return [check_ray(address, timeout), check_mlflow(uri, timeout),
            *check_hub_sources(job, hub_cache_dir(), bool(constants.HF_HUB_OFFLINE))]


def print_findings(title: str, findings: list[Finding]) -> None:
    print(title)
    for f in findings:
        print(f"  {f.status:<8} {f.name}: {f.detail}")
        if f.fix and f.status != OK:
            print(f"           fix: {f.fix}")


def run(args: argparse.Namespace) -> int:
    from robustsweep.resources import cache_dir

    job = None
    if args.job:
        from robustsweep.jobfile import load_job

        job = load_job(args.job)
    print_findings(f"offline resources (cache dir {cache_dir()}):", offline_findings(args.deep))
    attacks_ok = report_attacks(args.deep)
    machine = [check_gpu(bool(job and job.scaling.use_gpu))]
    if job is None:
        machine.append(check_ray(os.environ.get("RAY_ADDRESS"), args.timeout))
        machine.append(check_mlflow(os.environ.get("MLFLOW_TRACKING_URI"), args.timeout))
    print_findings("this machine:", machine)
    findings = list(machine)
    if job is not None:
        checked = job_findings(job, args.timeout)
        print_findings(f"job {job.name} ({args.job}):", checked)
        findings += checked
    return 0 if attacks_ok and not any(f.status == MISSING for f in findings) else 1
