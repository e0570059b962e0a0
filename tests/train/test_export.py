"""Export: a trained trial's folder reloads with plain transformers/peft and predicts what the
trial predicted; LoRA checkpoints hold the adapter and head only and resume exactly; OUT is
never written into when it holds anything.

Trials train in-process on the builtin MiniLM (``prepare_trial`` + ``fit``, as a Ray worker
does) for two steps, and are written in the runner's layout (``evaluate.trial.write_trial``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from robustsweep import api
from robustsweep.cli import main
from robustsweep.config import JobConfig
from robustsweep.data import Task, load_task
from robustsweep.errors import ConfigError
from robustsweep.evaluate.inference import predict_logits
from robustsweep.evaluate.trial import load_trial, write_trial
from robustsweep.export import INFO_FILE, load_exported
from robustsweep.jobfile import validate_job
from robustsweep.methods.base import RobustMethod
from robustsweep.models.loading import resolve_model_path
from robustsweep.state.trial import read_checkpoint, write_checkpoint
from robustsweep.train.loop import fit, prepare_trial

LORA = {"r": 4, "alpha": 8, "dropout": 0.0}
ATOL = 1e-5


def job(out: Path, method: str = "vanilla", lora: bool = False, epochs: int = 1,
        **knobs: Any) -> JobConfig:
    model: dict[str, Any] = {"source": "builtin:minilm"}
    if lora:
        model["peft"] = dict(LORA)
    return validate_job({
        "name": out.name, "seed": 5, "output_dir": str(out), "tracking": {"enabled": False},
        "data": {"source": "builtin:mr", "train_size": 64, "eval_size": 16, "max_length": 32},
        "model": model, "method": {"name": method, "knobs": knobs},
        "train": {"epochs": epochs, "batch_size": 8, "max_steps_per_epoch": 2, "lr": 1e-3,
                  "eval_batch_size": 16},
    })


def train(cfg: JobConfig, task: Task, **fit_kwargs: Any) -> RobustMethod:
    adapter, method = prepare_trial(cfg, task, "cpu")
    fit(adapter, method, task, cfg, progress=None, **fit_kwargs)
    return method


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Task:
    return load_task(job(tmp_path_factory.mktemp("t") / "x").data)


@pytest.fixture(scope="module")
def trials(tmp_path_factory: pytest.TempPathFactory, task: Task) -> dict[str, tuple[Path, Any]]:
    """name -> (trial dir, the trained trial's logits on the first 8 eval rows)."""
    root = tmp_path_factory.mktemp("trials")
    rows = task.eval.subset(list(range(8)))
    made = {}
    for name, method, lora, knobs in [("vanilla", "vanilla", False, {}),
                                      ("vanilla_lora", "vanilla", True, {}),
                                      ("roast_lora", "roast", True, {"fisher_batches": 2}),
                                      ("mvp", "mvp", False, {}),
                                      ("rsmi", "rsmi", False, {"fixed_noise": True})]:
        cfg = job(root / name, method, lora, **knobs)
        trained = train(cfg, task)
        write_trial(root / name, cfg, trained)
        made[name] = (root / name, torch.from_numpy(predict_logits(trained, rows)))
    return made


def texts(task: Task) -> list[str]:
    return task.eval.texts[:8]


def hf_logits(model: torch.nn.Module, out: Path, task: Task) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(texts(task), padding=True, truncation=True, max_length=32,
                      return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_full_export_reloads_with_from_pretrained(trials, task, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    trial_dir, expected = trials["vanilla"]
    out = tmp_path / "export"
    result = api.export(trial_dir, out)
    assert result.weights == "full" and result.plain_forward
    model = AutoModelForSequenceClassification.from_pretrained(out)
    torch.testing.assert_close(hf_logits(model, out, task), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(load_exported(out).predict_logits(texts(task)), expected,
                               atol=ATOL, rtol=0)
    assert model.config.id2label == dict(enumerate(task.label_names))


@pytest.mark.parametrize("name", ["vanilla_lora", "roast_lora"])
def test_lora_export_is_an_adapter_that_peft_reloads(trials, task, tmp_path: Path,
                                                     name: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    trial_dir, expected = trials[name]
    out = tmp_path / "export"
    assert api.export(trial_dir, out).weights == "lora_adapter"
    assert (out / "adapter_model.safetensors").is_file() and not (out / "config.json").exists()
    adapter_bytes = (out / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < 2_000_000  # adapter + head: well under 1 % of MiniLM's 90 MB
    base = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path("builtin:minilm"), num_labels=2)
    model = PeftModel.from_pretrained(base, out)
    torch.testing.assert_close(hf_logits(model, out, task), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(load_exported(out).predict_logits(texts(task)), expected,
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["mvp", "rsmi"])
def test_an_inference_time_defence_exports_its_own_prediction_path(trials, task, tmp_path: Path,
                                                                   name: str) -> None:
    """MVP (templates + MLM head) and RSMI (noisy ensemble + masking) do not predict with the
    bare classifier: the export says so and ``load_exported`` predicts what the trial did."""
    import json

    trial_dir, expected = trials[name]
    out = tmp_path / "export"
    result = api.export(trial_dir, out)
    assert not result.plain_forward and result.method == name
    info = json.loads((out / INFO_FILE).read_text())
    assert info["plain_forward"] is False and info["method"]["name"] == name
    assert (out / "mvp_mlm_head.safetensors").is_file() == (name == "mvp")
    exported = load_exported(out)
    assert exported.method is not None and type(exported.method).__name__.lower().startswith(name)
    torch.testing.assert_close(exported.predict_logits(texts(task)), expected, atol=ATOL, rtol=0)


def test_lora_merge_writes_a_full_model(trials, task, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    trial_dir, expected = trials["vanilla_lora"]
    out = tmp_path / "merged"
    assert api.export(trial_dir, out, merge=True).weights == "lora_merged"
    model = AutoModelForSequenceClassification.from_pretrained(out)
    torch.testing.assert_close(hf_logits(model, out, task), expected, atol=1e-4, rtol=0)


def test_export_never_writes_into_a_non_empty_out(trials, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    trial_dir, _ = trials["vanilla"]
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not empty"):
        api.export(trial_dir, out)
    assert main(["export", str(trial_dir), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert (out / "mine.txt").read_text() == "keep"
    assert not list(tmp_path.glob(".taken.export-*"))  # no staging dir left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(trial_dir), str(empty)]) == 0  # an empty dir is fine
    assert (empty / INFO_FILE).is_file()


# ---- LoRA checkpoints: adapter + head only, and a resume equals an uninterrupted run ----------
class Interrupt(Exception):
    pass


@pytest.mark.parametrize("method, knobs", [("vanilla", {}), ("roast", {"fisher_batches": 2})])
def test_lora_checkpoint_holds_adapter_and_head_and_resumes_exactly(
        tmp_path: Path, task: Task, method: str, knobs: dict) -> None:
    cfg = job(tmp_path / "t", method, lora=True, epochs=2, **knobs)
    full = train(cfg, task)

    def stop_after_first(epoch: int, metrics: dict, state_fn: Any) -> None:
        write_checkpoint(tmp_path / f"epoch_{epoch:03d}", state_fn(), epoch)
        raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, task, on_epoch_end=stop_after_first)
    state = read_checkpoint(tmp_path / "epoch_001")
    saved = set(state["model"])
    assert saved and all("lora_" in k or "modules_to_save" in k for k in saved), sorted(saved)[:5]
    resumed = train(cfg, task, resume=state)
    for (name, p), (_, q) in zip(full.adapter.core.named_parameters(),
                                 resumed.adapter.core.named_parameters(), strict=True):
        assert torch.equal(p, q), name


def test_a_lora_trial_rebuilds_from_its_adapter_checkpoint(trials, task) -> None:
    """``evaluate.trial.load_trial`` (eval, export) restores a LoRA trial from adapter + head."""
    from robustsweep.state.trial import TrialDir

    trial_dir, expected = trials["roast_lora"]
    state_file = TrialDir(trial_dir).latest_state_file()
    loaded = load_trial(trial_dir, state_file, anomaly=False)
    rows = task.eval.subset(list(range(8)))
    torch.testing.assert_close(torch.from_numpy(predict_logits(loaded.method, rows)), expected,
                               atol=ATOL, rtol=0)
