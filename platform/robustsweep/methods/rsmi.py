"""RSMI: Randomized Smoothing with Masked Inference (Moon et al., ACL 2023).

Noise (training AND inference; not gated by ``model.training``): encoder layer i with
``i % nth_layers == 0`` (only layer 0 with ``single_layer``) outputs h_i + σ·N(0, I).

Training step (methods.md §9.2):
1. saliency G = ∂CE(f(W(x)), y_gold)/∂W(x), eval mode, noise on (batch-mean CE as in the
   official code, so the raw G scales with 1/batch size); scores s_t = ‖G_t‖₂;
2. candidates: the top ``mask_topk`` tokens by s_t (top-1 for inputs of ≤ 10 tokens), minus
   position 0, the last real token and any special token, in descending saliency;
3. the first ``multi_mask`` candidates become [MASK] (in a ``mask_batch_ratio`` share of rows);
4. L = CE(f_noisy(W(masked) + w_gn·G), y) in train mode.

Inference (``predict_logits``, two-step Monte-Carlo ensemble, §9.3): saliency with the
*predicted* label; stage 1 masks the top-M candidates in ``num_ensemble`` noisy copies and votes;
if P(X ≤ n_a | N₁, ½) < ``alpha_p`` the example is uncertain and stage 2 recomputes the saliency
and runs ``binom_ensemble`` copies, each masking M positions drawn with replacement from the
candidates. Needs input gradients at inference, hence ``wants_grad_at_inference``.

What ``predict_logits`` returns: ``vote_type=avg`` gives the mean of the copies' logits (the
official output; a proper logit vector whose argmax is the smoothed decision);
``vote_type=max`` gives log of the Laplace-smoothed vote shares, log((n_c + 1)/(N + C)), so the
argmax is the plurality vote and softmax gives the smoothed shares.

Fixed noise (``fixed_noise`` knob or the ``fixed_noise_mode`` context): every input seeds its
own generator from a hash of its real token ids and ``noise_seed``, and that generator draws all
its noise (over the real tokens only) and its stage-2 mask choices. The prediction is then a
deterministic function of the text, independent of batch composition and padding. Use it for
attacks: a greedy attack that queries a *random* function mis-ranks words and mis-reads success
checks, which inflates robustness by gradient/score masking rather than by real smoothing
(methods.md §9.8 b). Training always uses the global RNG.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from robustsweep.errors import MethodError
from robustsweep.methods.base import Batch, Knobs, RobustMethod
from robustsweep.methods.perturb import dropout_mode
from robustsweep.methods.registry import register

if TYPE_CHECKING:
    from robustsweep.data import Task
    from robustsweep.models import EncoderAdapter

SHORT_INPUT = 10  # official rule: inputs of at most this many tokens get a single candidate
_MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class RSMIKnobs(Knobs):
    """Official defaults (README commands; attack-time ensemble settings)."""

    noise_sigma: float = Field(0.2, ge=0, le=10, description="σ of the hidden-layer Gaussian noise (0.2)")
    multi_mask: int = Field(2, ge=0, le=64, description="M, salient tokens replaced by [MASK] (2)")
    nth_layers: int = Field(3, ge=1, le=128, description="Noise at layers i with i % nth_layers == 0 (3)")
    single_layer: bool = Field(False, description="Noise at layer 0 only (False)")
    mask_topk: int = Field(5, ge=1, le=64, description="Candidate pool: top-k salient tokens (5)")
    w_gn: float = Field(1.0, ge=0, le=100, description="Weight of the raw saliency gradient added "
                                                        "to the word embeddings in training (1.0)")
    mask_batch_ratio: float = Field(1.0, ge=0, le=1, description="Share of training rows masked (1.0)")
    num_ensemble: int = Field(5, ge=1, le=1024, description="N1, stage-1 noisy copies at inference (5)")
    binom_ensemble: int = Field(50, ge=0, le=4096, description="N2, stage-2 copies; 0 = no stage 2 (50)")
    alpha_p: float = Field(0.98, ge=0, le=1, description="Stage 2 runs when P(X<=n_a|N1,1/2) < alpha_p "
                                                         "(attack command: 0.98; code default 0.7)")
    vote_type: Literal["avg", "max"] = Field("avg", description="avg: mean logits; max: majority vote (avg)")
    fixed_noise: bool = Field(False, description="Seed inference noise per input from its tokens, "
                                                 "so attacks query a fixed function (off = paper)")
    noise_seed: int = Field(0, ge=0, description="Seed mixed into the per-input hash when fixed_noise (0)")


def binom_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2): the one-sided binomial test of the vote."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n


def input_seed(ids: list[int], seed: int) -> int:
    """A stable 63-bit seed from an input's real token ids (hash(text) in the spec)."""
    digest = hashlib.blake2b(torch.tensor(ids, dtype=torch.int64).numpy().tobytes(),
                             digest_size=8, key=seed.to_bytes(8, "little"))
    return int.from_bytes(digest.digest(), "little") & (2 ** 63 - 1)


