"""Export a trained trial as a Hugging Face model folder, plus what its inference needs.

``export_trial`` rebuilds the trial the way ``robustsweep eval`` does (``evaluate.trial``), then
writes into a fresh directory:

- full fine-tuning: ``config.json`` + ``model.safetensors`` + the tokenizer, loadable with
  ``AutoModelForSequenceClassification.from_pretrained(OUT)`` / ``AutoTokenizer.from_pretrained``;
- LoRA (``model.peft``): peft's ``adapter_config.json`` + ``adapter_model.safetensors`` (the
  adapter and the head only) + the tokenizer, for ``PeftModel.from_pretrained(base, OUT)``; with
  ``merge=True`` the merged full model instead, loadable like a fully fine-tuned one;
- always ``robustsweep_inference.json`` (method, knobs, labels, tokenization, where the weights
  came from) and ``robustsweep_job.yaml`` (the trial's job); MVP also ``mvp_mlm_head.safetensors``.

A plain forward is the trial's prediction only when the method keeps ``predict_logits`` as it is;
MVP (templates + MLM head) and RSMI (noisy ensemble with masking) do not, so ``load_exported``
rebuilds the method around the exported weights and predicts through its real inference path.

Nothing is overwritten: OUT must not exist or be an empty directory; files are written into a
temporary sibling that is renamed to OUT at the end, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustsweep.errors import ConfigError, ResourceError

if TYPE_CHECKING:
    import torch

    from robustsweep.methods.base import RobustMethod
    from robustsweep.models.adapter import EncoderAdapter

FORMAT = 1
INFO_FILE = "robustsweep_inference.json"
JOB_FILE = "robustsweep_job.yaml"
MVP_HEAD_FILE = "mvp_mlm_head.safetensors"
FULL, LORA_ADAPTER, LORA_MERGED = "full", "lora_adapter", "lora_merged"


@dataclass
class ExportResult:
    """Where an export went, what it holds and which trial (and why that one) it came from."""

    out_dir: Path
    trial_dir: Path
    checkpoint: Path
    method: str
    weights: str
    plain_forward: bool
    files: list[Path] = field(default_factory=list)
    chosen_by: str | None = None
    finished: bool = True


# ---- which trial ----------------------------------------------------------------------------
def check_out_dir(out: Path) -> Path:
    """OUT as an absolute path if export may write there: absent, or an empty directory."""
    out = Path(out).expanduser().absolute()
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise ConfigError(f"{out}: exists and is not a directory; export writes a new "
                              "directory and never overwrites")
        if any(out.iterdir()):
            raise ConfigError(f"{out}: exists and is not empty; export never overwrites "
                              "(choose a new or empty directory)")
    if not out.parent.is_dir():
        raise ConfigError(f"{out}: parent directory {out.parent} does not exist")
    return out


def _best_of_sweep(target: str, tracking_uri: str | None) -> tuple[Any, Any]:
    """The records of a sweep and its leaderboard's top trial (the report's own ranking)."""
    from robustsweep.report import leaderboard, load

    try:
        records = load(target, tracking_uri)
    except (KeyError, TypeError, AttributeError) as exc:  # a manifest missing what ours have
        raise ConfigError(f"{target}: not a readable robustsweep sweep ({exc!r})") from None
    winners = leaderboard.best_per_method(records)
    if not winners:
        floors = f" with {records.rank_min}" if records.rank_min else ""
        raise ConfigError(f"{target}: no finished trial reported {records.rank_by!r}{floors}: "
                          "nothing to export")
    return records, winners[0]


def _sweep_trial(target: str, tracking_uri: str | None,
                 search: Sequence[Path]) -> tuple[Path, str]:
    """The trial dir of a sweep's best trial (sweep dir or MLflow parent run)."""
    from robustsweep.state.manifest import Manifest
    from robustsweep.state.trial import TrialDir

    records, best = _best_of_sweep(target, tracking_uri)
    why = (f"best trial {best.label} of sweep {records.name} by {records.rank_by} "
           f"({best.metrics[records.rank_by]:.4f}; the report's leaderboard)")
    sweep_dir = Path(records.sweep_dir) if records.sweep_dir else None
    if sweep_dir is not None and Manifest.exists(sweep_dir):
        trial_dir = Manifest.load(sweep_dir).trial_dir(best.trial_id)
        if TrialDir(trial_dir).has_record():
            return trial_dir, why
    if best.run_id:
        roots = [*search, *([sweep_dir] if sweep_dir is not None else [])]
        return TrialDir.find_by_run_id(best.run_id, roots).path, why
    raise ConfigError(f"{target}: best trial {best.label} has no trial directory here "
                      "(pass its trial directory)")


