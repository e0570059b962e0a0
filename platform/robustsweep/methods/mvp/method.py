"""MVP: Model-tuning Via Prompts (Raman et al., EMNLP 2023), with optional MVP+adv.

Classify with the masked-LM head instead of a fresh MLP on [CLS]. Each input is copied once per
cloze template; the MLM logits of the label words are read at the template's [MASK] and pooled
over a class's words and over templates into ordinary class logits:

    s_{t,c} = pool_{w in V_c} logit_MLM(w | x (+) template_t)        z_c = pool_t s_{t,c}

Training minimises CE(z, y) over all templates (``train_templates=all``) or one random template
per example (``random_one``). Encoder and MLM head (dense, LayerNorm, vocabulary bias; decoder
tied to the word embeddings) are fine-tuned; MVP adds no parameters, so the unused sequence-
classification head and pooler are frozen. MVP+adv (``adv_eps`` > 0): K-step L2 PGD in
word-embedding space on the templated inputs, in eval mode, then only the adversarial loss is
trained (methods.md §7.2).

Where the head lives: it is attached to the classifier as the submodule ``mvp_mlm_head``. Then
``core.state_dict()`` checkpoints and resumes it, the loop's optimizer finds it through
``core.named_parameters()`` and DDP, which wraps ``core``, all-reduces its gradients. (Through
``extra_parameters()`` it would reach the optimizer but not DDP's all-reduce.) Its parameters
are used outside ``core.forward`` but inside the same autograd graph, so DDP's gradient hooks
still fire; the frozen classifier/pooler keep DDP from waiting on unused parameters.

Truncation cuts the text, never the template; inputs are assumed right-padded ([CLS] ... [SEP]).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from robustsweep.errors import MethodError
from robustsweep.methods.base import Batch, Knobs, RobustMethod
from robustsweep.methods.mvp.mlm_head import MaskedLMHead, load_mlm_head
from robustsweep.methods.perturb import ascent_step, dropout_mode, project
from robustsweep.methods.registry import register

if TYPE_CHECKING:
    from robustsweep.data import Task
    from robustsweep.models import EncoderAdapter

log = logging.getLogger(__name__)

HEAD_ATTR = "mvp_mlm_head"
# The official SST-2 templates; a leading [SEP] means "append after the text" (it is a marker,
# not a token: [CLS] text [MASK] [SEP]).
SST2_TEMPLATES: tuple[str, ...] = (
    "Sentiment of the statement is [MASK] .",
    "[SEP] [MASK]",
    "This is a [MASK] statement",
    "[SEP] The statement is [MASK]",
)
_MARKERS = re.compile(r"(\[MASK\]|\[SEP\])")


class MVPKnobs(Knobs):
    """Official defaults: all 4 SST-2 templates, max over label words, mean over templates."""

    adv_eps: float = Field(
        0.0, ge=0, le=100,
        description="MVP+adv L2 radius per templated copy over the whole L×d word-embedding "
                    "tensor; 0 = plain MVP (MVP+adv: 1.0)")
    n_templates: int = Field(4, ge=1, le=32, description="Use the first n templates (SST-2: 4)")
    train_templates: Literal["all", "random_one"] = Field(
        "all", description="Training copies: all templates (num_template -1) or one random "
                           "template per example (-2); inference always uses all (all)")
    pool_templates: Literal["mean", "max"] = Field("mean", description="Pool over templates (mean)")
    pool_label_words: Literal["max", "mean"] = Field(
        "max", description="Pool over a class's label words (max)")
    adv_steps: int = Field(1, ge=1, le=20, description="MVP+adv ascent steps K, step 1.5·eps/K (1)")
    templates: tuple[str, ...] = Field(
        SST2_TEMPLATES, min_length=1,
        description="Cloze templates with one [MASK]; a leading [SEP] appends after the text "
                    "(the 4 official SST-2 templates)")
    label_words: tuple[tuple[str, ...], ...] | None = Field(
        None, description="Label words per class in label-id order; null = the task's label "
                          "names (SST-2: negative / positive)")

    @model_validator(mode="after")
    def _enough_templates(self) -> MVPKnobs:
        if self.n_templates > len(self.templates):
            raise ValueError(f"n_templates={self.n_templates} but only {len(self.templates)} templates")
        return self


@dataclass(frozen=True)
class Template:
    """A template as token ids ([MASK] included, the leading append marker not), inserted
    before or after the text."""

    ids: tuple[int, ...]
    append: bool
    mask_offset: int


def piece_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a text fragment without special tokens.

    Minimal tokenizers (the test one) always add [CLS] ... [SEP]; those two are stripped.
    """
    if not text.strip():
        return []
    try:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    except TypeError:
        return tokenizer([text])["input_ids"][0].tolist()[1:-1]


