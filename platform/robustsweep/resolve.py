"""The pre-flight: a validated job becomes a resolved job, or one error line naming the field.

``config`` validates each field on its own; this checks what only the whole job can tell, so a
job that passes here does not fail later for a reason that was knowable up front: attack
profiles exist, data/model sources resolve and their files parse, every metric the sweep
optimises, ranks or prunes on is one this job actually produces, search spaces fit the method
knobs, and storage, tracking and cluster addresses are well formed (an http tracking server
is probed with a short timeout). ``validate``, ``train`` and ``sweep`` all call
``resolve_job``; it imports no Ray and starts nothing.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from robustsweep.config import JobConfig, SweepConfig
from robustsweep.errors import ConfigError, DataError, MethodError, RobustSweepError, first_line

if TYPE_CHECKING:
    from robustsweep.evaluate.profiles import AttackProfile
    from robustsweep.sweep.params import MethodSpace

# Builtin model names (models.BUILTIN_MODELS, which imports torch; a unit test keeps them equal).
BUILTIN_MODELS = ("minilm",)
PROBE_TIMEOUT_S = 3.0
# Metrics every epoch reports (train/loop.py), besides ood_accuracy/<set>, proxy_* and train/*.
EPOCH_METRICS = ("train_loss", "epoch_time_s", "cost/fwd_bwd_passes", "cost/train_time_s", "lr",
                 "clean_accuracy", "ece", "cost/inference_passes_per_query")
# Metrics per eval.anomaly set (evaluate/anomaly.py detection_metrics).
ANOMALY_FAMILIES = ("anomaly_auroc", "anomaly_fpr95", "anomaly_auroc_energy", "anomaly_fpr95_energy")
DB_DIALECTS = ("sqlite", "postgresql", "mysql", "mariadb", "mssql", "oracle")
TRACKING_SCHEMES = ("http", "https", "databricks", "databricks-uc", *DB_DIALECTS)
HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
HUB_MODEL = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class ResolvedJob:
    """A job with everything resolved that the run will use (and ``validate`` prints)."""

    cfg: JobConfig  # the validated job, unchanged (its hash names trial records)
    knobs: dict[str, Any]  # the method's knobs with every default filled in
    attacks: list[AttackProfile] = field(default_factory=list)  # effective profiles
    proxy: AttackProfile | None = None
    epoch_metrics: frozenset[str] = frozenset()  # reported after every epoch
    final_metrics: frozenset[str] = frozenset()  # in the trial's final results
    spaces: dict[str, MethodSpace] = field(default_factory=dict)  # sweep: method -> space
    data_stats: dict[str, int] = field(default_factory=dict)  # dropped rows of file sources

    def produces(self, metric: str, *, per_epoch: bool = False) -> bool:
        """Whether a trial reports ``metric`` (every epoch, or at the end)."""
        known = self.epoch_metrics if per_epoch else self.final_metrics
        return metric in known or metric.startswith("train/")


def _fail(where: str, exc: BaseException | str) -> ConfigError:
    text = exc if isinstance(exc, str) else str(exc)
    return ConfigError(f"{where}: {text}")


# --------------------------------------------------------------------------------------------
# Sources: data sets and the model


def check_sources(cfg: JobConfig, read_data: bool) -> dict[str, int]:
    """Every data source resolves (scheme, builtin name, readable file); with ``read_data``
    the ``file:`` sources are parsed like training would (columns, labels, usable rows)."""
    from robustsweep import data

    checks = [("data.source", cfg.data.source, "training")]
    if cfg.data.eval_split and not cfg.data.source.startswith("hf:"):
        split = cfg.data.eval_split
        checks.append(("data.eval_split", split if ":" in split else f"file:{split}", "eval"))
    checks += [(f"data.ood.{i}.source", s.source, "ood") for i, s in enumerate(cfg.data.ood)]
    checks += [(f"eval.anomaly.{i}.source", s.source, "anomaly")
               for i, s in enumerate(cfg.eval.anomaly)]
    for where, source, role in checks:
        try:
            data.check_source(source, role=role)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
    if not read_data:
        return {}
    return data.preflight(cfg.data, cfg.eval.anomaly)


def check_model_source(source: str) -> None:
    """builtin:<known name>, hf:<id>, or an existing local model directory."""
    where = "model.source"
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if name not in BUILTIN_MODELS:
            raise _fail(where, f"unknown builtin model {source!r} (available: "
                        f"{', '.join('builtin:' + m for m in BUILTIN_MODELS)})")
    elif source.startswith("hf:"):
        if not HUB_MODEL.match(source[3:]):
            raise _fail(where, f"{source!r}: expected hf:<owner>/<model>")
    else:
        path = Path(source).expanduser()
        if not path.is_dir():
            raise _fail(where, f"{source!r}: not a local model directory (use builtin:<name> or "
                        "hf:<id>)")
        if not (path / "config.json").is_file():
            raise _fail(where, f"{source!r}: no config.json in this model directory")


def _model_type(source: str) -> str | None:
    """``model_type`` of a builtin/local model, or of a hub model whose config is cached;
    None when it cannot be known offline (then the check is skipped)."""
    from robustsweep.models.families import model_type_in

    if source.startswith("builtin:"):
        from robustsweep.resources import builtin_encoder_dir

        try:
            return model_type_in(builtin_encoder_dir())
        except RobustSweepError:
            return None
    if source.startswith("hf:"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        cached = try_to_load_from_cache(source[3:], "config.json")
        return model_type_in(Path(cached).parent) if isinstance(cached, str) else None
    return model_type_in(Path(source).expanduser())


def check_model_family(cfg: JobConfig) -> None:
    """The model's family is in the table and can run the job's method(s) (one line if not)."""
    from robustsweep.models.families import family_of, incompatible_message, unknown_family_message

    model_type = _model_type(cfg.model.source)
    if model_type is None:
        return
    family = family_of(model_type)
    if family is None:
        raise _fail("model.source", f"{cfg.model.source!r}: {unknown_family_message(model_type)}")
    methods = [("method.name", cfg.method.name)]
    if cfg.sweep is not None:
        methods += [("sweep.methods", m) for m in cfg.sweep.methods]
    for where, method in methods:
        message = incompatible_message(family, method)
        if message is not None:
            raise _fail(where, message)


# --------------------------------------------------------------------------------------------
# Attacks and the metrics a job produces


def resolve_attacks(cfg: JobConfig) -> tuple[list[AttackProfile], AttackProfile | None]:
    """The effective attack profiles of eval.attacks and eval.proxy_attack."""
    from robustsweep.evaluate.profiles import effective_profile

    attacks = []
    for i, name in enumerate(cfg.eval.attacks):
        try:
            attacks.append(effective_profile(name, cfg.eval))
        except RobustSweepError as exc:
            raise _fail(f"eval.attacks.{i}", exc) from None
    names = [p.name for p in attacks]
    for name in names:
        if names.count(name) > 1:
            raise _fail("eval.attacks", f"two profiles are named {name!r} (their metrics collide)")
    proxy = None
    if cfg.eval.proxy_attack:
        try:
            proxy = effective_profile(cfg.eval.proxy_attack, cfg.eval)
        except RobustSweepError as exc:
            raise _fail("eval.proxy_attack", exc) from None
    return attacks, proxy


def robust_metric_names(profile_name: str) -> list[str]:
    """The metrics one attack profile reports (evaluate.outcomes.summarize's keys)."""
    from robustsweep.evaluate.outcomes import summarize

    return list(summarize([], profile_name))


def job_metrics(cfg: JobConfig, attacks: list[AttackProfile],
                proxy: AttackProfile | None) -> tuple[frozenset[str], frozenset[str]]:
    """(metrics of every epoch, metrics of the final results) of one trial of ``cfg``."""
    epoch = set(EPOCH_METRICS) | {f"ood_accuracy/{s.name}" for s in cfg.data.ood}
    if proxy is not None:
        epoch |= {f"proxy_{m}" for m in robust_metric_names(proxy.name)}
    final = set(epoch)
    for profile in attacks:
        final |= set(robust_metric_names(profile.name))
    for spec in cfg.eval.anomaly:
        final |= {f"{family}/{spec.name}" for family in ANOMALY_FAMILIES}
    return frozenset(epoch), frozenset(final)


def _metric_hint(metric: str, cfg: JobConfig) -> str:
    """Why a metric is missing, in the user's terms."""
    family, _, suffix = metric.partition("/")
    if family.startswith("proxy_"):
        if not cfg.eval.proxy_attack:
            return "proxy_ metrics need eval.proxy_attack"
        return f"the proxy attack is {cfg.eval.proxy_attack!r}"
    if family in ("robust_accuracy", "attack_success_rate", "avg_queries", "perturbed_word_ratio",
                  "attack_clean_accuracy", "attack_timeout_rate", "attack_examples"):
        return f"add {suffix!r} to eval.attacks (attacks: {cfg.eval.attacks or 'none'})"
    if family == "ood_accuracy":
        return f"no data.ood set is named {suffix!r}"
    if family in ANOMALY_FAMILIES:
        return f"no eval.anomaly set is named {suffix!r}"
    return "known metrics: " + ", ".join(EPOCH_METRICS) + ", ood_accuracy/<set>, ..."


def check_metric(resolved: ResolvedJob, where: str, metric: str, per_epoch: bool = False) -> None:
    if resolved.produces(metric, per_epoch=per_epoch):
        return
    if per_epoch and resolved.produces(metric):
        raise _fail(where, f"{metric!r} is only measured after training; this needs a metric "
                    "every epoch reports (e.g. clean_accuracy, or proxy_robust_accuracy/<attack> "
                    "with eval.proxy_attack)")
    raise _fail(where, f"{metric!r} is not a metric this job produces "
                f"({_metric_hint(metric, resolved.cfg)})")


# --------------------------------------------------------------------------------------------
# Sweep: spaces and metric names


def check_sweep(resolved: ResolvedJob, sweep: SweepConfig) -> None:
    """Spaces resolve against the knobs; objectives, rank_by, rank_min and ASHA name metrics
    this job produces; storage parses."""
    from robustsweep.sweep.params import resolve_spaces

    if sweep.space_dir and not Path(sweep.space_dir).expanduser().is_dir():
        raise _fail("sweep.space_dir", f"{sweep.space_dir!r}: no such directory")
    try:
        resolved.spaces = resolve_spaces(sweep)
    except (ValueError, MethodError) as exc:
        raise _fail("sweep.spaces", exc) from None
    for i, objective in enumerate(sweep.objectives):
        check_metric(resolved, f"sweep.objectives.{i}.metric", objective.metric)
    if sweep.rank_by is not None:
        check_metric(resolved, "sweep.rank_by", sweep.rank_by)
    for metric in sweep.rank_min:
        check_metric(resolved, f"sweep.rank_min.{metric}", metric)
    if sweep.asha.enabled:
        metric = sweep.asha_metric_mode()[0]
        check_metric(resolved, "sweep.asha.metric", metric, per_epoch=True)
        epochs = resolved.cfg.train.epochs
        if sweep.asha.grace_period >= epochs:
            raise _fail("sweep.asha.grace_period", f"{sweep.asha.grace_period} must be below "
                        f"train.epochs ({epochs}) for ASHA to stop anything")
    if sweep.storage is not None:
        check_storage(sweep.storage)


def check_storage(url: str) -> None:
    """An Optuna storage URL that parses: journal:<file> or <dialect>[+driver]://..."""
    where = "sweep.storage"
    if url.startswith("journal:"):
        if not url.removeprefix("journal:").strip():
            raise _fail(where, f"{url!r}: expected journal:<file>")
        return
    _check_db_url(where, url)


def _check_db_url(where: str, url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if "://" not in url:
        raise _fail(where, f"{url!r}: expected a database URL (sqlite:///<file>, "
                    "postgresql://..., mysql://...)" + (" or journal:<file>"
                                                         if where == "sweep.storage" else ""))
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise _fail(where, f"{url!r}: cannot parse ({first_line(exc)})") from None
    dialect = parsed.drivername.split("+")[0]
    if dialect not in DB_DIALECTS:
        raise _fail(where, f"{url!r}: unknown database {dialect!r} "
                    f"(expected one of {', '.join(DB_DIALECTS)})")
    if dialect == "sqlite" and not parsed.database:
        raise _fail(where, f"{url!r}: expected sqlite:///<file>")
    _check_db_driver(where, url, parsed)


# Which pip package provides a SQLAlchemy driver module (for the hint of a missing one).
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary",
                   "MySQLdb": "mysqlclient", "pymysql": "pymysql"}


def _check_db_driver(where: str, url: str, parsed: Any) -> None:
    """The database driver the URL implies is installed: otherwise the sweep would fail only
    at start (SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, not psycopg2)."""
    from sqlalchemy.exc import NoSuchModuleError

    try:
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise _fail(where, f"{parsed.render_as_string(hide_password=True)!r}: unknown driver "
                    f"{parsed.drivername!r}") from None
    except ImportError as exc:
        module = (getattr(exc, "name", None) or "").split(".")[0]
        package = DRIVER_PACKAGES.get(module, module or "its driver")
        hint = f'pip install "{package}"'
        if module == "psycopg" and importlib.util.find_spec("psycopg2") is not None:
            hint += " or name the installed one: postgresql+psycopg2://..."
        raise _fail(where, f"{parsed.render_as_string(hide_password=True)!r}: the database "
                    f"driver {module or parsed.drivername!r} is not installed ({hint})") from None


# --------------------------------------------------------------------------------------------
# Tracking and cluster addresses


def check_tracking(cfg: JobConfig, probe: bool) -> None:
    """The MLflow URI parses; an http(s) server answers within PROBE_TIMEOUT_S when probed."""
    uri = cfg.tracking.tracking_uri
    if not cfg.tracking.enabled or uri is None:
        return
    where = "tracking.tracking_uri"
    scheme = uri.split(":", 1)[0].split("+")[0].lower() if ":" in uri else ""
    if scheme not in TRACKING_SCHEMES:
        raise _fail(where, f"{uri!r}: expected http(s)://host[:port] or a database URL "
                    "(sqlite:///<file>, postgresql://...)")
    if scheme in ("http", "https"):
        try:
            host, port = urlsplit(uri).hostname, urlsplit(uri).port
        except ValueError as exc:
            raise _fail(where, f"{uri!r}: {first_line(exc)}") from None
        if not host:
            raise _fail(where, f"{uri!r}: no host")
        if probe:
            probe_http(uri, where, port)
    elif scheme in DB_DIALECTS:
        _check_db_url(where, uri)


def probe_http(uri: str, where: str, port: int | None = None,
               timeout: float | None = None) -> None:
    """GET <uri>/health; any HTTP answer passes, no answer within the timeout is an error.
    Runs in a daemon thread so even a slow DNS lookup cannot hold the command."""
    limit = PROBE_TIMEOUT_S if timeout is None else timeout
    outcome: list[str] = []

    def attempt() -> None:
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=limit):
                pass
            outcome.append("")
        except urllib.error.HTTPError:
            outcome.append("")  # the server answered: it is there
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            outcome.append(first_line(reason) if isinstance(reason, BaseException) else str(reason))

    thread = threading.Thread(target=attempt, name="tracking-probe", daemon=True)
    thread.start()
    thread.join(limit + 0.5)
    error = outcome[0] if outcome else f"no answer within {limit:g} s"
    if error:
        raise _fail(where, f"MLflow server {uri} is not reachable ({error}); start it, fix the "
                    "URI or set tracking.enabled: false")


