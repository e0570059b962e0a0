"""The search: Optuna sampler and storage, and the Tune searcher that tells Optuna final values.

The space itself (method first, then that method's knobs) lives in ``sweep.params``.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.search.optuna import OptunaSearch

from robustsweep.errors import ConfigError
from robustsweep.sweep.params import FINAL_KEY, METHOD_KEY, NUMBER_KEY, TrialSpace

if TYPE_CHECKING:
    import optuna

    from robustsweep.config import SweepConfig

logger = logging.getLogger(__name__)


def startup_trials(sweep: SweepConfig) -> int:
    """Random trials before the sampler models results: total/4 clamped to [2, 10]."""
    if sweep.n_startup_trials is not None:
        return sweep.n_startup_trials
    return max(2, min(10, sweep.total_samples() // 4))


def make_sampler(sweep: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (multivariate + group for conditional spaces, constant liar for parallel trials),
    NSGA-II or random."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    n_startup = startup_trials(sweep)
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sweep.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, n_startup))
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=n_startup, multivariate=True, group=True, constant_liar=True
    )


def storage_url(sweep: SweepConfig, sweep_dir: Path) -> str:
    """The Optuna storage URL (default: a sqlite file in the sweep dir)."""
    return sweep.storage or f"sqlite:///{sweep_dir / 'optuna.db'}"


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """RDB storage for database URLs, JournalStorage for ``journal:<file>`` (shared disk)."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:")).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ConfigError(f"sweep.storage {url!r}: expected a database URL or journal:<file>")
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs={"connect_args": {"timeout": 30}} if url.startswith("sqlite") else None,
        )
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors vary
        raise ConfigError(f"sweep.storage {url!r}: {str(exc).splitlines()[0]}") from None


def dashboard_command(url: str) -> str:
    """The optuna-dashboard command for a storage URL (bound to localhost)."""
    target = url.removeprefix("journal:") if url.startswith("journal:") else url
    return f"optuna-dashboard {target} --host 127.0.0.1 --port 8080"


class SweepSearch(OptunaSearch):
    """OptunaSearch that only tells Optuna *final* values.

    Stock OptunaSearch tells an ASHA-stopped trial COMPLETE with its last partial-budget values
    (and fails on objectives that only the final evaluation reports). Here a trial whose last
    result lacks ``FINAL_KEY`` is PRUNED, so the study's Pareto front mixes no budgets.
    """

    def _setup_study(self, mode: str | list) -> None:
        """Create/load the study, then name its objectives (optuna-dashboard shows the metric
        names instead of "Objective 0/1")."""
        super()._setup_study(mode)
        names = self._metric if isinstance(self._metric, list) else [self._metric]
        if self._ot_study is not None and all(names):
            try:
                self._ot_study.set_metric_names(list(names))
            except Exception as exc:  # noqa: BLE001 - names are cosmetic; never stop a sweep
                logger.warning("could not name the Optuna study's objectives: %s", exc)

    def suggest(self, trial_id: str) -> dict | None:
        """Optuna's suggestion, with the trial's label and Tune id as user attributes."""
        config = super().suggest(trial_id)
        if config is not None and trial_id in self._ot_trials:
            number = config.get(NUMBER_KEY, self._ot_trials[trial_id].number)
            _set_user_attrs(self._ot_trials[trial_id], {
                "label": f"{config.get(METHOD_KEY, 'trial')}-{int(number):03d}",
                "tune_trial_id": trial_id,
            })
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # Single-objective intermediate values feed Optuna's pruner view (dashboard); skip
        # results (e.g. epochs) that do not carry the objective.
        if isinstance(self.metric, str) and self.metric in result and FINAL_KEY not in result:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        if result and result.get("run_id"):  # the dashboard links a trial to its MLflow run
            _set_user_attrs(ot_trial, {"mlflow_run_id": str(result["run_id"])})
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        state, values = optuna.trial.TrialState.PRUNED, None
        if error:
            state = optuna.trial.TrialState.FAIL
        elif result and result.get(FINAL_KEY):
            values = [result.get(m) for m in metrics]
            bad = [m for m, v in zip(metrics, values) if not _finite(v)]
            if bad:
                logger.warning(
                    "trial %s did not report objective %s; marked FAIL in Optuna",
                    trial_id,
                    ", ".join(bad),
                )
                state, values = optuna.trial.TrialState.FAIL, None
            else:
                state = optuna.trial.TrialState.COMPLETE
        try:
            self._ot_study.tell(
                ot_trial, values if values is None or len(values) > 1 else values[0], state=state
            )
        except Exception as exc:  # noqa: BLE001 - a study closed elsewhere must not stop the sweep
            logger.warning("Optuna tell failed for trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


def _set_user_attrs(ot_trial: Any, attrs: dict[str, str]) -> None:
    """Annotate an Optuna trial; a storage hiccup costs the annotation, never the sweep."""
    try:
        for key, value in attrs.items():
            ot_trial.set_user_attr(key, value)
    except Exception as exc:  # noqa: BLE001 - RDB/journal errors vary
        logger.warning("could not annotate Optuna trial %s: %s", ot_trial.number, exc)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def build_searcher(
    sweep: SweepConfig, *, space: TrialSpace, seed: int, study_name: str, storage: str
) -> SweepSearch:
    """The Tune searcher. metric/mode live on the searcher (not TuneConfig): that is what
    lets multi-objective Optuna run next to a single-metric ASHA."""
    objectives = sweep.objectives
    multi = len(objectives) > 1
    metric: str | list[str] = [o.metric for o in objectives] if multi else objectives[0].metric
    mode: str | list[str] = [o.mode for o in objectives] if multi else objectives[0].mode
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return SweepSearch(
        space,
        metric=metric,
        mode=mode,
        sampler=make_sampler(sweep, seed),
        study_name=study_name,
        storage=make_storage(storage),
    )
