"""Trial parameters: the conditional define-by-run space and the job each trial trains.

Optuna sees one study whose trials first pick a ``method`` and then only that method's knobs
(parameter names ``<method>.<knob>``), plus shared ``train.<field>`` settings. A trial's Tune
config is those parameters plus constants (fixed knobs, seed, Optuna trial number);
``trial_job`` turns it back into the job that one trial trains. No Ray import here: the
config schema validates overrides with this module.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from robustsweep.config import JobConfig, SweepConfig
    from robustsweep.sweep.spaces import KnobDistribution

# Keys of a trial's Tune config that are not knobs.
METHOD_KEY = "method"
SEED_KEY = "seed"
NUMBER_KEY = "optuna_trial"
# Optuna user attribute naming the grid cell a trial claimed (grid mode).
GRID_CELL_KEY = "grid_cell"
TRAIN_PREFIX = "train."
# Present only in the report a trial sends after its final evaluation: results without it
# come from epochs, so a trial that ends without it was stopped early (pruned).
FINAL_KEY = "robustsweep_final"


@dataclass(frozen=True)
class MethodSpace:
    """One method's searched knobs (in file order) and knobs fixed by the job."""

    method: str
    searched: dict[str, KnobDistribution] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)


def _distribution(raw: Any, where: str) -> KnobDistribution:
    from pydantic import ValidationError

    from robustsweep.sweep.spaces import KnobDistribution

    try:
        return KnobDistribution.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ValueError(f"{where}: {msg.removeprefix('Value error, ')}") from None


def check_space_overrides(
    spaces: dict[str, dict[str, Any]], train_space: dict[str, dict[str, Any]]
) -> None:
    """Validate ``sweep.spaces`` and ``sweep.train_space`` (ValueError naming the knob)."""
    from pydantic import ValidationError

    from robustsweep.config import TrainConfig
    from robustsweep.errors import MethodError
    from robustsweep.methods import registry

    for method, knobs in spaces.items():
        fields = registry.get(method).knobs_class.model_fields
        for knob, raw in knobs.items():
            where = f"spaces.{method}.{knob}"
            if knob not in fields:
                raise ValueError(f"{where}: not a knob of method {method!r}")
            values = _distribution(raw, where).boundary_values() if isinstance(raw, dict) else [raw]
            for value in values:
                try:
                    registry.validate_knobs(method, {knob: value})
                except MethodError as exc:
                    raise ValueError(f"{where}: value {value!r} is invalid ({exc})") from None
    for name, raw in train_space.items():
        where = f"train_space.{name}"
        if name not in TrainConfig.model_fields:
            raise ValueError(f"{where}: not a train setting")
        for value in _distribution(raw, where).boundary_values():
            try:
                TrainConfig.model_validate({name: value})
            except ValidationError as err:
                raise ValueError(
                    f"{where}: value {value!r} is invalid ({err.errors()[0]['msg']})"
                ) from None


def resolve_spaces(sweep: SweepConfig) -> dict[str, MethodSpace]:
    """Each method's space: its search-space file with the job's per-knob overrides applied."""
    from robustsweep.sweep.spaces import load_space

    space_dir = Path(sweep.space_dir).expanduser().resolve() if sweep.space_dir else None
    resolved: dict[str, MethodSpace] = {}
    for method in sweep.methods:
        # A grid starts from the paper defaults: only the job's own `spaces` entries vary.
        searched = {} if sweep.mode == "grid" else dict(load_space(method, space_dir).knobs)
        fixed: dict[str, Any] = {}
        for knob, raw in sweep.spaces.get(method, {}).items():
            if isinstance(raw, dict):  # replaces the file's entry in place (plot order)
                searched[knob] = _distribution(raw, f"spaces.{method}.{knob}")
            else:
                searched.pop(knob, None)
                fixed[knob] = raw
        resolved[method] = MethodSpace(method, searched, fixed)
    return resolved


@dataclass(frozen=True)
class GridCell:
    """One trial of a grid sweep: a method, its knob values and a seed."""

    method: str
    knobs: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def key(self) -> str:
        """Stable name of the cell (Optuna user attribute, record file names)."""
        knobs = ",".join(f"{k}={v}" for k, v in self.knobs)
        return f"{self.method}[{knobs}]seed={self.seed}" if knobs else f"{self.method}seed={self.seed}"

    def params(self) -> dict[str, Any]:
        """The cell as trial parameters (``<method>.<knob>`` names, as searched trials have)."""
        return {
            METHOD_KEY: self.method,
            SEED_KEY: self.seed,
            **{f"{self.method}.{knob}": value for knob, value in self.knobs},
        }


def grid_cells(sweep: SweepConfig, job_seed: int) -> list[GridCell]:
    """Every cell of a grid sweep, seed-major (all methods of the first seed come first, so a
    sweep cut short still compares every method), then methods in job order, then the
    cartesian product of each method's ``{choices: [...]}`` knobs in file order."""
    seeds = list(sweep.seeds) or [job_seed]
    cells: list[GridCell] = []
    for seed in seeds:
        for method in sweep.methods:
            overrides = sweep.spaces.get(method, {})
            fixed = [(k, v) for k, v in overrides.items() if not isinstance(v, dict)]
            axes = [(k, list(v["choices"])) for k, v in overrides.items() if isinstance(v, dict)]
            for combo in itertools.product(*(values for _, values in axes)):
                knobs = tuple(fixed) + tuple(zip((k for k, _ in axes), combo))
                cells.append(GridCell(method, knobs, int(seed)))
    return cells


