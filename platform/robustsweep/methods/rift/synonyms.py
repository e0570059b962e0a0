"""RIFT's synonym tables: for every vocab id, up to k whole-word token ids it may be swapped
with (−1: none), from the model's own word embeddings or WordNet, filtered by the lexicon
(stopwords get no substitutes, antonym-like polarity flips are dropped)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from robustsweep.errors import ResourceError
from robustsweep.lexicon import english_stopwords, polarity_lexicon, word_polarity

if TYPE_CHECKING:
    from robustsweep.models import EncoderAdapter

SynonymSource = Literal["embedding", "wordnet"]
WORD_MARKERS = ("Ġ", "▁")  # word-start markers of byte-level BPE and SentencePiece vocabularies


def token_words(tokenizer: Any, vocab_size: int) -> list[str] | None:
    """The whole alphabetic word each vocab id spells ("" for pieces, punctuation, specials).

    None for a bare test tokenizer without ``convert_ids_to_tokens`` (every id is a word).
    """
    if not hasattr(tokenizer, "convert_ids_to_tokens"):
        return None
    n = min(vocab_size, len(tokenizer))
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    markers = [m for m in WORD_MARKERS if sum(t.startswith(m) for t in tokens) > n // 10]
    words = []
    for tok in tokens:
        if markers:  # BPE/SentencePiece: a word starts with the marker
            word = tok[1:] if tok.startswith(markers[0]) else ""
        else:  # WordPiece: continuation pieces start with ##
            word = "" if tok.startswith("##") else tok
        words.append(word if len(word) >= 2 and word.isalpha() else "")
    return words + [""] * (vocab_size - n)


def word_token_mask(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """Which vocab ids are whole alphabetic words (no specials, sub-word pieces or punctuation)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for attr in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id", "unk_token_id",
                 "bos_token_id", "eos_token_id"):
        if getattr(tokenizer, attr, None) is not None:
            special.add(int(getattr(tokenizer, attr)))
    words = token_words(tokenizer, vocab_size)
    if words is None:
        is_word = torch.ones(vocab_size, dtype=torch.bool)
    else:
        is_word = torch.tensor([bool(w) for w in words], dtype=torch.bool)
    for i in special:
        if 0 <= i < vocab_size:
            is_word[i] = False
    return is_word


