"""The built-in provider: a deterministic hashed vectoriser (words, word pairs and character n-grams, sublinear tf).

It needs no download and no network, so semantic search works in the default install: texts that share
words, word stems or word fragments ("knee"/"knees", "cardiology"/"cardiac") land near each other. It does
not know synonyms that share no letters; the `local` and `openai` providers do.
"""

import math
import re
import zlib
from collections import Counter

import numpy as np

MODEL = "hashed-v1"
_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "a about after all also am an and any are as at be been before being but by can could did do does for from "
    "had has have he her him his how i if in into is it its me my no not of on or our she so than that the "
    "their them then there these they this to too up us was we were what when which who will with would you "
    "your please".split()
)
_SUFFIXES = ("ies", "es", "s", "ing", "ed", "ly")
# Whole words weigh most; fragments let related word forms meet without drowning the words themselves.
_WORD_WEIGHT, _PAIR_WEIGHT, _GRAM_WEIGHT = 1.0, 0.5, 0.25


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def features(text: str) -> Counter[tuple[str, float]]:
    """Weighted features of `text` with their counts."""
    words = [_stem(word) for word in _WORD.findall(text.lower()) if word not in _STOPWORDS]
    counts: Counter[tuple[str, float]] = Counter()
    for index, word in enumerate(words):
        counts["w " + word, _WORD_WEIGHT] += 1
        if index:
            counts[f"p {words[index - 1]} {word}", _PAIR_WEIGHT] += 1
        padded = f"<{word}>"
        for size in (3, 4):
            for start in range(len(padded) - size + 1):
                counts["g " + padded[start:start + size], _GRAM_WEIGHT] += 1
    return counts


def vector(text: str, dimensions: int) -> np.ndarray:
    """Unit-length vector of `text`: each feature adds (1 + log tf) * weight at its hashed position and sign."""
    out = np.zeros(dimensions, dtype=np.float32)
    for (feature, weight), count in features(text).items():
        hashed = zlib.crc32(feature.encode())
        sign = 1.0 if (hashed // dimensions) & 1 else -1.0
        out[hashed % dimensions] += sign * weight * (1.0 + math.log(count))
    norm = float(np.linalg.norm(out))
    return out / norm if norm else out


def model_name(dimensions: int) -> str:
    return f"{MODEL}-{dimensions}"


class HashedProvider:
    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self.model = model_name(dimensions)

    def embed(self, texts: list[str]) -> list[np.ndarray]:
        return [vector(text, self.dimensions) for text in texts]
