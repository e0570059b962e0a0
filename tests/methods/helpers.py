"""Helpers shared by mechanism tests: reference steps and gradient snapshots."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustsweep.models import EncoderAdapter


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter gradient (zeros where none was written)."""
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}


def vanilla_grads(adapter: EncoderAdapter, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of a hand-written CE step (the reference every method reduces to)."""
    adapter.core.zero_grad(set_to_none=True)
    loss = F.cross_entropy(adapter.core(**{k: v for k, v in batch.items() if k != "labels"}).logits,
                           batch["labels"])
    loss.backward()
    out = grads(adapter.core)
    adapter.core.zero_grad(set_to_none=True)
    return loss.item(), out


def recording(fn, sink: list):
    """Wrap ``fn`` so every tensor it returns is also appended (detached copy) to ``sink``."""

    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        sink.append(out.detach().clone())
        return out

    return wrapper


def assert_grads_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], atol=atol, rtol=1e-5, msg=name)


class LinearAdapter(EncoderAdapter):
    """logits = Linear(masked mean of word embeddings): CE is convex in the embeddings."""

    def __init__(self, vocab: int = 64, dim: int = 8, labels: int = 2) -> None:
        torch.manual_seed(0)
        core = torch.nn.Module()
        core.emb = torch.nn.Embedding(vocab, dim)
        core.head = torch.nn.Linear(dim, labels)
        core.get_input_embeddings = lambda: core.emb  # type: ignore[assignment]
        super().__init__(tokenizer=None, model=core)

    def forward(self, batch, *, word_embeds=None, embed_delta=None, output_hidden_states=False):
        embeds = word_embeds if word_embeds is not None else self.word_embeddings(batch["input_ids"])
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (embeds * mask).sum(1) / mask.sum(1)

        class Out:
            logits = self.core.head(pooled)

        return Out()
