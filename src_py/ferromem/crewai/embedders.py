"""ferromem's offline embedder as a CrewAI embedding function.

CrewAI configures embedders with provider specs (``Crew(embedder=...)``,
``Knowledge(embedder=...)``, ``Agent(embedder=...)``); its ``"custom"`` provider
instantiates the class given as ``embedding_callable`` with the rest of the config::

    Crew(..., memory=True, embedder={
        "provider": "custom",
        "config": {"embedding_callable": HashingEmbeddingFunction},          # 1536-dim
    })
    # other sizes: {"embedding_callable": HashingEmbeddingFunction.of_dim(384)}

(CrewAI validates the spec's config as a typed dict and drops keys it does not know, so
the dimension travels in the class, not in the config), so a crew, its memory and its knowledge run with no model download and no network.
Where CrewAI takes a plain callable (``Memory(embedder=...)``), a
:class:`ferromem.embedders.HashingEmbedder` works as it is.
"""

from __future__ import annotations

import functools
from typing import Any

from chromadb.api.types import EmbeddingFunction as ChromaEmbeddingFunction
from crewai.rag.embeddings.providers.custom.embedding_callable import CustomEmbeddingFunction

from ..embedders import HashingEmbedder

__all__ = ["HashingEmbeddingFunction"]


# CrewAI validates a "custom" embedding_callable twice: its spec type wants ChromaDB's
# EmbeddingFunction (chromadb is one of CrewAI's dependencies), its provider CrewAI's own.
class HashingEmbeddingFunction(CustomEmbeddingFunction, ChromaEmbeddingFunction):
    """CrewAI's embedding-function protocol over :class:`ferromem.embedders.HashingEmbedder`
    (``dim`` and ``char_ngrams`` as there; ``dim`` defaults to the class's DIM)."""

    DIM = 1536

    def __init__(self, dim: int | None = None, char_ngrams: int = 3, **_ignored: Any) -> None:
        self._embedder = HashingEmbedder(self.DIM if dim is None else dim, char_ngrams=char_ngrams)

    @classmethod
    @functools.cache
    def of_dim(cls, dim: int) -> type[HashingEmbeddingFunction]:
        """The subclass whose instances embed into ``dim`` dimensions (one per dim)."""
        HashingEmbedder(dim)  # validates dim now rather than at first use
        return type(f"{cls.__name__}{dim}", (cls,), {"DIM": dim, "__module__": cls.__module__})

    def __call__(self, input: list[str]) -> list[Any]:  # noqa: A002 - the protocol's name
        return self._embedder(input)

    @staticmethod
    def name() -> str:
        return "ferromem-hashing"

    def get_config(self) -> dict[str, Any]:
        return {"dim": self._embedder.dim, "char_ngrams": self._embedder.char_ngrams}