def grid_size(sweep: SweepConfig) -> int:
    """Cells of a grid sweep (the seed value does not change the count)."""
    return len(grid_cells(sweep, 0))


def knob_space(
    spaces: dict[str, MethodSpace], train_space: dict[str, KnobDistribution]
) -> dict[str, list]:
    """Per method, the searched knobs in file order with their log flag (report axes)."""
    shared = [[f"{TRAIN_PREFIX}{name}", dist.log] for name, dist in train_space.items()]
    return {m: [[k, d.log] for k, d in s.searched.items()] + shared for m, s in spaces.items()}


def suggest(trial: optuna.Trial, name: str, dist: KnobDistribution) -> Any:
    """Sample one knob with the matching Optuna ``suggest_*`` call."""
    if dist.choices is not None:
        return trial.suggest_categorical(name, list(dist.choices))
    if dist.type == "int":
        step = int(dist.step or 1)
        return trial.suggest_int(name, int(dist.low), int(dist.high), step=step, log=dist.log)
    return trial.suggest_float(
        name, float(dist.low), float(dist.high), step=dist.step, log=dist.log
    )


class TrialSpace:
    """Define-by-run space: method first, then only that method's knobs (conditional space).

    With ``balanced`` the methods take turns by Optuna trial number, so each gets the same
    number of trials and the sampler only picks knobs; otherwise ``method`` is a categorical
    parameter the sampler learns too. A picklable class (Tune saves the searcher with it).
    """

    def __init__(
        self,
        spaces: dict[str, MethodSpace],
        train_space: dict[str, KnobDistribution],
        *,
        balanced: bool,
        seeds: list[int],
        base_seed: int = 0,
        grid: list[GridCell] | None = None,
    ) -> None:
        self.spaces = spaces
        self.methods = list(spaces)
        self.train_space = train_space
        self.balanced = balanced
        self.seeds = list(seeds)
        self.base_seed = base_seed
        self.grid = list(grid) if grid is not None else None

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        if self.grid is not None:
            return self._grid_trial(trial)
        constants: dict[str, Any] = {NUMBER_KEY: trial.number}
        n_methods = len(self.methods)
        if self.balanced or n_methods == 1:
            method = self.methods[trial.number % n_methods]
            trial.set_user_attr(METHOD_KEY, method)
            constants[METHOD_KEY] = method
        else:
            method = trial.suggest_categorical(METHOD_KEY, self.methods)
        space = self.spaces[method]
        for knob, dist in space.searched.items():
            suggest(trial, f"{method}.{knob}", dist)
        for name, dist in self.train_space.items():
            suggest(trial, f"{TRAIN_PREFIX}{name}", dist)
        constants.update({f"{method}.{knob}": value for knob, value in space.fixed.items()})
        turn = trial.number // n_methods if self.balanced else trial.number
        if self.seeds:
            constants[SEED_KEY] = self.seeds[turn % len(self.seeds)]
        elif self.balanced and not space.searched and not self.train_space:
            # Nothing to sample: the same seed would train the same model again. Each repeat
            # of a knob-less method (vanilla) takes the next seed instead.
            constants[SEED_KEY] = self.base_seed + turn
        return constants

    def _grid_trial(self, trial: optuna.Trial) -> dict[str, Any]:
        """The first cell no other trial of the study has claimed (failed trials free theirs),
        so numbering gaps and resumed sweeps never skip or repeat a cell."""
        import optuna

        claimed = {
            t.user_attrs.get(GRID_CELL_KEY)
            for t in trial.study.get_trials(deepcopy=False)
            if t.number != trial.number and t.state != optuna.trial.TrialState.FAIL
        }
        assert self.grid is not None
        free = [cell for cell in self.grid if cell.key not in claimed]
        if not free:
            raise RuntimeError("grid sweep asked for more trials than it has cells")
        cell = free[0]
        trial.set_user_attr(GRID_CELL_KEY, cell.key)
        trial.set_user_attr(METHOD_KEY, cell.method)
        return {NUMBER_KEY: trial.number, **cell.params()}


def trial_job(
    base: JobConfig,
    params: dict[str, Any],
    *,
    output_dir: Path,
    tracking_uri: str | None,
    cpus_per_worker: float,
) -> JobConfig:
    """The job one trial trains: the base job with the trial's method, knobs and train settings."""
    from robustsweep.config import parse_job

    method = params[METHOD_KEY]
    prefix = f"{method}."
    knobs = dict(base.method.knobs) if base.method.name == method else {}
    knobs.update({k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)})
    raw = base.model_dump(mode="json")
    raw["method"] = {"name": method, "knobs": knobs}
    raw["train"].update(
        {k[len(TRAIN_PREFIX) :]: v for k, v in params.items() if k.startswith(TRAIN_PREFIX)}
    )
    raw["seed"] = params.get(SEED_KEY, base.seed)
    raw["output_dir"] = str(output_dir)
    raw["tracking"]["tracking_uri"] = tracking_uri
    raw["scaling"]["cpus_per_worker"] = cpus_per_worker
    raw["sweep"] = None
    return parse_job(raw, origin=f"trial {params.get(NUMBER_KEY, '?')}")


def searched_knobs(params: dict[str, Any]) -> dict[str, Any]:
    """The method knobs of a trial config (without the method prefix)."""
    prefix = f"{params.get(METHOD_KEY)}."
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
