"""Helpers for the data tests: synthetic documents with multi-byte characters."""

from __future__ import annotations

import random

WORDS = ("thou", "art", "königin", "東京", "😀", "fair", "night", "\n", "  ", "day,")


def make_docs(n: int, seed: int = 0, words_per_doc: tuple[int, int] = (20, 200)) -> list[str]:
    """``n`` newline-terminated documents of random ``WORDS`` (accents, CJK, emoji, blanks)."""
    rng = random.Random(seed)
    low, high = words_per_doc
    return [" ".join(rng.choices(WORDS, k=rng.randint(low, high))) + "\n" for _ in range(n)]
