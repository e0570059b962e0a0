"""The job schema: every knob a job can set, validated once at the edge.

Defaults live here and only here; YAML files and the CLI override them. Unknown keys are
rejected everywhere (``extra="forbid"``) so a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from robustsweep.errors import ConfigError, first_line, format_validation_error, shown_value

# A value that names a metric suffix (``ood_accuracy/<name>``) and a file name part: MLflow
# metric names allow these characters; '/' would add a level, '..' would climb one.
METRIC_SUFFIX = r"^[A-Za-z0-9_.-]{1,100}$"


def numeric_annotation(annotation: Any) -> bool:
    """Whether a field's annotation holds int or float (not bool) anywhere."""
    if annotation in (int, float):
        return True
    return any(numeric_annotation(arg) for arg in get_args(annotation) if isinstance(arg, type) or get_args(arg))


def holds_bool(value: Any) -> bool:
    """A bool, or a list/tuple/dict with a bool item (YAML ``yes``/``true`` where a number goes)."""
    if isinstance(value, bool):
        return True
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return any(isinstance(item, bool) for item in items)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads true as 1 for int/float fields; a boolean there is always a mistake."""
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and numeric_annotation(field.annotation) and holds_bool(value):
            raise ValueError("expected a number, not a boolean")
        return value


def _dots_only(value: str) -> bool:
    return set(value) <= {"."}


class SplitSource(_Strict):
    """One extra evaluation set: an ood split of the same label space, or an anomaly set."""

    name: str = Field(
        pattern=METRIC_SUFFIX, description="Metric suffix, e.g. 'imdb' gives ood_accuracy/imdb"
    )
    source: str = Field(description="builtin:<name> | file:<path> | hf:<id>[:config]")
    split: str = Field("test", description="Split to read for hf: sources")
    size: int | None = Field(500, ge=1, description="Seeded sub-sample size (null = all rows)")
    text_fields: list[str] | None = Field(
        None, min_length=1, max_length=2, description="Text columns; null = data.text_fields"
    )
    label_field: str | None = Field(None, description="Label column; null = data.label_field")

    @field_validator("name")
    @classmethod
    def _not_dots(cls, value: str) -> str:
        if _dots_only(value):
            raise ValueError("must contain a letter, digit, '_' or '-'")
        return value


def _unique_names(sets: list[SplitSource]) -> list[SplitSource]:
    names = [s.name for s in sets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"name {repeated[0]!r} is used twice (names are metric suffixes)")
    return sets


class DataConfig(_Strict):
    """Where the task's texts and labels come from and how much of them to use."""

    source: str = Field("builtin:mr", description="builtin:<name> | file:<path> | hf:<id>[:config]")
    train_split: str = Field("train", description="Split for training (hf: sources)")
    eval_split: str | None = Field(
        None, description="Split for held-out evaluation; null = seeded hold-out of train"
    )
    holdout_fraction: float = Field(
        0.1, gt=0, lt=1, description="Fraction held out when no eval split exists"
    )
    text_fields: list[str] = Field(
        default_factory=lambda: ["text"], min_length=1, max_length=2,
        description="One column (single text) or two (text pair, e.g. premise/hypothesis)",
    )
    label_field: str = Field("label", description="Integer or string label column")
    label_names: list[str] | None = Field(
        None, description="Class names in label-id order; null = taken from the source"
    )
    train_size: int | None = Field(None, ge=1, description="Seeded train sub-sample (null = all)")
    eval_size: int | None = Field(None, ge=1, description="Seeded eval sub-sample (null = all)")
    split_seed: int = Field(
        0, ge=0, description="Seed of hold-out splits and sub-samples (same data in every trial)"
    )
    max_length: int = Field(128, ge=8, le=4096, description="Tokens per text (truncation)")
    lowercase: bool = Field(False, description="Lower-case texts before tokenization")
    ood: list[SplitSource] = Field(
        default_factory=list, description="Distribution-shift sets with the same labels"
    )

    @field_validator("label_names")
    @classmethod
    def _two_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if len(set(value)) != len(value):
                raise ValueError("label names must not repeat")
            if len(value) < 2:
                raise ValueError("a classifier needs at least two label names")
        return value

    @field_validator("ood")
    @classmethod
    def _unique_ood(cls, value: list[SplitSource]) -> list[SplitSource]:
        return _unique_names(value)