@dataclass
class NoisePlan:
    """Who owns each row of a forward (rows are example-major), for per-input generators.

    ``generators`` None means the global torch RNG (the paper's stochastic behaviour).
    """

    generators: list[torch.Generator] | None
    lengths: list[int]
    copies: int = 1
    left_padded: bool = False  # decoders: the real tokens are the last ``n`` positions

    def normal(self, like: torch.Tensor) -> torch.Tensor:
        """N(0, I) shaped like ``like``; per-input draws over the real tokens when fixed.

        The per-input draws are written into one CPU tensor and moved in one transfer (one
        host-to-device copy per layer, not one per example); each generator still draws its
        own (copies, n, d) block in the same order, so the values do not change.
        """
        if self.generators is None:
            return torch.randn_like(like)
        noise = torch.zeros(like.shape, dtype=torch.float32)
        dim = like.shape[-1]
        for b, (gen, n) in enumerate(zip(self.generators, self.lengths)):
            rows = slice(b * self.copies, (b + 1) * self.copies)
            real = slice(like.shape[1] - n, None) if self.left_padded else slice(0, n)
            noise[rows, real] = torch.randn((self.copies, n, dim), generator=gen)
        return noise.to(like)

    def subset(self, examples: list[int], copies: int) -> NoisePlan:
        gens = None if self.generators is None else [self.generators[b] for b in examples]
        return NoisePlan(gens, [self.lengths[b] for b in examples], copies, self.left_padded)

    def choice(self, b: int, high: int, size: int, copies: int = 1) -> torch.Tensor:
        """Stage-2 draws with replacement from ``range(high)``: ``copies`` × ``size``.

        One call for all copies: torch's CPU integer sampler draws element by element, so this
        is the same sequence as ``copies`` calls of ``size`` (tests/methods/test_rsmi_inference.py)."""
        gen = None if self.generators is None else self.generators[b]
        return torch.randint(high, (copies, size), generator=gen)


def repeat_rows(batch: Batch, copies: int) -> Batch:
    """Each example's row ``copies`` times, example-major (model inputs only)."""
    return {k: batch[k].repeat_interleave(copies, dim=0) for k in _MODEL_KEYS if k in batch}


def mask_positions(ids: torch.Tensor, positions: list[list[int]], mask_id: int) -> torch.Tensor:
    """``ids`` with the given positions (per row) replaced by the mask id (one indexed write,
    not one per row: an ensemble chunk has hundreds of rows)."""
    out = ids.clone()
    rows = [row for row, cols in enumerate(positions) for _ in cols]
    if rows:
        cols = [col for cols in positions for col in cols]
        out[torch.tensor(rows, device=ids.device), torch.tensor(cols, device=ids.device)] = mask_id
    return out