def _space_sensitive(tokenizer: Any) -> bool:
    """BPE tokenizers (RoBERTa, GPT-2) encode " word" differently from "word"."""
    return piece_ids(tokenizer, "positive") != piece_ids(tokenizer, " positive")


def compile_template(text: str, tokenizer: Any, mask_id: int, sep_id: int) -> Template:
    """Parse "... [MASK] ..." (leading "[SEP]" = append) into token ids; exactly one [MASK].

    A leading "[SEP]" is only the append marker: it is stripped, not encoded, so an appended
    template gives [CLS] text T [SEP] (acmi-lab/mvp ``insert_tokenized_prompts`` tokenizes the
    template without its first word). A [SEP] elsewhere in a template stays a separator token.
    """
    spaced = _space_sensitive(tokenizer)
    body = text.strip()
    append = body.startswith("[SEP]")
    if append:
        body = body[len("[SEP]"):]
    ids: list[int] = []
    for part in _MARKERS.split(body):
        if part == "[MASK]":
            ids.append(mask_id)
        elif part == "[SEP]":
            ids.append(sep_id)
        elif part.strip():
            ids += piece_ids(tokenizer, (" " if spaced and (ids or append) else "") + part.strip())
    if ids.count(mask_id) != 1:
        raise MethodError(f"MVP template {text!r} must contain exactly one [MASK]")
    return Template(tuple(ids), append, ids.index(mask_id))


def label_word_ids(tokenizer: Any, words: tuple[tuple[str, ...], ...]) -> list[list[int]]:
    """Single-token ids of each class's label words.

    Multi-token and unknown ([UNK]) words are dropped with a warning; a class left without a
    word, or two classes sharing a word, is an error (the official code drops them silently).
    """
    prefix = " " if _space_sensitive(tokenizer) else ""
    unk = getattr(tokenizer, "unk_token_id", None)
    result: list[list[int]] = []
    for label, class_words in enumerate(words):
        kept = []
        for word in class_words:
            ids = piece_ids(tokenizer, prefix + word)
            if len(ids) == 1 and ids[0] != unk:
                kept.append(ids[0])
            else:
                log.warning("MVP: label word %r is not a single known token (%s); dropped", word, ids)
        if not kept:
            raise MethodError(f"MVP: class {label} has no single-token label word among {class_words}")
        result.append(kept)
    flat = [w for ids in result for w in ids]
    if len(flat) != len(set(flat)):
        raise MethodError(f"MVP: label words {words} share tokens between classes")
    return result


def insert_templates(batch: Batch, rows: list[tuple[int, int]], templates: list[Template],
                     max_length: int, pad_id: int) -> Batch:
    """One row per (example, template): [CLS] T text [SEP] or [CLS] text T [SEP].

    The text is clipped (never the template) to fit ``max_length``; ``mask_pos`` holds the
    [MASK] index of each row. Assumes right padding.
    """
    ids = batch["input_ids"].tolist()
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    types = batch["token_type_ids"].tolist() if "token_type_ids" in batch else None
    new_ids, new_types, mask_pos = [], [], []
    for example, t in rows:
        n, template = int(lengths[example]), templates[t]
        row = ids[example][:n]
        body = row[1:n - 1]
        overflow = n + len(template.ids) - max_length
        if overflow > 0:
            body = body[:max(0, len(body) - overflow)]
        tpl = list(template.ids)
        if template.append:
            new_ids.append([row[0], *body, *tpl, row[n - 1]])
            mask_pos.append(1 + len(body) + template.mask_offset)
        else:
            new_ids.append([row[0], *tpl, *body, row[n - 1]])
            mask_pos.append(1 + template.mask_offset)
        if types is not None:
            trow = types[example][:n]
            body_types = trow[1:1 + len(body)]
            tpl_types = [trow[n - 1] if template.append else trow[0]] * len(tpl)
            parts = (body_types, tpl_types) if template.append else (tpl_types, body_types)
            new_types.append([trow[0], *parts[0], *parts[1], trow[n - 1]])
    width = max(len(r) for r in new_ids)
    device = batch["input_ids"].device
    out = {
        "input_ids": torch.tensor([r + [pad_id] * (width - len(r)) for r in new_ids], device=device),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in new_ids],
                                       device=device),
        "mask_pos": torch.tensor(mask_pos, device=device),
    }
    if types is not None:
        out["token_type_ids"] = torch.tensor([r + [0] * (width - len(r)) for r in new_types], device=device)
    return out


