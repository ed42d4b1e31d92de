"""Cutting text into chunks of whole sentences, of a configurable size, with overlap between neighbours."""

import re

_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+(?=\S)")
_SPACE = re.compile(r"\s+")


def sentences(text: str) -> list[str]:
    """Sentences in order; a paragraph break always ends one (headings, list items)."""
    out = []
    for paragraph in _PARAGRAPHS.split(text):
        for sentence in _SENTENCE_END.split(paragraph):
            sentence = _SPACE.sub(" ", sentence).strip()
            if sentence:
                out.append(sentence)
    return out


def _pieces(sentence: str, size: int) -> list[str]:
    """A sentence longer than `size`, cut between words (or inside a word longer than `size`)."""
    pieces, current = [], ""
    for word in sentence.split(" "):
        while len(word) > size:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:size])
            word = word[size:]
        if current and len(current) + 1 + len(word) > size:
            pieces.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        pieces.append(current)
    return pieces


def chunks(text: str, size: int, overlap: int) -> list[str]:
    """Chunks of at most `size` characters made of whole sentences; each chunk after the first starts with
    the trailing sentences of the one before that fit in `overlap` characters (never the whole of it)."""
    units = [piece for sentence in sentences(text) for piece in _pieces(sentence, size)]
    out: list[str] = []
    current: list[str] = []
    fresh = 0  # sentences of `current` not carried over from the chunk before
    for unit in units:
        if current and len(" ".join(current)) + 1 + len(unit) > size:
            out.append(" ".join(current))
            carried: list[str] = []
            for sentence in reversed(current[1:]):
                if len(" ".join([sentence, *carried])) > overlap:
                    break
                carried.insert(0, sentence)
            while carried and len(" ".join([*carried, unit])) + 1 > size:
                carried.pop(0)
            current, fresh = carried, 0
        current.append(unit)
        fresh += 1
    if current and fresh:
        out.append(" ".join(current))
    return out