def check_address(where: str, address: str) -> None:
    """auto | local | [ray://]host:port with a valid IP or hostname and port."""
    if address in ("auto", "local"):
        return
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail(where, f"{address!r}: expected host:port (e.g. 10.0.0.5:6379), "
                    "ray://host:10001, auto or local")
    host = host.removeprefix("[").removesuffix("]")
    if not _valid_host(host):
        raise _fail(where, f"{address!r}: {host!r} is not a valid IP address or hostname")


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(HOSTNAME.match(host)) and not host.replace(".", "").isdigit()


def check_cluster(cfg: JobConfig) -> None:
    if cfg.cluster.address:
        check_address("cluster.address", cfg.cluster.address)
    elif os.environ.get("RAY_ADDRESS"):
        check_address("RAY_ADDRESS (environment)", os.environ["RAY_ADDRESS"])
    try:
        ipaddress.ip_address(cfg.cluster.node_ip_address)
    except ValueError:
        raise _fail("cluster.node_ip_address", f"{cfg.cluster.node_ip_address!r}: not an IP "
                    "address") from None


# --------------------------------------------------------------------------------------------


def resolve_job(cfg: JobConfig, *, origin: str | None = None, probe: bool = True,
                read_data: bool = True, need_sweep: bool = False) -> ResolvedJob:
    """Run every cross-check of the pre-flight and return the resolved job.

    ``origin`` (the job file) starts every error line; ``probe``: contact an http(s) tracking
    server (a few seconds at most); ``read_data``: parse ``file:`` data sources;
    ``need_sweep``: the job must have a sweep section.
    """
    try:
        return _resolve(cfg, probe=probe, read_data=read_data, need_sweep=need_sweep)
    except RobustSweepError as exc:
        if origin is None:
            raise
        raise type(exc)(f"{origin}: {exc}") from None