def _sweep_with_parent(run_id: str, roots: Iterable[Path]) -> Path | None:
    """A local sweep dir whose manifest names MLflow parent run ``run_id``."""
    from robustsweep.state.manifest import MANIFEST_FILE, Manifest

    for root in roots:
        if not root.is_dir():
            continue
        for path in root.rglob(MANIFEST_FILE):
            try:
                if Manifest.load(path.parent).parent_run_id == run_id:
                    return path.parent
            except (ConfigError, OSError, ValueError, KeyError):
                continue
    return None


def resolve_export_source(ref: str, search: Sequence[Path],
                          tracking_uri: str | None = None) -> tuple[Path, Path, str | None]:
    """(trial dir, state file, why this trial) for a trial/checkpoint dir, a sweep dir, a
    trial's MLflow run id or a sweep's MLflow parent run id."""
    from robustsweep.evaluate import trial as trials
    from robustsweep.state.manifest import Manifest
    from robustsweep.state.trial import TrialDir

    path = Path(ref).expanduser()
    why: str | None = None
    if path.exists():
        if Manifest.exists(path):
            trial_dir, why = _sweep_trial(str(path.resolve()), None, search)
            return trial_dir, TrialDir(trial_dir).latest_state_file(), why
        trial_dir, state = trials.resolve(ref, list(search))
        return trial_dir, state, None
    try:
        trial = TrialDir.find_by_run_id(ref, search)
        return trial.path, trial.latest_state_file(), None
    except ConfigError:
        pass
    sweep_dir = _sweep_with_parent(ref, search)
    if sweep_dir is not None:
        trial_dir, why = _sweep_trial(str(sweep_dir), None, search)
        return trial_dir, TrialDir(trial_dir).latest_state_file(), why
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        trial_dir, why = _sweep_trial(ref, uri, search)
        return trial_dir, TrialDir(trial_dir).latest_state_file(), why
    where = ", ".join(str(p) for p in search)
    raise ConfigError(f"{ref}: no such directory, and no trial or sweep with that MLflow run id "
                      f"under {where} (pass a trial, checkpoint or sweep directory, --search DIR "
                      "or --tracking-uri)")


# ---- writing --------------------------------------------------------------------------------
def plain_forward(method: RobustMethod) -> bool:
    """Whether the method predicts with the classifier's own forward (no inference wrapper)."""
    from robustsweep.methods.base import RobustMethod

    return type(method).predict_logits is RobustMethod.predict_logits


def _without_extras(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The classifier's own tensors: no module a method attached (MVP's head goes elsewhere)."""
    from robustsweep.methods.mvp.method import HEAD_ATTR

    return {k: v.contiguous() for k, v in state.items() if not k.startswith(HEAD_ATTR + ".")}


def _write_weights(adapter: EncoderAdapter, tmp: Path, merge: bool) -> str:
    """The model files; which kind of weights they are."""
    if not adapter.uses_lora:
        adapter.hf.save_pretrained(tmp, state_dict=_without_extras(adapter.hf.state_dict()))
        return FULL
    if merge:
        import copy

        merged = copy.deepcopy(adapter.core).merge_and_unload()
        merged.save_pretrained(tmp, state_dict=_without_extras(merged.state_dict()))
        return LORA_MERGED
    adapter.core.save_pretrained(tmp)  # peft: adapter_config.json + adapter_model.safetensors
    return LORA_ADAPTER


def _write_method_files(method: RobustMethod, tmp: Path) -> dict[str, str]:
    """What the method's inference needs besides the classifier (MVP: its MLM head)."""
    from safetensors.torch import save_file

    from robustsweep.methods.mvp.method import HEAD_ATTR

    head = getattr(method.adapter.core, HEAD_ATTR, None) if method.adapter else None
    if head is None:
        return {}
    save_file(head.own_state(), str(tmp / MVP_HEAD_FILE))
    return {"mvp_mlm_head": MVP_HEAD_FILE}


