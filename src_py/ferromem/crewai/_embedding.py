"""Calling an embedding function the way CrewAI's Chroma clients do, for the 1.x and 0.x
adapters alike (so it imports nothing from CrewAI)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..exceptions import InvalidMetadataError, InvalidVectorError

__all__ = [
    "embedding_matrix",
    "_DefaultEmbedder",
    "NO_EMBEDDING_KEY",
    "check_reserved_keys",
    "placeholder_rows",
    "is_zero_query",
    "unembedded_count",
    "search_ranked",
    "asearch_ranked",
]


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


# Metadata key of a record stored without a usable embedding (the embedding function
# returned an all-zero vector). The NUL prefix keeps it apart from any caller's key.
RESERVED_PREFIX = "\x00ferromem."
NO_EMBEDDING_KEY = RESERVED_PREFIX + "no_embedding"


def check_reserved_keys(metadata: Any, name: str) -> None:
    """InvalidMetadataError for a caller's key in ferromem's reserved namespace."""
    if isinstance(metadata, dict) and any(
        isinstance(key, str) and key.startswith(RESERVED_PREFIX) for key in metadata
    ):
        raise InvalidMetadataError(f"{name}: keys starting with {RESERVED_PREFIX!r} are reserved by ferromem")


def placeholder_rows(
    matrix: np.ndarray, metadatas: list[dict[str, Any]]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The rows to store, and their metadata. An all-zero row has no direction, so no
    cosine with anything: it is stored at a placeholder direction with NO_EMBEDDING_KEY
    in its metadata, and searches leave it out (see unembedded_count). A row with NaN or
    inf is not zero and is left for the store to refuse."""
    zero = ~np.any(matrix, axis=1)
    if not zero.any():
        return matrix, metadatas
    matrix = np.array(matrix, dtype=np.float32)
    matrix[zero] = 0.0
    matrix[zero, 0] = 1.0
    metadatas = [
        {**meta, NO_EMBEDDING_KEY: True} if is_zero else meta
        for meta, is_zero in zip(metadatas, zero.tolist())
    ]
    return matrix, metadatas


def is_zero_query(vector: np.ndarray) -> bool:
    """Whether a query vector is all zeros (NaN and inf are not: the store refuses them)."""
    return vector.size > 0 and not np.any(vector)


def unembedded_count(store: Any) -> int:
    """How many records of a store are placeholders; a search asks for that many more
    and drops them, so it stays exact. An index lookup, free when there are none."""
    return store.count(where={NO_EMBEDDING_KEY: True})


def search_ranked(store: Any, vector: Any, k: int, **criteria: Any) -> tuple[list[Any], list[float]]:
    """The store's top ``k`` records and cosines with placeholders (NO_EMBEDDING_KEY) left
    out. One search when no placeholder ranks (the usual case: no extra query at all);
    otherwise once more, asking for as many more as there are placeholders, which is
    exact. Entries may be None: deleted by another thread since the search."""
    hits = store.search(vector, k, **criteria)
    records = hits.records()
    if any(record is not None and NO_EMBEDDING_KEY in record.metadata for record in records):
        hits = store.search(vector, k + unembedded_count(store), **criteria)
        records = hits.records()
    return records, hits.scores.tolist()


async def asearch_ranked(store: Any, vector: Any, k: int, **criteria: Any) -> tuple[list[Any], list[float]]:
    """:func:`search_ranked` on a :class:`ferromem.AsyncStore` (each step awaited)."""
    hits = await store.search(vector, k, **criteria)
    records = await store.get_many(hits.ids.tolist()) if len(hits) else []
    if any(record is not None and NO_EMBEDDING_KEY in record.metadata for record in records):
        hits = await store.search(vector, k + await store.count(where={NO_EMBEDDING_KEY: True}), **criteria)
        records = await store.get_many(hits.ids.tolist()) if len(hits) else []
    return records, hits.scores.tolist()
