"""The family table's promises: decoder pooling under inputs_embeds, ALBERT's per-depth hooks,
refusals at validate in one line, and the doc matrix generated from the test parameters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_families import MODEL_TYPES, doc_matrix, make_adapter, matrix_markdown

from robustsweep import resolve
from robustsweep.errors import ConfigError
from robustsweep.jobfile import validate_job
from robustsweep.models.families import FAMILIES, family_of

DECODERS = [m for m in MODEL_TYPES if family_of(m).kind == "decoder"]  # type: ignore[union-attr]
TEXTS = ["good film", "the plot was awful and bad", "a great movie"]


@pytest.mark.parametrize("model_type", DECODERS)
def test_decoder_logits_from_embeddings_equal_logits_from_ids(model_type: str) -> None:
    """On a left-padded batch: HF's own input_ids path (which finds the last non-pad token),
    the adapter's inputs_embeds path (pools the last position) and each text alone agree."""
    adapter = make_adapter(model_type)
    adapter.core.eval()
    batch = adapter.encode(TEXTS)
    assert not batch["attention_mask"].all(), "the batch must contain padding"
    with torch.no_grad():
        from_ids = adapter.hf(input_ids=batch["input_ids"], **adapter.model_inputs(batch)).logits
        from_embeds = adapter.logits(batch)
        perturbed = adapter.logits(batch, word_embeds=adapter.word_embeddings(batch["input_ids"]))
        alone = torch.cat([adapter.logits(adapter.encode([t])) for t in TEXTS])
    torch.testing.assert_close(from_embeds, from_ids, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(perturbed, from_ids, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone, from_ids, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_family_conventions(model_type: str) -> None:
    adapter = make_adapter(model_type)
    family = adapter.family
    batch = adapter.encode(TEXTS)
    assert ("token_type_ids" in batch) == ("token_type_ids" in family.inputs and
                                           "token_type_ids" in adapter.tokenizer.model_input_names)
    real = batch["attention_mask"].bool()
    if family.kind == "decoder":
        assert real[:, -1].all() and adapter.tokenizer.padding_side == "left"
        assert adapter.hf.config.pad_token_id == adapter.tokenizer.pad_token_id is not None
        assert adapter.mask_token_id is not None  # RSMI's substitute for [MASK]
    else:
        assert real[:, 0].all() and adapter.tokenizer.padding_side == "right"
    hidden = torch.randn(len(TEXTS), batch["input_ids"].shape[1], 4)
    expected = hidden[:, -1] if family.kind == "decoder" else hidden[:, 0]
    assert torch.equal(adapter.pooled(hidden), expected)
    eo = adapter.embedding_output(batch)
    assert eo.shape[:2] == batch["input_ids"].shape
    with torch.no_grad():  # EO hook: a zero offset leaves the logits unchanged
        adapter.core.eval()
        torch.testing.assert_close(adapter.logits(batch, embed_delta=torch.zeros_like(eo)),
                                   adapter.logits(batch))


def test_albert_hooks_fire_per_depth_on_its_shared_layer() -> None:
    adapter = make_adapter("albert")
    depth = adapter.hf.config.num_hidden_layers
    layers = adapter.encoder_layers
    assert len(layers) == depth and len({id(m) for m in layers}) == 1  # one shared group
    seen: list[int] = []

    def mark(i: int):
        return lambda h: (seen.append(i), h)[1]

    batch = adapter.encode(TEXTS)
    with torch.no_grad(), adapter.layer_hooks({0: mark(0), 2: mark(2)}):
        adapter.logits(batch)
        adapter.logits(batch)
    assert seen == [0, 2, 0, 2]


def _write_config(directory: Path, model_type: str) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": model_type}))
    return directory


def _job(source: Path, method: str) -> dict:
    return {"model": {"source": str(source)}, "method": {"name": method},
            "tracking": {"enabled": False}}


def test_validate_refuses_mvp_on_a_decoder_in_one_line(tmp_path: Path) -> None:
    source = _write_config(tmp_path / "gpt2", "gpt2")
    with pytest.raises(ConfigError) as err:
        resolve.resolve_job(validate_job(_job(source, "mvp")), probe=False)
    message = str(err.value)
    assert "\n" not in message and "GPT-2" in message and "mvp" in message
    assert "mask token" in message
    resolve.resolve_job(validate_job(_job(source, "rsmi")), probe=False)  # hidden-state method


def test_validate_refuses_an_unknown_family(tmp_path: Path) -> None:
    source = _write_config(tmp_path / "t5", "t5")
    with pytest.raises(ConfigError, match=r"model\.source: .*'t5' is not supported"):
        resolve.resolve_job(validate_job(_job(source, "vanilla")), probe=False)


def test_every_family_of_the_table_is_tested() -> None:
    assert {f.name for f in FAMILIES} == {family_of(m).name for m in MODEL_TYPES}  # type: ignore[union-attr]


def test_doc_matrix_is_generated_from_the_test_parameters() -> None:
    assert doc_matrix() == matrix_markdown(), (
        "docs/methods.md family matrix is stale: run python tests/models/tiny_families.py")


def test_families_module_imports_no_torch() -> None:
    code = "import sys, robustsweep.models.families; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("model_type", "lora"), [("distilbert", False), ("qwen2", True)])
def test_local_model_dir_through_prepare_trial_and_fit(tmp_path: Path, model_type: str,
                                                       lora: bool) -> None:
    """``load_model`` on a saved local model (pad token, padding side, LoRA from the config),
    then one short epoch of ``fit``: the path a job takes."""
    from conftest import make_tiny_task
    from robustsweep.train.loop import fit, prepare_trial

    saved = make_adapter(model_type)
    directory = tmp_path / model_type
    saved.hf.save_pretrained(directory)
    saved.tokenizer.save_pretrained(directory)
    model: dict = {"source": str(directory)}
    if lora:
        model["peft"] = {"r": 4, "alpha": 8}
    cfg = validate_job({"model": model, "method": {"name": "smart"}, "tracking": {"enabled": False},
                        "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2},
                        "data": {"max_length": 16}})
    resolve.resolve_job(cfg, probe=False)
    task = make_tiny_task(n_train=8, n_eval=4)
    adapter, method = prepare_trial(cfg, task, "cpu")
    assert adapter.tokenizer.padding_side == adapter.family.padding_side
    assert adapter.uses_lora == lora
    if lora:
        trainable = [n for n, p in adapter.core.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
        assert set(adapter.checkpoint_state()) == set(trainable)
    fit(adapter, method, task, cfg, progress=None)