INFERENCE_NOTE = {
    True: "plain forward: AutoModelForSequenceClassification (LoRA: PeftModel) logits are the "
          "trial's predictions (tokenize as 'tokenization' says)",
    False: "not a plain forward: the trial predicts through the method's inference path; use "
           "robustsweep.export.load_exported(OUT).predict_logits (the bare classifier's logits "
           "are not what the trial predicted)",
}


def _info(loaded: Any, weights: str, plain: bool, extra_files: dict[str, str],
          checkpoint_epoch: int | None, finished: bool, chosen_by: str | None) -> dict[str, Any]:
    from robustsweep import __version__
    from robustsweep.models.loading import resolve_model_path

    cfg, adapter = loaded.cfg, loaded.method.adapter
    peft = cfg.model.peft.model_dump(mode="json") if cfg.model.peft is not None else None
    return {
        "format": FORMAT,
        "robustsweep_version": __version__,
        "method": {"name": cfg.method.name, "knobs": dict(cfg.method.knobs)},
        "plain_forward": plain,
        "inference": INFERENCE_NOTE[plain],
        "weights": weights,
        "model_source": cfg.model.source,
        "base_model": resolve_model_path(cfg.model.source) if weights == LORA_ADAPTER else None,
        "model_dropout": cfg.model.dropout,
        "peft": peft,
        "family": adapter.family.name,
        "labels": list(loaded.task.label_names),
        "tokenization": {"max_length": adapter.max_length, "lowercase": adapter.lowercase,
                         "padding_side": adapter.family.padding_side, "truncation": True},
        "files": extra_files,
        "trial": {"dir": str(loaded.trial_dir), "checkpoint": str(loaded.checkpoint),
                  "epoch": checkpoint_epoch, "finished": finished, "run_id": loaded.run_id,
                  "chosen_by": chosen_by},
    }


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary sibling of OUT, renamed to OUT on success and removed on failure (it only
    ever holds what this export wrote)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        yield tmp
        check_out_dir(out)  # nobody wrote into OUT meanwhile
        if out.is_dir():
            out.rmdir()  # empty (checked): rename cannot replace it otherwise on every OS
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_trial(ref: str, out: Path, *, merge: bool = False, search: Sequence[Path] = (),
                 tracking_uri: str | None = None, trust_remote_code: bool = False) -> ExportResult:
    """Export the trial ``ref`` names (for a sweep: its leaderboard's best trial) into ``out``."""
    import yaml

    from robustsweep.evaluate import trial as trials
    from robustsweep.state.trial import TrialDir, checkpoint_epoch

    out = check_out_dir(out)
    roots = [Path(p).resolve() for p in (search or [Path("runs")])]
    trial_dir, state, chosen_by = resolve_export_source(ref, roots, tracking_uri)
    record = TrialDir(trial_dir).read_record() or {}
    job = record.get("job")
    if not isinstance(job, dict):
        raise ConfigError(f"{trial_dir}: not a robustsweep trial record (no job)")
    if (job.get("model") or {}).get("trust_remote_code") and not trust_remote_code:
        raise ConfigError(f"{trial_dir}: the trial's model needs trust_remote_code (custom model "
                          "code runs on load); pass --trust-remote-code if you trust it")
    if not state.is_file():
        raise ResourceError(f"{trial_dir}: no checkpoint to export")
    loaded = trials.load_trial(trial_dir, state, anomaly=False)
    adapter = loaded.method.adapter
    if merge and not adapter.uses_lora:
        raise ConfigError(f"--merge: trial {trial_dir} has no LoRA adapter (model.peft is unset)")
    epoch = checkpoint_epoch(state.parent)
    finished = TrialDir(trial_dir).finished
    plain = plain_forward(loaded.method)
    with _staging(out) as tmp:
        weights = _write_weights(adapter, tmp, merge)
        adapter.tokenizer.save_pretrained(tmp)
        extra = _write_method_files(loaded.method, tmp)
        info = _info(loaded, weights, plain, extra, epoch if epoch >= 0 else None, finished,
                     chosen_by)
        (tmp / JOB_FILE).write_text(yaml.safe_dump(loaded.cfg.model_dump(mode="json"),
                                                   sort_keys=False))
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        names = sorted(p.name for p in tmp.iterdir())
    return ExportResult(out, trial_dir, state, loaded.cfg.method.name, weights, plain,
                        [out / n for n in names], chosen_by, finished)