def token_polarity(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """+1 / −1 / 0 per vocab id: the General Inquirer polarity of the word it spells (or of
    its stem, so "boring" opposes "exciting")."""
    words = token_words(tokenizer, vocab_size)
    if words is None:
        return torch.zeros(vocab_size, dtype=torch.long)
    lexicon = polarity_lexicon()
    return torch.tensor([word_polarity(w, lexicon) if w else 0 for w in words], dtype=torch.long)


def polarity_flips(table: torch.Tensor, polarity: torch.Tensor) -> torch.Tensor:
    """Which table entries have the opposite polarity of their row's word (good → bad).

    Counter-fitted synonym sets (the paper's) keep antonyms apart; raw embedding neighbours do
    not, and a KL to an antonym swap teaches the model to ignore sentiment.
    """
    return (table >= 0) & (polarity.unsqueeze(1) * polarity[table.clamp(min=0)] < 0)


def stopword_ids(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """Which vocab ids spell an English stopword (NLTK's list, as the attacks use)."""
    words = token_words(tokenizer, vocab_size)
    if words is None:
        return torch.zeros(vocab_size, dtype=torch.bool)
    stop = english_stopwords()
    return torch.tensor([w.lower() in stop for w in words], dtype=torch.bool)


def compact_table(table: torch.Tensor, keep: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` kept entries per row, in their original (nearest-first) order; −1 pads."""
    keep = keep & (table >= 0)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    compact = torch.where(keep, table, torch.full_like(table, -1)).gather(1, order)
    out = torch.full((table.shape[0], k), -1, dtype=table.dtype)
    width = min(k, compact.shape[1])
    out[:, :width] = compact[:, :width]
    return out


def embedding_neighbours(weight: torch.Tensor, is_word: torch.Tensor, k: int,
                         min_similarity: float = -1.0, chunk: int = 1024) -> torch.Tensor:
    """V×k table: the k nearest whole-word ids by cosine in ``weight``, each at least
    ``min_similarity`` (−1: none)."""
    vocab = weight.shape[0]
    table = torch.full((vocab, k), -1, dtype=torch.long)
    ids = is_word.nonzero().squeeze(1)
    if k == 0 or ids.numel() < 2:
        return table
    emb = F.normalize(weight.detach()[ids.to(weight.device)].float(), dim=-1)
    k_eff = min(k, ids.numel() - 1)
    for start in range(0, ids.numel(), chunk):
        sims = emb[start:start + chunk] @ emb.T
        rows = torch.arange(sims.shape[0], device=sims.device)
        sims[rows, rows + start] = -float("inf")  # never a synonym of itself
        top = sims.topk(k_eff, dim=1)
        found = ids[top.indices.cpu()]
        found[top.values.cpu() < min_similarity] = -1
        table[ids[start:start + chunk], :k_eff] = found
    return table


def wordnet_neighbours(tokenizer: Any, is_word: torch.Tensor, k: int) -> torch.Tensor:
    """V×k table from WordNet lemmas that are whole-word vocab tokens (−1: none)."""
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
    except (ImportError, LookupError):
        raise ResourceError("rift synonym_source 'wordnet' needs nltk and its wordnet data "
                            "(see offline.md); use synonym_source: embedding") from None
    ids = is_word.nonzero().squeeze(1).tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    word_of = {i: t.lstrip("".join(WORD_MARKERS)) for i, t in zip(ids, tokens, strict=True)}
    id_of = {w.lower(): i for i, w in word_of.items()}
    table = torch.full((is_word.numel(), k), -1, dtype=torch.long)
    for i, word in word_of.items():
        found: list[int] = []
        for synset in wordnet.synsets(word):
            for lemma in synset.lemma_names():
                j = id_of.get(lemma.lower())
                if j is not None and j != i and j not in found:
                    found.append(j)
        if found[:k]:
            table[i, :len(found[:k])] = torch.tensor(found[:k])
    return table


def embedding_table(adapter: EncoderAdapter, k: int, min_similarity: float) -> torch.Tensor:
    """Nearest whole-word neighbours in the model's own word embeddings (≥ min_similarity)."""
    weight = adapter.word_embedding_weight
    return embedding_neighbours(weight, word_token_mask(adapter.tokenizer, weight.shape[0]), k,
                                min_similarity)


def wordnet_table(adapter: EncoderAdapter, k: int, min_similarity: float) -> torch.Tensor:
    """WordNet lemmas of each whole-word token (needs the NLTK wordnet data; no similarity)."""
    vocab = adapter.word_embedding_weight.shape[0]
    return wordnet_neighbours(adapter.tokenizer, word_token_mask(adapter.tokenizer, vocab), k)


# Synonym sources by knob value: each returns a V×k table of token ids (−1: no synonym).
SYNONYM_SOURCES: dict[str, Callable[[EncoderAdapter, int, float], torch.Tensor]] = {
    "embedding": embedding_table,
    "wordnet": wordnet_table,
}


def synonym_table(adapter: EncoderAdapter, source: SynonymSource, k: int, *,
                  min_similarity: float, skip_stopwords: bool,
                  polarity_filter: bool) -> torch.Tensor:
    """V×k ids from ``source``, filtered as asked.

    With a filter on, twice as many candidates are drawn so that filtered rows stay full.
    """
    build = SYNONYM_SOURCES[source]
    if not (polarity_filter or skip_stopwords):
        return build(adapter, k, min_similarity)
    table = build(adapter, 2 * k, min_similarity)
    vocab = table.shape[0]
    keep = table >= 0
    if skip_stopwords:
        stop = stopword_ids(adapter.tokenizer, vocab)
        keep &= ~stop[table.clamp(min=0)]
        keep[stop] = False  # function words keep their place: no substitutes
    if polarity_filter:
        try:
            polarity = token_polarity(adapter.tokenizer, vocab)
        except ResourceError as exc:
            raise ResourceError(f"rift polarity_filter: {exc}; or set polarity_filter: false") from None
        keep &= ~polarity_flips(table, polarity)
    return compact_table(table, keep, k)
