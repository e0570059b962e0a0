"""Every registered method trains through the real Ray Train path (tiny local model dir)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import mlflow
import pytest

from robustsweep.data import BUILTIN_SETS
from robustsweep.jobfile import validate_job
from robustsweep.methods import registry
from robustsweep.train.trial import run_trial

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A small BERT with an MLM head and a WordPiece vocab of frequent MR words, saved locally."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny_bert")
    words = Counter(w for text in BUILTIN_SETS["mr"].load()["text"].head(3000)
                    for w in re.findall(r"[a-z]+|[^\sa-z]", text.lower()))
    label_words = ["negative", "positive", "sentiment", "statement"]  # MVP's default verbalizer
    common = [w for w, _ in words.most_common(1500) if w not in label_words]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *label_words, *common]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertForMaskedLM(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("method", sorted(registry.available()))
def test_method_trains_on_ray(ray_local, tiny_model_dir: Path, tmp_path: Path, method: str) -> None:
    cfg = validate_job({
        "name": f"smoke-{method}", "output_dir": str(tmp_path / method),
        "data": {"source": "builtin:mr", "train_size": 24, "eval_size": 16, "max_length": 32},
        "model": {"source": str(tiny_model_dir)},
        "method": {"name": method},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
    })
    result = run_trial(cfg)
    assert {"clean_accuracy", "ece", "train_loss", "cost/fwd_bwd_passes"} <= result.metrics.keys()
    assert result.metrics["train_loss"] == result.metrics["train_loss"]  # not NaN
    run = mlflow.MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["method.name"] == method