# ---- loading --------------------------------------------------------------------------------
@dataclass
class ExportedModel:
    """An exported trial ready to predict the way the trial did (``predict_logits``)."""

    adapter: EncoderAdapter
    method: RobustMethod | None
    info: dict[str, Any]

    @property
    def labels(self) -> list[str]:
        return list(self.info["labels"])

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, Any]:
        """Tokenize like the trial (lower-casing, truncation, padding side, family inputs)."""
        return self.adapter.to_device(self.adapter.encode(texts, pairs))

    def predict_logits(self, batch: dict[str, torch.Tensor] | Sequence[str]) -> torch.Tensor:
        """Class logits of a tokenized batch (``encode``) or of raw texts, through the method's
        inference path (eval mode; input gradients only where the method needs them)."""
        import torch

        if not isinstance(batch, dict):
            batch = self.encode(list(batch))
        core = self.adapter.core
        core.eval()
        needs_grad = self.method is not None and self.method.wants_grad_at_inference
        with torch.enable_grad() if needs_grad else torch.no_grad():
            if self.method is None:
                return self.adapter.logits(batch).detach()
            return self.method.predict_logits(batch).detach()


def _read_info(out: Path) -> dict[str, Any]:
    path = out / INFO_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a robustsweep export ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ConfigError(f"{path}: unknown export format {info.get('format')!r}"
                          if isinstance(info, dict) else f"{path}: not a robustsweep export")
    return info


def _load_adapter(out: Path, info: dict[str, Any], trust_remote_code: bool) -> EncoderAdapter:
    """The exported classifier as an adapter (LoRA: the base from its source + the adapter)."""
    from robustsweep.config import ModelConfig
    from robustsweep.models.loading import load_model, prepare_tokenizer

    tok = info["tokenization"]
    labels = info["labels"]
    if info["weights"] != LORA_ADAPTER:
        return load_model(ModelConfig(source=str(out), trust_remote_code=trust_remote_code),
                          len(labels), tok["max_length"], tok["lowercase"], labels)
    from peft import PeftModel
    from transformers import AutoTokenizer

    base = load_model(ModelConfig(source=info["model_source"], dropout=info.get("model_dropout"),
                                  trust_remote_code=trust_remote_code),
                      len(labels), tok["max_length"], tok["lowercase"], labels)
    base.model = PeftModel.from_pretrained(base.hf, str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out), trust_remote_code=trust_remote_code)
    prepare_tokenizer(tokenizer, base.hf.config, base.family)
    base.tokenizer = tokenizer
    return base


def _attach_mvp_head(adapter: EncoderAdapter, path: Path) -> None:
    """Put the exported MLM head where MVP's setup finds it (so it loads nothing else)."""
    from safetensors.torch import load_file
    from torch import nn

    from robustsweep.methods.mvp.method import HEAD_ATTR
    from robustsweep.methods.mvp.mlm_head import MaskedLMHead

    state = load_file(str(path))
    head = MaskedLMHead.for_model(adapter.hf)
    if "untied_decoder" in state:
        head.untied_decoder = nn.Parameter(state["untied_decoder"].clone())
    head.load_state_dict(state)
    head.provenance = f"exported MLM head ({path})"
    adapter.core.add_module(HEAD_ATTR, head.to(adapter.device))


def load_exported(out: str | os.PathLike[str], *, device: str = "cpu",
                  trust_remote_code: bool = False) -> ExportedModel:
    """Load an export for prediction through the trial's inference path (``predict_logits``)."""
    from robustsweep.data import Task, TextSet
    from robustsweep.methods import registry

    out = Path(out)
    info = _read_info(out)
    adapter = _load_adapter(out, info, trust_remote_code)
    adapter.core.to(device)
    if info["plain_forward"]:
        return ExportedModel(adapter, None, info)
    head_file = (info.get("files") or {}).get("mvp_mlm_head")
    if head_file:
        _attach_mvp_head(adapter, out / head_file)
    method = registry.build(info["method"]["name"], info["method"]["knobs"])
    empty = TextSet(texts=[], labels=[], ids=[])
    method.setup(adapter, Task(train=empty, eval=empty, label_names=list(info["labels"])))
    return ExportedModel(adapter, method, info)