@register
class MVP(RobustMethod):
    """Prompt-based fine-tuning through the MLM head; cost T× vanilla (T(K+1)× with adv)."""

    name = "mvp"
    summary = "Model-tuning via prompts: classify with MLM label-word scores at a cloze [MASK]"
    paper = "Raman et al., EMNLP 2023 (arXiv 2303.07320)"
    knobs_class = MVPKnobs
    knobs: MVPKnobs

    def __init__(self, knobs: MVPKnobs | None = None) -> None:
        super().__init__(knobs)
        self.templates: list[Template] = []
        self.class_word_ids: list[list[int]] = []

    # ---- set-up -----------------------------------------------------------------------------
    def setup(self, adapter: EncoderAdapter, task: Task | None = None) -> None:
        super().setup(adapter, task)
        tokenizer = adapter.tokenizer
        mask_id, sep_id = getattr(tokenizer, "mask_token_id", None), getattr(tokenizer, "sep_token_id", None)
        if mask_id is None or sep_id is None:
            raise MethodError("MVP needs a tokenizer with a mask and a separator token")
        words = self.knobs.label_words
        if words is None:
            if task is None:
                raise MethodError("MVP needs knobs.label_words when no task is given")
            words = tuple((name,) for name in task.label_names)
        texts = self.knobs.templates[:self.knobs.n_templates]
        if adapter.lowercase:  # the pipeline lower-cases texts; keep prompts consistent
            texts = tuple("".join(p if _MARKERS.fullmatch(p) else p.lower() for p in _MARKERS.split(t))
                          for t in texts)
            words = tuple(tuple(w.lower() for w in ws) for ws in words)
        if len(words) != adapter.num_labels:
            raise MethodError(f"MVP: {len(words)} label-word classes for {adapter.num_labels} labels")
        self.templates = [compile_template(t, tokenizer, mask_id, sep_id) for t in texts]
        self.class_word_ids = label_word_ids(tokenizer, words)
        self._attach_head()

    def _attach_head(self) -> None:
        """Register the MLM head inside the classifier and freeze what MVP does not use."""
        core = self.adapter.core
        if not hasattr(core, HEAD_ATTR):
            in_process = not getattr(core.config, "_name_or_path", "")
            core.add_module(HEAD_ATTR, load_mlm_head(self.adapter, allow_random=in_process))
        mlm = {id(p) for p in self.head.parameters()}
        for param in self.adapter.head_parameters():
            if id(param) not in mlm:
                param.requires_grad_(False)

    @property
    def head(self) -> MaskedLMHead:
        return getattr(self.adapter.core, HEAD_ATTR)

    # ---- forward ----------------------------------------------------------------------------
    def templated(self, batch: Batch, template_of: list[int] | None = None) -> tuple[Batch, int]:
        """Rows for every (example, template) pair, or one given template per example.

        Returns the templated batch and the number of rows per example.
        """
        n = batch["input_ids"].shape[0]
        if template_of is None:
            rows = [(b, t) for b in range(n) for t in range(len(self.templates))]
            per_example = len(self.templates)
        else:
            rows, per_example = list(enumerate(template_of)), 1
        pad_id = getattr(self.adapter.tokenizer, "pad_token_id", 0) or 0
        return insert_templates(batch, rows, self.templates, self.adapter.max_length, pad_id), per_example

    def class_scores(self, templated: Batch, word_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """s_{r,c}: label-word MLM logits at each row's [MASK], pooled over the class's words."""
        out = self.adapter.forward(templated, word_embeds=word_embeds, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        at_mask = hidden[torch.arange(hidden.shape[0], device=hidden.device), templated["mask_pos"]]
        flat = [w for words in self.class_word_ids for w in words]
        scores = self.head(at_mask, torch.tensor(flat, device=hidden.device)).float()  # fp32 logits
        pooled, start = [], 0
        for words in self.class_word_ids:
            part = scores[:, start:start + len(words)]
            pooled.append(part.max(dim=1).values if self.knobs.pool_label_words == "max" else part.mean(dim=1))
            start += len(words)
        return torch.stack(pooled, dim=1)

    def pool_templates(self, scores: torch.Tensor, per_example: int) -> torch.Tensor:
        """z_{b,c} from the example's template rows (contiguous, example-major)."""
        grouped = scores.view(-1, per_example, scores.shape[-1])
        return grouped.mean(dim=1) if self.knobs.pool_templates == "mean" else grouped.max(dim=1).values

    def logits_of(self, templated: Batch, per_example: int, delta: torch.Tensor | None = None) -> torch.Tensor:
        words = None if delta is None else self.adapter.word_embeddings(templated["input_ids"]) + delta
        return self.pool_templates(self.class_scores(templated, words), per_example)

    def predict_logits(self, batch: Batch) -> torch.Tensor:
        """All templates at inference: attacks edit the raw text, never the template."""
        templated, per_example = self.templated(batch)
        return self.logits_of(templated, per_example)

    # ---- training ---------------------------------------------------------------------------
    def adversarial_delta(self, templated: Batch, per_example: int, labels: torch.Tensor,
                          eps: float) -> torch.Tensor:
        """K-step L2 PGD on the templated word embeddings (eval mode, only ∇δ computed).

        Start: U(-1, 1) rescaled to ‖δ‖ = eps per row (all positions, padding included).
        """
        words = self.adapter.word_embeddings(templated["input_ids"]).detach()
        if eps == 0:
            return torch.zeros_like(words)
        steps = self.knobs.adv_steps
        delta = torch.empty_like(words).uniform_(-1, 1)
        delta = delta * (eps / delta.flatten(1).norm(dim=1).clamp(min=1e-12)).view(-1, 1, 1)
        with self.no_sync(), dropout_mode(self.model, "off", 0):
            for _ in range(steps):
                delta.requires_grad_(True)
                z = self.pool_templates(self.class_scores(templated, words + delta), per_example)
                (grad,) = self.grad(F.cross_entropy(z, labels), delta)
                delta = ascent_step(delta, grad, 1.5 * eps / steps, eps, "l2")
        return project(delta.detach(), eps, "l2")

    def training_step(self, batch: Batch) -> dict[str, float]:
        labels = batch["labels"]
        template_of = None
        if self.knobs.train_templates == "random_one":
            picks = torch.randint(len(self.templates), (labels.shape[0],))
            template_of = picks.tolist()
        templated, per_example = self.templated(batch, template_of)
        terms: dict[str, float] = {}
        delta = None
        if self.knobs.adv_eps > 0:
            delta = self.adversarial_delta(templated, per_example, labels, self.knobs.adv_eps)
        loss = F.cross_entropy(self.logits_of(templated, per_example, delta), labels)
        if delta is not None:
            terms["adv_loss"] = loss.item()
        self.backward(loss)
        return {"loss": loss.item(), **terms}

    def passes_per_step(self) -> float:
        copies = 1 if self.knobs.train_templates == "random_one" else self.knobs.n_templates
        return float(copies * (1 + (self.knobs.adv_steps if self.knobs.adv_eps > 0 else 0)))

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Template/verbalizer ids, to refuse resuming with another tokenizer or verbalizer.

        The head's weights are in the model's state dict (it is a submodule of the classifier).
        """
        return {"templates": [list(t.ids) for t in self.templates], "label_word_ids": self.class_word_ids}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and (state.get("templates") != [list(t.ids) for t in self.templates]
                      or state.get("label_word_ids") != self.class_word_ids):
            raise MethodError("MVP checkpoint was made with other templates or label words")