class PeftConfig(_Strict):
    """Parameter-efficient fine-tuning: train a LoRA adapter and the head, freeze the base."""

    method: Literal["lora"] = Field("lora", description="Adapter type (lora)")
    r: int = Field(8, ge=1, le=1024, description="LoRA rank (8)")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha; the update is scaled alpha/r (16)")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch input (0.05)")
    target_modules: list[str] | None = Field(
        None, description="Module names that get adapters; null = the family's default "
                          "(attention query/value projections; docs/methods.md)")


class ModelConfig(_Strict):
    """Which pretrained encoder to fine-tune."""

    source: str = Field(
        "builtin:minilm", description="builtin:minilm | hf:<hub id> | <local model directory>"
    )
    trust_remote_code: bool = Field(False, description="Allow custom model code from the hub")
    dropout: float | None = Field(None, ge=0, lt=1, description="Override hidden dropout")
    peft: PeftConfig | None = Field(
        None, description="LoRA through peft (null = full fine-tuning)")


class MethodConfig(_Strict):
    """The robust fine-tuning method and its knobs (validated by the method's own schema)."""

    name: str = Field("vanilla", description="Registered method name (robustsweep methods)")
    knobs: dict[str, Any] = Field(default_factory=dict, description="Method knobs")


class TrainConfig(_Strict):
    """Optimisation settings shared by every method."""

    epochs: int = Field(1, ge=1, description="Passes over the training data")
    batch_size: int = Field(
        32, ge=1, description="Examples per forward across all workers (split across them); an "
        "optimizer step sees batch_size x grad_accumulation_steps"
    )
    grad_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches whose gradients add up into one optimizer step "
        "(global batch = batch_size x this; lr schedule and max_steps_per_epoch count steps)"
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Training-step autocast: fp32 (default, exact) | bf16 (CPUs with "
        "AVX-512 BF16 / AMX, Ampere+ GPUs) | fp16 (GPUs, dynamic loss scaling); weights, "
        "optimizer, logits, KL/MI terms and evaluation stay fp32"
    )
    lr: float = Field(5e-5, gt=0, description="Peak AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on bias/LayerNorm)")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Linear warm-up share of all steps")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping (null = off)")
    eval_batch_size: int = Field(64, ge=1, description="Batch size for evaluation")
    max_steps_per_epoch: int | None = Field(
        None, ge=1, description="Cap on optimizer steps per epoch (smoke tests, benchmarks)"
    )
    progress_every: int = Field(50, ge=1, description="Steps between progress-bar metric updates")
    log_every_steps: int | None = Field(
        None, ge=1, description="Log step-level train loss, lr, grad norm and the method's terms "
        "to MLflow every N optimizer steps (null = epoch metrics only)"
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="Epoch checkpoints kept per attempt (the newest; the final model "
        "is always among them)"
    )

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= beta < 1 for beta in value):
            raise ValueError(f"each beta must be in [0, 1) (got {list(value)})")
        return value