@register
class RSMI(RobustMethod):
    """Noisy hidden layers + saliency masking; ~2× vanilla to train, ≥ (N1+2)× to predict."""

    name = "rsmi"
    summary = "Randomized smoothing in hidden layers + masked inference on salient tokens"
    paper = "Moon et al., ACL 2023 (RSMI)"
    knobs_class = RSMIKnobs
    knobs: RSMIKnobs
    wants_grad_at_inference = True

    def __init__(self, knobs: RSMIKnobs | None = None) -> None:
        super().__init__(knobs)
        self.fixed_seed: int | None = self.knobs.noise_seed if self.knobs.fixed_noise else None
        self.mask_id = -1
        self.special_ids: set[int] = set()

    def setup(self, adapter: EncoderAdapter, task: Task | None = None) -> None:
        super().setup(adapter, task)
        tokenizer = adapter.tokenizer
        mask_id = adapter.mask_token_id  # decoders have none: the family's substitute
        if mask_id is None and self.knobs.multi_mask > 0:
            raise MethodError("RSMI masking needs a tokenizer with a mask token (or multi_mask=0)")
        self.mask_id = -1 if mask_id is None else int(mask_id)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        for attr in ("cls_token_id", "sep_token_id", "pad_token_id", "bos_token_id", "eos_token_id",
                     "mask_token_id", "unk_token_id"):
            value = getattr(tokenizer, attr, None)
            if value is not None:
                special.add(int(value))
        self.special_ids = special

    # ---- noise ------------------------------------------------------------------------------
    def noise_layers(self) -> list[int]:
        """Encoder layers whose output gets noise."""
        layers = [i for i in range(len(self.adapter.encoder_layers)) if i % self.knobs.nth_layers == 0]
        return layers[:1] if self.knobs.single_layer else layers

    def noisy(self, plan: NoisePlan | None = None) -> Any:
        """Context in which forwards add σ·noise at the configured layers (train and eval)."""
        sigma = self.knobs.noise_sigma
        if sigma == 0:
            return nullcontext()
        source = plan if plan is not None else NoisePlan(None, [])
        return self.adapter.layer_hooks({i: (lambda h: h + sigma * source.normal(h)) for i in self.noise_layers()})

    @contextmanager
    def fixed_noise_mode(self, seed: int | None = 0) -> Iterator[None]:
        """Predictions inside use per-input fixed noise (``seed``); None = stochastic."""
        previous, self.fixed_seed = self.fixed_seed, seed
        try:
            yield
        finally:
            self.fixed_seed = previous

    def inference_plan(self, batch: Batch) -> NoisePlan:
        mask = batch["attention_mask"]
        lengths = [int(n) for n in mask.sum(dim=1).tolist()]
        left = self.adapter.family.padding_side == "left"
        if self.fixed_seed is None:
            return NoisePlan(None, lengths, left_padded=left)
        rows = [batch["input_ids"][b][mask[b].bool()].tolist() for b in range(mask.shape[0])]
        gens = [torch.Generator().manual_seed(input_seed(r, self.fixed_seed)) for r in rows]
        return NoisePlan(gens, lengths, left_padded=left)

    # ---- saliency masking -------------------------------------------------------------------
    def saliency(self, batch: Batch, labels: torch.Tensor | None = None,
                 plan: NoisePlan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, ‖G_t‖): CE gradient w.r.t. the word embeddings (eval mode, noise on).

        ``labels`` None uses the model's own prediction (inference never sees gold labels).
        Only ∇W(x) is computed: no parameter ``.grad`` is written.
        """
        with self.no_sync(), dropout_mode(self.model, "off", 0), torch.enable_grad():
            words = self.adapter.word_embeddings(batch["input_ids"]).detach().requires_grad_(True)
            with self.noisy(plan):
                logits = self.adapter.logits(batch, word_embeds=words)
            target = labels if labels is not None else logits.argmax(dim=-1).detach()
            (grad,) = self.grad(F.cross_entropy(logits, target), words)
        return grad.detach(), grad.detach().norm(dim=-1)

    def mask_candidates(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        scores: torch.Tensor) -> list[list[int]]:
        """Per row: top-k real positions by saliency, minus the first/last real token and
        special tokens, in descending saliency. Positions come from the attention mask.

        The ranking runs batched on the scores' device and comes back in one transfer (a
        per-row loop would wait for the GPU several times per example)."""
        real = attention_mask.bool()
        width = min(self.knobs.mask_topk, scores.shape[1])
        top = scores.masked_fill(~real, float("-inf")).topk(width, dim=1).indices
        positions = torch.arange(real.shape[1], device=real.device).expand_as(real)
        first = positions.masked_fill(~real, real.shape[1]).min(dim=1).values
        last = positions.masked_fill(~real, -1).max(dim=1).values
        table = torch.cat([top, input_ids.gather(1, top), real.sum(dim=1, keepdim=True),
                           first[:, None], last[:, None]], dim=1).tolist()
        out: list[list[int]] = []
        for row in table:
            picks, ids, (n, start, end) = row[:width], row[width:2 * width], row[2 * width:]
            k = min(n, 1 if n <= SHORT_INPUT else self.knobs.mask_topk)
            out.append([p for p, tok in zip(picks[:k], ids[:k], strict=True)
                        if p not in (start, end) and tok not in self.special_ids])
        return out

    # ---- training ---------------------------------------------------------------------------
    def training_step(self, batch: Batch) -> dict[str, float]:
        k = self.knobs
        labels, ids = batch["labels"], batch["input_ids"]
        grad = None
        positions: list[list[int]] = [[] for _ in range(ids.shape[0])]
        if k.multi_mask > 0 or k.w_gn > 0:
            grad, scores = self.saliency(batch, labels)
            if k.multi_mask > 0:
                candidates = self.mask_candidates(ids, batch["attention_mask"], scores)
                n_rows = round(k.mask_batch_ratio * ids.shape[0])
                for row in torch.randperm(ids.shape[0])[:n_rows].tolist():
                    positions[row] = candidates[row][:k.multi_mask]
        masked = {**batch, "input_ids": mask_positions(ids, positions, self.mask_id)}
        words = self.adapter.word_embeddings(masked["input_ids"])
        if grad is not None and k.w_gn > 0:
            words = words + k.w_gn * grad
        with self.noisy():
            loss = F.cross_entropy(self.adapter.logits(masked, word_embeds=words), labels)
        self.backward(loss)
        terms = {"loss": loss.item(), "masked_tokens": sum(map(len, positions)) / max(1, len(positions))}
        if grad is not None:
            terms["grad_noise_norm"] = float(k.w_gn * grad.flatten(1).norm(dim=1).mean())  # per example
        return terms

    def passes_per_step(self) -> float:
        return 2.0 if (self.knobs.multi_mask > 0 or self.knobs.w_gn > 0) else 1.0

    # ---- inference --------------------------------------------------------------------------
    def ensemble_logits(self, batch: Batch, positions: list[list[list[int]]], plan: NoisePlan,
                        max_rows: int = 512) -> torch.Tensor:
        """B×N×C logits of N noisy copies per example; ``positions[b][n]`` = masked positions.

        Chunks hold whole examples, so each input's noise stream does not depend on batching.
        """
        copies = len(positions[0])
        per_chunk = max(1, max_rows // copies)
        out = []
        for start in range(0, len(positions), per_chunk):
            examples = list(range(start, min(start + per_chunk, len(positions))))
            chunk = repeat_rows({k: v[start:examples[-1] + 1] for k, v in batch.items() if k in _MODEL_KEYS}, copies)
            flat = [cols for b in examples for cols in positions[b]]
            chunk["input_ids"] = mask_positions(chunk["input_ids"], flat, self.mask_id)
            with torch.no_grad(), self.noisy(plan.subset(examples, copies)):
                out.append(self.adapter.logits(chunk).view(len(examples), copies, -1))
        return torch.cat(out)

    def aggregate(self, logits: torch.Tensor) -> torch.Tensor:
        """B×N×C copies -> B×C: mean logits (avg) or log smoothed vote shares (max)."""
        if self.knobs.vote_type == "avg":
            return logits.mean(dim=1)
        n, classes = logits.shape[1], logits.shape[2]
        votes = F.one_hot(logits.argmax(dim=-1), classes).sum(dim=1).to(logits.dtype)
        return ((votes + 1) / (n + classes)).log()

    def _candidates(self, batch: Batch, plan: NoisePlan) -> list[list[int]]:
        if self.knobs.multi_mask == 0:
            return [[] for _ in range(batch["input_ids"].shape[0])]
        _, scores = self.saliency(batch, None, plan)
        return self.mask_candidates(batch["input_ids"], batch["attention_mask"], scores)

    def predict_logits(self, batch: Batch) -> torch.Tensor:
        """Two-step Monte-Carlo ensemble (see the module docstring); detached B×C logits."""
        k = self.knobs
        plan = self.inference_plan(batch)
        candidates = self._candidates(batch, plan)
        stage1 = [[cands[:k.multi_mask]] * k.num_ensemble for cands in candidates]
        logits = self.ensemble_logits(batch, stage1, plan)
        out = self.aggregate(logits)
        if k.binom_ensemble == 0:
            return out.detach()
        votes = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).sum(dim=1)
        uncertain = [b for b, n_a in enumerate(votes.max(dim=1).values.tolist())
                     if binom_cdf(int(n_a), k.num_ensemble) < k.alpha_p]
        if uncertain:
            index = torch.tensor(uncertain, device=batch["input_ids"].device)
            sub = {key: batch[key][index] for key in _MODEL_KEYS if key in batch}
            sub_plan = plan.subset(uncertain, 1)
            sub_candidates = self._candidates(sub, sub_plan)
            stage2 = [torch.tensor(cands)[sub_plan.choice(j, len(cands), k.multi_mask, k.binom_ensemble)].tolist()
                      if cands else [[] for _ in range(k.binom_ensemble)]
                      for j, cands in enumerate(sub_candidates)]
            out[index] = self.aggregate(self.ensemble_logits(sub, stage2, sub_plan))
        return out.detach()
