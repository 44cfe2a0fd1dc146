"""Offline embedders: text to vectors with no model download and no network.

:class:`HashingEmbedder` is feature hashing of word unigrams, word bigrams and character
trigrams into a fixed number of dimensions, with a signed hash to cancel collisions, then
L2 normalisation. It is deterministic across processes and platforms (blake2b, not
Python's salted ``hash``), so demos, tests and the CLI give repeatable results. It captures
lexical overlap, not meaning: use a real embedding model for semantic recall.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Sequence

import numpy as np

from .exceptions import InvalidInputError

__all__ = ["HashingEmbedder"]

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Deterministic feature-hashing embedder (words, word bigrams, character trigrams)."""

    def __init__(self, dim: int = 384, *, char_ngrams: int = 3) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 8:
            raise InvalidInputError(f"dim must be an int >= 8, got {dim!r}")
        if isinstance(char_ngrams, bool) or not isinstance(char_ngrams, int) or char_ngrams < 0:
            raise InvalidInputError(f"char_ngrams must be an int >= 0, got {char_ngrams!r}")
        self.dim = dim
        self.char_ngrams = char_ngrams

    def _features(self, text: str) -> Iterable[tuple[str, float]]:
        words = [w.lower() for w in _WORD.findall(text)]
        for w in words:
            yield "w:" + w, 1.0
        for a, b in itertools.pairwise(words):
            yield "b:" + a + " " + b, 0.7
        n = self.char_ngrams
        if n:
            for w in words:
                padded = f"<{w}>"
                for i in range(max(1, len(padded) - n + 1)):
                    yield "c:" + padded[i : i + n], 0.3

    def embed_one(self, text: str) -> np.ndarray:
        if not isinstance(text, str):
            raise InvalidInputError(f"texts must be str, got {type(text).__name__}")
        v = np.zeros(self.dim, dtype=np.float32)
        for feature, weight in self._features(text):
            h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
            v[h % self.dim] += weight if (h >> 63) else -weight
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            # Empty or symbol-only text still needs a direction: a fixed, distinct one.
            v[0] = 1.0
            return v
        return v / norm

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeds texts into a float32 (n, dim) matrix of unit rows."""
        if isinstance(texts, str):
            raise InvalidInputError("embed takes a list of texts; use embed_one for one text")
        return (
            np.stack([self.embed_one(t) for t in texts])
            if len(texts)
            else np.zeros((0, self.dim), np.float32)
        )

    def __call__(self, input: Sequence[str]) -> list[np.ndarray]:  # noqa: A002 - Chroma's name
        """The embedding-function protocol CrewAI and ChromaDB call: a list of texts in, a
        list of float32 vectors out (a list, not a matrix: callers test it for truth)."""
        return list(self.embed(input))