class ScalingConfig(_Strict):
    """How many Ray Train workers run one trial, and on what."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks)")
    use_gpu: bool = Field(False, description="One GPU per worker")
    gpus_per_worker: float | None = Field(
        None, gt=0, description="GPUs per worker when use_gpu (null = 1): a share in (0, 1] "
        "packs trials onto one GPU (0.25 = four workers per GPU), or a whole number >= 1"
    )
    cpus_per_worker: float | None = Field(
        None, gt=0, description="CPUs per worker; null = the free CPUs split evenly"
    )

    @field_validator("gpus_per_worker")
    @classmethod
    def _share_or_whole(cls, value: float | None) -> float | None:
        """Ray schedules a GPU share (<= 1) or whole GPUs, never 1.5 of one."""
        if value is not None and value > 1 and not float(value).is_integer():
            raise ValueError(f"{value:g}: a share of one GPU (0 < x <= 1) or a whole number")
        return value

    @model_validator(mode="after")
    def _gpus_need_use_gpu(self) -> ScalingConfig:
        if self.gpus_per_worker is not None and not self.use_gpu:
            raise ValueError("gpus_per_worker is set but use_gpu is false: set use_gpu: true")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 1 and self.num_workers > 1:
            # Ray may put two ranks of one trial on the same GPU, and NCCL refuses that
            raise ValueError(f"gpus_per_worker {self.gpus_per_worker:g} shares a GPU, which only "
                             "single-worker trials can do (DDP ranks on one GPU fail in NCCL): "
                             "set num_workers: 1 or gpus_per_worker >= 1")
        return self

    def gpu_share(self) -> float:
        """GPUs one worker reserves (0 without use_gpu)."""
        if not self.use_gpu:
            return 0.0
        return 1.0 if self.gpus_per_worker is None else float(self.gpus_per_worker)


class EvalConfig(_Strict):
    """What the end-of-epoch and final evaluation measure."""

    ece_bins: int = Field(15, ge=2, description="Bins of the expected calibration error")
    attacks: list[str] = Field(default_factory=list, description="Attack profiles (final eval)")
    attack_examples: int = Field(100, ge=1, description="Examples attacked per attack")
    attack_examples_by_profile: dict[str, int] = Field(
        default_factory=dict, description="Per-profile example counts, e.g. {textfooler-glove: "
        "100}: the first N of the same examples the other profiles attack"
    )
    anomaly: list[SplitSource] = Field(
        default_factory=list, description="Out-of-distribution text sets for anomaly AUROC"
    )
    attack_seed: int | None = Field(
        None, ge=0, description="Override the profiles' attack seed (changes the profile hash)"
    )
    attack_timeout_s: float | None = Field(
        None, gt=0, description="Per-example time limit in seconds; a timeout is its own outcome"
    )
    attack_query_budget: int | None = Field(
        None, ge=1, description="Override the profiles' model-query budget per example"
    )
    attack_max_modify_rate: float | None = Field(
        None, gt=0, le=1, description="Override the profiles' max share of perturbed words"
    )
    attack_only_correct: bool | None = Field(
        None, description="Attack only correctly classified examples (null = profile's choice)"
    )
    attack_precision: Literal["fp32", "bf16"] | None = Field(
        None, description="Override the profiles' victim precision: bf16 autocast is faster on "
        "CPUs/GPUs with bf16 units, opt-in, and changes the profile hash (null = fp32)"
    )
    attack_workers: int | None = Field(
        1, ge=1, description="Parallel attack workers (Ray actors, one model replica each); "
        "null = one per free CPU"
    )
    proxy_attack: str | None = Field(
        None, description="Cheap attack profile for per-epoch robust accuracy (null = none)"
    )
    proxy_examples: int = Field(32, ge=1, description="Examples the per-epoch proxy attack uses")

    @field_validator("attacks")
    @classmethod
    def _unique_attacks(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("attack profiles must not repeat (each names its own metrics)")
        return value

    @field_validator("anomaly")
    @classmethod
    def _unique_anomaly(cls, value: list[SplitSource]) -> list[SplitSource]:
        return _unique_names(value)


class TrackingConfig(_Strict):
    """Where MLflow records go."""

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; null = sqlite store inside the output dir"
    )
    experiment: str = Field("robustsweep", min_length=1, description="MLflow experiment name")
    enabled: bool = Field(True, description="Log to MLflow at all")


class ObjectiveConfig(_Strict):
    """One thing the sweep optimises: a canonical metric name and a direction."""

    metric: str = Field(
        pattern=r"^[A-Za-z0-9_./:-]+$",
        description="Canonical metric name, e.g. clean_accuracy or robust_accuracy/<attack>",
    )
    mode: Literal["max", "min"] = Field("max", description="Maximise or minimise the metric")


class AshaConfig(_Strict):
    """Early stopping of bad trials (ASHA) on one cheap metric that every epoch reports."""

    enabled: bool = Field(False, description="Stop trials early with ASHA")
    metric: str | None = Field(
        None, description="Per-epoch metric ASHA compares (a cheap robustness proxy for robust "
        "objectives); null = the single objective"
    )
    mode: Literal["max", "min"] | None = Field(
        None, description="Direction of asha.metric; null = the objective's (else max)"
    )
    grace_period: int = Field(1, ge=1, description="Epochs every trial runs before it can stop")
    reduction_factor: float = Field(2.0, gt=1, description="Keep the top 1/rf at each rung")


class SweepConfig(_Strict):
    """A sweep: which methods, how many trials, what to optimise, how to search and prune.

    Search spaces come from ``<space_dir>/<method>.yaml``; ``spaces`` overrides them per knob.
    Every trial is the job with the sampled method, knobs and train settings filled in.
    """

    methods: list[str] = Field(
        default_factory=lambda: ["vanilla"], min_length=1,
        description="Methods to sweep (registered names); each searches only its own knobs",
    )
    mode: Literal["search", "grid"] = Field(
        "search", description="search: Optuna samples knobs from the search spaces; grid: every "
        "method x seeds x the choices given in `spaces`, other knobs at their paper defaults"
    )
    records_dir: str | None = Field(
        None, description="Directory that collects each finished trial's results record; a grid "
        "sweep skips the cells whose record is already there (resume across machines)"
    )
    num_samples: int | None = Field(
        None, ge=1, description="Total trials; the sampler also picks the method "
        "(null = 4 per method unless num_samples_per_method is set)"
    )
    num_samples_per_method: int | None = Field(
        None, ge=1, description="Trials per method (methods take turns; the sampler picks knobs)"
    )
    objectives: list[ObjectiveConfig] = Field(
        default_factory=lambda: [ObjectiveConfig(metric="clean_accuracy")], min_length=1,
        max_length=4, description="Metrics to optimise (several = multi-objective, Pareto front)",
    )
    sampler: Literal["tpe", "nsga2", "random"] = Field(
        "tpe", description="Optuna sampler (tpe handles one or several objectives)"
    )
    n_startup_trials: int | None = Field(
        None, ge=0, description="Random trials before the sampler models the results "
        "(null = total/4 clamped to [2, 10]); NSGA-II population size"
    )
    seed: int | None = Field(None, ge=0, description="Sampler seed; null = the job seed")
    seeds: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, description="Training seeds that trials take in turn "
        "(empty = the job seed for every trial)"
    )
    study_name: str | None = Field(
        None, min_length=1, description="Optuna study name; null = <job name>-<start time>"
    )
    storage: str | None = Field(
        None, description="Optuna storage: sqlite:///… | postgresql://… | mysql://… | "
        "journal:<file>; null = sqlite:///<output_dir>/optuna.db"
    )
    space_dir: str | None = Field(
        None, description="Directory of <method>.yaml search spaces; null = the project's"
    )
    spaces: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-method overrides: knob -> distribution "
        "({type, low, high, log, step, choices}) or a fixed value"
    )
    train_space: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Shared train settings to search for every method, "
        "e.g. {lr: {type: float, low: 1e-5, high: 1e-4, log: true}}"
    )
    asha: AshaConfig = Field(default_factory=AshaConfig)
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="Trials at once; null = free CPUs / (num_workers x CPUs per worker)"
    )
    cpus_per_trial_worker: float | None = Field(
        None, gt=0,
        description="CPUs per Train worker of a trial; null = scaling.cpus_per_worker or 1",
    )
    trial_resources: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: {"trial_driver": 1.0},
        description="Ray resources of each trial's driver process (not its workers); a "
        "cluster's nodes must declare them (ray start --resources)",
    )
    max_failures: int = Field(
        0, ge=0, description="Worker restarts per trial from its last checkpoint"
    )
    rank_by: str | None = Field(
        None, description="Metric that picks each method's best trial in the report; "
        "null = the first objective"
    )
    rank_min: dict[str, float] = Field(
        default_factory=dict, description="Floors a trial must reach to be ranked, e.g. "
        "{clean_accuracy: 0.6}: a collapsed (constant) model scores high robust accuracy"
    )

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, value: list[str]) -> list[str]:
        # Names are checked against the registry by ``jobfile`` (the schema imports no method).
        if len(set(value)) != len(value):
            raise ValueError("methods must not repeat")
        return value

    @field_validator("trial_resources")
    @classmethod
    def _named_resources(cls, value: dict[str, float]) -> dict[str, float]:
        if any(not key.strip() for key in value):
            raise ValueError("resource names must be non-empty")
        return value

    @field_validator("objectives")
    @classmethod
    def _unique_objectives(cls, value: list[ObjectiveConfig]) -> list[ObjectiveConfig]:
        if len({o.metric for o in value}) != len(value):
            raise ValueError("objective metrics must not repeat")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        if self.num_samples is not None and self.num_samples_per_method is not None:
            raise ValueError("set num_samples or num_samples_per_method, not both")
        if self.mode == "grid":
            if self.num_samples is not None or self.num_samples_per_method is not None:
                raise ValueError("mode grid: the grid sets the trial count; drop num_samples "
                                 "and num_samples_per_method")
            if self.train_space:
                raise ValueError("mode grid: train_space is not searched; fix train settings "
                                 "in the job's train section")
            for method, knobs in self.spaces.items():
                for knob, raw in knobs.items():
                    if isinstance(raw, dict) and "choices" not in raw:
                        raise ValueError(f"spaces.{method}.{knob}: mode grid takes a fixed value "
                                         "or {choices: [...]}, not a range")
        if self.asha.enabled and self.asha.metric is None and len(self.objectives) > 1:
            raise ValueError("asha.metric is required with several objectives (a per-epoch proxy)")
        unknown = sorted(set(self.spaces) - set(self.methods))
        if unknown:
            raise ValueError(f"spaces.{unknown[0]}: not one of the sweep's methods")
        return self

    def total_samples(self) -> int:
        """Trials in the whole sweep (a grid's count before skipping recorded cells)."""
        if self.mode == "grid":  # sweep.params.grid_cells lists them (a test keeps both equal)
            per_seed = sum(
                math.prod(len(raw["choices"]) for raw in self.spaces.get(m, {}).values()
                          if isinstance(raw, dict))
                for m in self.methods
            )
            return per_seed * max(1, len(self.seeds))
        if self.num_samples_per_method is not None:
            return self.num_samples_per_method * len(self.methods)
        return self.num_samples if self.num_samples is not None else 4 * len(self.methods)

    def objective_metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    def asha_metric_mode(self) -> tuple[str, str]:
        """ASHA's (metric, mode): the proxy when given, else the single objective."""
        if self.asha.metric is None:
            first = self.objectives[0]
            return first.metric, self.asha.mode or first.mode
        modes = {o.metric: o.mode for o in self.objectives}
        return self.asha.metric, self.asha.mode or modes.get(self.asha.metric, "max")


class ClusterConfig(_Strict):
    """Which Ray cluster to use."""

    address: str | None = Field(
        None, description="Existing Ray cluster address; null = RAY_ADDRESS or a local one"
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance")
    node_ip_address: str = Field("127.0.0.1", description="Bind address of a local Ray instance")


class JobConfig(_Strict):
    """A whole job: one trial (``train``) or many (``sweep``)."""

    name: str = Field("job", pattern=r"^[A-Za-z0-9_.-]+$", max_length=100, description="Job name")
    seed: int = Field(0, ge=0, description="Seed of data sampling, init and training")
    output_dir: str | None = Field(None, description="Results directory; null = runs/<name>")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    sweep: SweepConfig | None = None

    @field_validator("name")
    @classmethod
    def _no_parent(cls, value: str) -> str:
        if ".." in value or _dots_only(value):
            raise ValueError("must not contain '..' or be only dots (it names a directory)")
        return value

    @field_validator("output_dir")
    @classmethod
    def _no_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a non-empty path or null")
        if value is not None:
            check_output_dir(Path(value))
        return value

    @model_validator(mode="after")
    def _batch_splits(self) -> JobConfig:
        batch, workers = self.train.batch_size, self.scaling.num_workers
        if batch % workers:
            raise ValueError(
                f"train.batch_size ({batch}) must be a multiple of scaling.num_workers "
                f"({workers}): each worker takes batch_size / num_workers rows"
            )
        return self

    def resolved_output_dir(self) -> Path:
        """Absolute output directory (Ray workers run in other working directories)."""
        return Path(self.output_dir or f"runs/{self.name}").expanduser().resolve()

    def resolved_tracking_uri(self) -> str:
        """Absolute MLflow URI: MLflow 3's file store raises, so the default is sqlite."""
        if self.tracking.tracking_uri:
            return self.tracking.tracking_uri
        return f"sqlite:///{self.resolved_output_dir() / 'mlflow.db'}"


# --------------------------------------------------------------------------------------------
# Loading, overrides and error formatting


# Directories a job must never write into (or, for the trees, below): outputs there would
# clobber the system, and ``sweep --overwrite`` deletes what an output dir holds.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/proc", "/sbin", "/sys")
SYSTEM_DIRS = ("/", "/home", "/lib", "/lib64", "/media", "/mnt", "/opt", "/root", "/run", "/srv",
               "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/var")


def check_output_dir(path: Path, what: str = "output_dir") -> Path:
    """The resolved directory, or ValueError when it is a system or home directory."""
    resolved = path.expanduser().resolve()
    system = str(resolved) in SYSTEM_DIRS or resolved == Path.home().resolve()
    system = system or any(resolved == Path(t) or Path(t) in resolved.parents for t in SYSTEM_TREES)
    if system:
        raise ValueError(
            f"{what} {str(resolved)!r} is a system or home directory; choose a dedicated "
            "results directory"
        )
    return resolved


# --------------------------------------------------------------------------------------------
# Loading YAML safely, overrides and error formatting

MAX_YAML_BYTES = 1 << 20  # job and space files are a few KiB; more is a mistake or an attack
MAX_YAML_NODES = 100_000  # nodes after alias expansion (a "billion laughs" file has 10^9)
MAX_YAML_DEPTH = 64


class YamlLimitError(yaml.MarkedYAMLError):
    """A YAML document over a size limit (it is never expanded, so never shown)."""


def _expanded_nodes(root: yaml.Node) -> int:
    """Nodes of ``root`` with every alias expanded, counted without expanding (shared nodes
    are memoised), or YamlLimitError past the limits or on a recursive alias."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise YamlLimitError(problem="recursive alias (a node contains itself)",
                                 problem_mark=node.start_mark)
        if depth > MAX_YAML_DEPTH:
            raise YamlLimitError(problem=f"nested deeper than {MAX_YAML_DEPTH} levels",
                                 problem_mark=node.start_mark)
        open_nodes.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_YAML_NODES:
                raise YamlLimitError(
                    problem=f"aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?)",
                    problem_mark=node.start_mark)
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(root, 0)


class GuardedLoader(yaml.SafeLoader):
    """``yaml.safe_load`` (plain data only) that also refuses duplicate keys, recursive aliases
    and alias expansion past ``MAX_YAML_NODES`` (checked on the node graph, before building)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _expanded_nodes(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # merged keys may be overridden: that is what << is for
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # unhashable: SafeLoader reports it
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {shown_value(key) or 'of this mapping'}",
                        key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """'line N: problem' for any YAML error, without echoing document content."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"unacceptable character #x{exc.character:04x} at position {exc.position}"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        return f"{where}{exc.problem or exc.context or 'invalid YAML'}"
    return first_line(exc)


def parse_yaml_text(text: str) -> Any:
    """Load one YAML document with ``GuardedLoader`` (raises yaml.YAMLError)."""
    loader = GuardedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML so numbers/lists/bools keep their type."""
    shown = shown_value(text)
    if "=" not in text:
        raise ConfigError(f"--set {shown}: expected key.path=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {shown}: empty key")
    path = [p.strip() for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"--set {shown}: empty segment in key {shown_value(key)} "
                          "(expected key.path=value)")
    try:
        value = parse_yaml_text(raw) if raw.strip() else ""
    except (yaml.constructor.ConstructorError, YamlLimitError) as exc:
        raise ConfigError(f"--set {shown}: {_yaml_problem(exc)}") from None
    except (yaml.YAMLError, RecursionError):
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string; users mean a number
        try:
            value = float(value)
        except ValueError:
            pass
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key.path=value`` applied."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {shown_value(text)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return out


def read_yaml(path: str | os.PathLike[str], what: str = "YAML file") -> dict[str, Any]:
    """Read a YAML mapping safely (size cap, UTF-8, no duplicate keys, no alias bombs);
    one clear error line on any problem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such {what}" if not p.exists() else f"{p}: not a file")
    try:
        with open(p, "rb") as handle:
            data = handle.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read {what} ({exc.strerror or first_line(exc)})") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_YAML_BYTES // 1024} KiB; not a {what}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        loaded = parse_yaml_text(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML ({_yaml_problem(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{p}: invalid YAML (nested too deeply)") from None
    if loaded is None:
        raise ConfigError(f"{p}: empty {what} (no settings, only comments or blank lines)")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level")
    return loaded


def parse_job(raw: dict[str, Any], origin: str = "job") -> JobConfig:
    """The schema alone (no method registry): ``jobfile.validate_job`` adds the method checks.

    Used where a job was already validated once and only crosses a process boundary again
    (a sweep trial's job, a trial's saved job)."""
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None
    except RecursionError:
        raise ConfigError(f"{origin}: nested too deeply (a recursive YAML alias?)") from None


def job_to_yaml(cfg: JobConfig) -> str:
    """The resolved config as YAML (logged as an artifact and printed by ``validate``)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys (MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat
