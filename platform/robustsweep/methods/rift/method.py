"""RIFT (Dong et al., NeurIPS 2021): robust fine-tuning that keeps the pre-trained features.

    L = w_clean·CE(f(x), y) + w_kl·KL(p(x) ‖ p(ê)) + w_mi·(1/C) Σ_c InfoNCE_c

ê is the ASCC adversary (methods.md §6.2): for every position i, a convex combination
ê_i = Σ_k w_ik E(s_ik) of the EO-space embeddings of the token and its synonyms, with weights
w = softmax(ŵ·v + 500(v − 1)) optimised by Adam for ``ascc_steps`` steps on
KL(p(x) ‖ p(ê)) − λ_sp·H(w)/(300·128), model in eval mode. InfoNCE_c contrasts, within class
c, projected student features of the adversarial input with projected features of a frozen
copy of the *initial* encoder (the teacher) on the clean input. The KL lets gradient reach both
branches; there is no adversarial CE (official command).

Deviations (documented in docs/methods.md): the classifier is the model's own head, not
RIFT's 768→256→C MLP; features are the last-layer [CLS] state (architecture-agnostic) instead of
BERT's pooler; the MI term reuses the adversarial forward instead of a second one (that forward
re-embeds the candidates in train mode, with dropout, as official ``comb_w_to_logit``); the default
synonym table is nearest neighbours in the model's own word-embedding space (not the
counter-fitted Jia et al. 2019 sets, which are not available offline).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from robustsweep.methods._common import (
    allreduce_grads,
    embedding_output,
    eo_forward,
    kl_per_example,
)
from robustsweep.methods.base import BACKWARD_COST, FORWARD_COST, Batch, Knobs, RobustMethod
from robustsweep.methods.perturb import dropout_mode
from robustsweep.methods.registry import register
from robustsweep.methods.rift.synonyms import SynonymSource, synonym_table

if TYPE_CHECKING:
    from robustsweep.data import Task
    from robustsweep.models import EncoderAdapter

PROJ_HIDDEN, PROJ_DIM = 512, 256  # per-class projection MLPs d → 512 → ReLU → 256
ENTROPY_NORM = 300.0 * 128.0  # official normaliser of the hull-entropy term
INVALID_LOGIT = 500.0


class RIFTKnobs(Knobs):
    """Official rift_train.sh defaults for IMDb / BERT-base (SNLI: w_kl 5, w_mi 0.7)."""

    w_kl: float = Field(
        10.0, ge=0, le=1000,
        description="Weight of KL(p(x) ‖ p(ê)), clean vs ASCC adversary (IMDb 10, SNLI 5)")
    w_mi: float = Field(0.1, ge=0, le=100,
                        description="Weight of the class-wise InfoNCE to the frozen pre-trained "
                                    "encoder's features (IMDb 0.1, SNLI 0.7)")
    w_clean: float = Field(1.0, ge=0, le=100, description="Weight of the clean CE (1)")
    temperature: float = Field(0.2, gt=0, le=10, description="τ of the InfoNCE similarities (0.2)")
    ascc_steps: int = Field(10, ge=0, le=100, description="Adam steps on the hull weights (10)")
    ascc_lr: float = Field(1.0, gt=0, le=100, description="Adam lr on the hull logits ŵ (1)")
    ascc_weight_decay: float = Field(2e-5, ge=0, le=1, description="Adam weight decay on ŵ (2e-5)")
    ascc_sparse_w: float = Field(15.0, ge=0, le=1000,
                                 description="λ_sp, weight of the hull-entropy (vertex) term (15)")
    n_synonyms: int = Field(9, ge=0, le=64, description="Synonyms per token besides itself (9)")
    synonym_source: SynonymSource = Field(
        "embedding",
        description="Synonym table: embedding = nearest whole-word neighbours in the model's word "
                    "embeddings (offline deviation) | wordnet (NLTK data); paper: counter-fitted")
    min_similarity: float = Field(
        0.5, ge=-1, le=1,
        description="embedding source: keep neighbours with cosine ≥ this in the model's word "
                    "embeddings (0.5); counter-fitted sets hold close words only, often none")
    skip_stopwords: bool = Field(
        True, description="Stopwords (NLTK list) get no substitutes and are none (True)")
    polarity_filter: bool = Field(
        True, description="Drop synonyms of opposite General-Inquirer polarity (good→bad): "
                          "counter-fitted sets exclude antonyms, raw neighbours do not (True)")


# ---- ASCC pieces ------------------------------------------------------------------------------
def hull_logits(w_hat: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """ŵ·v + 500(v − 1): invalid candidates get logit −500, i.e. weight ≈ e^-500."""
    v = valid.to(w_hat.dtype).unsqueeze(-1)
    return w_hat * v + INVALID_LOGIT * (v - 1)


def hull_weights(w_hat: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """w = softmax_k(ŵ·v + 500(v − 1)), shape B×L×K×1."""
    return torch.softmax(hull_logits(w_hat, valid), dim=2)


def hull_embedding(weights: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """ê_i = Σ_k w_ik E(s_ik): (B, L, K, 1) × (B, L, K, d) → (B, L, d)."""
    return (weights * candidates).sum(dim=2)


def info_nce(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """−(1/n) Σ_i log softmax_j(u_j·t_i/τ)_{j=i}: the softmax runs over students per teacher."""
    u = F.normalize(student, dim=-1)
    t = F.normalize(teacher, dim=-1)
    scores = (u @ t.T).float() / temperature  # [j, i]; fp32 under autocast (precision.py)
    return -torch.log_softmax(scores, dim=0).diagonal().mean()


def projection(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, PROJ_HIDDEN), nn.ReLU(), nn.Linear(PROJ_HIDDEN, PROJ_DIM))


def fingerprint(module: nn.Module) -> str:
    """sha256 of a module's state (parameters and buffers), to prove the teacher never moved."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Candidates:
    """Per-position candidate ids (original first) and their validity, both B×L×K."""

    ids: torch.Tensor
    valid: torch.Tensor


