"""Calling an embedding function the way CrewAI's Chroma clients do, for the 1.x and 0.x
adapters alike (so it imports nothing from CrewAI)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..exceptions import InvalidVectorError

__all__ = ["embedding_matrix", "_DefaultEmbedder"]


class _DefaultEmbedder:
    """A CrewAI default embedding function, built by ``build`` on first use: building it
    needs an OpenAI API key, which a client or storage that never embeds must not require."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._function: Any = None

    def _built(self) -> Any:
        with self._lock:
            if self._function is None:
                self._function = self._build()
            return self._function

    def __call__(self, input: list[str]) -> Any:  # noqa: A002 - the protocol's name
        return self._built()(input)

    def embed_query(self, input: list[str]) -> Any:  # noqa: A002
        return self._built().embed_query(input=input)


def embedding_matrix(function: Callable[..., Any], texts: list[str], *, query: bool = False) -> np.ndarray:
    """The texts' vectors as one float32 (len(texts), dim) matrix. Queries go to the
    function's ``embed_query`` when it has one, as Chroma does (some models embed queries
    and documents differently)."""
    embed_query = getattr(function, "embed_query", None) if query else None
    raw = embed_query(input=texts) if callable(embed_query) else function(texts)
    try:
        matrix = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidVectorError(
            f"the embedding function must return one vector of numbers per text: {exc}"
        ) from exc
    if matrix.ndim != 2 or matrix.shape[0] != len(texts):
        raise InvalidVectorError(
            f"the embedding function returned an array of shape {matrix.shape} for "
            f"{len(texts)} texts; it must return one vector per text"
        )
    return matrix