def _resolve(cfg: JobConfig, *, probe: bool, read_data: bool, need_sweep: bool) -> ResolvedJob:
    from robustsweep.methods import registry

    if need_sweep and cfg.sweep is None:
        raise ConfigError(f"job {cfg.name!r} has no sweep: section (see jobs/quickstart_sweep.yaml)")
    knobs = registry.validate_knobs(cfg.method.name, cfg.method.knobs).model_dump(mode="json")
    check_model_source(cfg.model.source)
    check_model_family(cfg)
    stats = check_sources(cfg, read_data)
    attacks, proxy = resolve_attacks(cfg)
    epoch, final = job_metrics(cfg, attacks, proxy)
    resolved = ResolvedJob(cfg, knobs, attacks, proxy, epoch, final, data_stats=stats)
    check_tracking(cfg, probe)
    check_cluster(cfg)
    if cfg.sweep is not None:
        check_sweep(resolved, cfg.sweep)
    return resolved


def summary_lines(resolved: ResolvedJob) -> list[str]:
    """What ``validate`` prints after the config: attacks, metrics, spaces, dropped rows."""
    lines = [f"attacks: {', '.join(p.label for p in resolved.attacks) or 'none'}"]
    if resolved.proxy is not None:
        lines.append(f"proxy attack: {resolved.proxy.label}")
    lines.append("metrics every epoch: " + ", ".join(sorted(resolved.epoch_metrics)))
    extra = sorted(resolved.final_metrics - resolved.epoch_metrics)
    if extra:
        lines.append("metrics after training: " + ", ".join(extra))
    sweep = resolved.cfg.sweep
    if sweep is not None and sweep.mode == "grid":
        seeds = len(sweep.seeds) or 1
        lines.append(f"grid: {sweep.total_samples()} trials ({len(sweep.methods)} method(s) x "
                     f"chosen knob values x {seeds} seed(s)), other knobs at their defaults"
                     + (f"; records collected in {sweep.records_dir}" if sweep.records_dir else ""))
    for method, space in resolved.spaces.items():
        searched = ", ".join(space.searched) or "nothing"
        fixed = ", ".join(f"{k}={v!r}" for k, v in space.fixed.items())
        lines.append(f"space {method}: searches {searched}" + (f"; fixed {fixed}" if fixed else ""))
    for key, count in sorted(resolved.data_stats.items()):
        lines.append(f"{key}: {count} rows dropped (no text, or a missing/unknown label)")
    return lines


def preflight_resume(sweep_dir: Path, address: str | None, trust_remote_code: bool) -> None:
    """Refuse a resume directory that is not a robustsweep sweep, or whose job would run
    custom model code without the user's flag; then pre-flight its job."""
    from robustsweep.jobfile import validate_job
    from robustsweep.state.manifest import Manifest

    if not sweep_dir.expanduser().is_dir():
        raise ConfigError(f"--resume {sweep_dir}: no such directory")
    manifest = Manifest.load(sweep_dir.expanduser())
    origin = str(Manifest.path_in(sweep_dir.expanduser()))
    raw = manifest.data["job"]
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: job: expected a mapping")
    if address:
        check_address("--address", address)
        raw = {**raw, "cluster": {**raw.get("cluster", {}), "address": address}}
    cfg = validate_job(raw, origin=origin)
    if cfg.model.trust_remote_code and not trust_remote_code:
        raise ConfigError(
            f"{origin}: the sweep's model.source {cfg.model.source!r} needs trust_remote_code "
            "(custom model code runs on load); pass --trust-remote-code if you trust it"
        )
    resolve_job(cfg, origin=origin, need_sweep=True)