@register
class RIFT(RobustMethod):
    """Clean CE + TRADES-like KL to an ASCC adversary + InfoNCE to a frozen teacher; ≈12×."""

    name = "rift"
    summary = "RIFT: ASCC synonym-hull adversary + InfoNCE to the frozen pre-trained encoder"
    paper = "Dong et al. NeurIPS 2021 (arXiv 2112.11668)"
    knobs_class = RIFTKnobs
    knobs: RIFTKnobs

    def __init__(self, knobs: RIFTKnobs | None = None) -> None:
        super().__init__(knobs)
        self.teacher: nn.Module | None = None
        self.teacher_sha256 = ""
        self.student_heads = nn.ModuleList()
        self.teacher_heads = nn.ModuleList()
        self.synonyms: torch.Tensor | None = None

    @property
    def adversarial(self) -> bool:
        return self.knobs.w_kl > 0 or self.knobs.w_mi > 0

    # ---- life cycle -------------------------------------------------------------------------
    def setup(self, adapter: EncoderAdapter, task: Task | None = None) -> None:
        """Freeze a copy of the initial encoder, build the heads and the synonym table."""
        super().setup(adapter, task)
        self.teacher = copy.deepcopy(adapter.backbone).eval().requires_grad_(False)
        self.teacher_sha256 = fingerprint(self.teacher)
        dim, classes, device = adapter.hidden_size, adapter.num_labels, adapter.device
        self.student_heads = nn.ModuleList(projection(dim) for _ in range(classes)).to(device)
        self.teacher_heads = nn.ModuleList(projection(dim) for _ in range(classes)).to(device)
        if self.adversarial:
            self.synonyms = self.synonym_table(adapter).to(device)

    def synonym_table(self, adapter: EncoderAdapter) -> torch.Tensor:
        """V×n_synonyms ids from the configured source, filtered as the knobs ask."""
        k = self.knobs
        return synonym_table(adapter, k.synonym_source, k.n_synonyms,
                             min_similarity=k.min_similarity, skip_stopwords=k.skip_stopwords,
                             polarity_filter=k.polarity_filter)

    def extra_parameters(self) -> list[nn.Parameter]:
        return [*self.student_heads.parameters(), *self.teacher_heads.parameters()]

    # ---- ASCC -------------------------------------------------------------------------------
    def candidates(self, batch: Batch) -> Candidates:
        """The token itself plus its table synonyms on real positions (padding: itself only)."""
        ids = batch["input_ids"]
        assert self.synonyms is not None, "setup() builds the synonym table"
        syn = self.synonyms[ids]
        ok = (syn >= 0) & batch["attention_mask"].bool().unsqueeze(-1)
        original = ids.unsqueeze(-1)
        return Candidates(
            ids=torch.cat([original, torch.where(ok, syn, original)], dim=-1),
            valid=torch.cat([torch.ones_like(original, dtype=torch.bool), ok], dim=-1),
        )

    def candidate_embeddings(self, batch: Batch, cands: Candidates) -> torch.Tensor:
        """E(s_ik) at position i for every candidate k: B×L×K×d (embedding layer only)."""
        return torch.stack([embedding_output(self.adapter, batch, cands.ids[..., k])
                            for k in range(cands.ids.shape[-1])], dim=2)

    def ascc(self, batch: Batch, cand_eo: torch.Tensor, valid: torch.Tensor,
             w_hat: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """Hull weights after ``ascc_steps`` Adam steps (eval mode); returns (w, KL at init).

        Only ∇ŵ is computed (no parameter ``.grad``); w is detached and the mode restored.
        """
        k, adapter, model = self.knobs, self.adapter, self.model
        cand_eo = cand_eo.detach()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            clean = adapter.logits(batch)
        if w_hat is None:
            w_hat = nn.init.kaiming_normal_(torch.empty(*valid.shape, 1, device=cand_eo.device))
        w_hat = w_hat.detach().clone().requires_grad_(True)
        optim = torch.optim.Adam([w_hat], lr=k.ascc_lr, weight_decay=k.ascc_weight_decay)
        kl_init = float("nan")
        with self.no_sync():
            for step in range(k.ascc_steps):
                logits = hull_logits(w_hat, valid)
                w = torch.softmax(logits, dim=2)
                adv = eo_forward(adapter, batch, hull_embedding(w, cand_eo)).logits
                kl = kl_per_example(clean, adv).sum()
                entropy = -(w * torch.log_softmax(logits, dim=2)).sum()  # finite at w ≈ 0
                objective = kl - k.ascc_sparse_w * entropy / ENTROPY_NORM
                (w_hat.grad,) = self.grad(-objective, w_hat)
                optim.step()
                if step == 0:
                    kl_init = kl.item()
        model.train(was_training)
        return hull_weights(w_hat.detach(), valid), kl_init

    # ---- loss -------------------------------------------------------------------------------
    def teacher_features(self, batch: Batch) -> torch.Tensor:
        """Pooled ([CLS] / last-token) features of the frozen initial encoder, clean input."""
        assert self.teacher is not None
        with torch.no_grad():
            return self.adapter.features(self.teacher, batch)

    def class_infonce(self, student: torch.Tensor, teacher: torch.Tensor,
                      labels: torch.Tensor) -> torch.Tensor:
        """(1/C) Σ_c InfoNCE_c over the classes with ≥ 2 examples in the batch."""
        terms = []
        for c in range(len(self.student_heads)):
            idx = (labels == c).nonzero().squeeze(1)
            if idx.numel() >= 2:
                terms.append(info_nce(self.student_heads[c](student[idx]),
                                      self.teacher_heads[c](teacher[idx]), self.knobs.temperature))
        return torch.stack(terms).mean() if terms else student.new_zeros(())

    def training_step(self, batch: Batch) -> dict[str, float]:
        k, labels = self.knobs, batch["labels"]
        if not self.adversarial:
            ce = F.cross_entropy(self.adapter.logits(batch), labels)
            loss = k.w_clean * ce
            self.backward(loss)
            return {"loss": loss.item(), "ce": ce.item()}
        cands = self.candidates(batch)
        with torch.no_grad(), dropout_mode(self.model, "off", 0):  # the attack sees no dropout
            attack_eo = self.candidate_embeddings(batch, cands)
        weights, kl_init = self.ascc(batch, attack_eo, cands.valid)

        logits = self.adapter.logits(batch)
        # Re-embed the candidates in the caller's mode: the trained adversarial branch gets its
        # own embedding dropout and gradient, as official ``comb_w_to_logit`` re-embeds them.
        cand_eo = self.candidate_embeddings(batch, cands)
        adv_out = eo_forward(self.adapter, batch, hull_embedding(weights, cand_eo),
                             output_hidden_states=k.w_mi > 0)
        ce = F.cross_entropy(logits, labels)
        kl = kl_per_example(logits, adv_out.logits).mean()
        loss = k.w_clean * ce + k.w_kl * kl
        terms = {"ce": ce.item(), "kl": kl.item()}
        if k.ascc_steps > 0:
            terms["ascc_kl_init"] = kl_init
        if k.w_mi > 0:
            mi = self.class_infonce(self.adapter.pooled(adv_out.hidden_states[-1]), self.teacher_features(batch),
                                    labels)
            loss = loss + k.w_mi * mi
            terms["infonce"] = mi.item()
        self.backward(loss)
        allreduce_grads(self.extra_parameters())
        return {"loss": loss.item(), **terms}

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Heads, synonym table and the teacher (its full state, so resume never re-derives it)."""
        assert self.teacher is not None
        state: dict[str, Any] = {
            "student_heads": self.student_heads.state_dict(),
            "teacher_heads": self.teacher_heads.state_dict(),
            "teacher": self.teacher.state_dict(),
            "teacher_sha256": self.teacher_sha256,
        }
        if self.synonyms is not None:
            state["synonyms"] = self.synonyms
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.teacher is not None, "setup() must run before load_state_dict()"
        self.student_heads.load_state_dict(state["student_heads"])
        self.teacher_heads.load_state_dict(state["teacher_heads"])
        self.teacher.load_state_dict(state["teacher"])
        self.teacher_sha256 = fingerprint(self.teacher)
        if self.teacher_sha256 != state["teacher_sha256"]:
            raise ValueError("rift checkpoint: the restored teacher does not match its sha256")
        if "synonyms" in state:
            self.synonyms = state["synonyms"].to(self.adapter.device)

    def passes_per_step(self) -> float:
        """ASCC steps (F+B each) + clean, adversarial and teacher F + backward of both (≈2B)."""
        if not self.adversarial:
            return 1.0
        forwards = 2 + (1 if self.knobs.w_mi > 0 else 0)
        return self.knobs.ascc_steps + forwards * FORWARD_COST + 2 * BACKWARD_COST
