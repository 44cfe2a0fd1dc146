"""The value objects the store hands back: :class:`Record` and :class:`ScopeInfo`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from . import _core
    from ._schema import RecordRow

__all__ = ["Record", "ScopeInfo"]


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Record:
    """One stored memory. Immutable: change a record with ``Store.update``.

    ``vector`` is a read-only float32 array. Two records are equal when every field,
    the vector included, is equal.
    """

    id: str
    content: str
    scope: str
    categories: tuple[str, ...]
    metadata: dict[str, Any]
    importance: float
    created_at: float
    last_accessed: float
    source: str | None
    private: bool
    vector: np.ndarray

    @classmethod
    def _from_row(cls, row: RecordRow | _core.RecordRow) -> Record:
        """Builds a Record from a record an engine returned (``ferromem._schema.RecordRow``
        or the native engine's class with the same fields)."""
        vector = np.asarray(row.vector, dtype=np.float32)
        if vector.flags.writeable:
            # A read-only view, so that the flag never affects an engine's own array (the
            # native engine hands over a fresh array that is read-only already).
            vector = vector.view()
            vector.flags.writeable = False
        metadata_json = row.metadata_json
        return cls(
            id=row.id,
            content=row.content,
            scope=row.scope,
            categories=tuple(row.categories),
            metadata={} if metadata_json == "{}" else json.loads(metadata_json),
            importance=float(row.importance),
            created_at=float(row.created_at),
            last_accessed=float(row.last_accessed),
            source=row.source,
            private=bool(row.private),
            vector=vector,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (
            self.id == other.id
            and self.content == other.content
            and self.scope == other.scope
            and self.categories == other.categories
            and self.metadata == other.metadata
            and self.importance == other.importance
            and self.created_at == other.created_at
            and self.last_accessed == other.last_accessed
            and self.source == other.source
            and self.private == other.private
            and np.array_equal(self.vector, other.vector)
        )

    # metadata is a dict, so a Record cannot be hashed consistently with __eq__.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        content = self.content if len(self.content) <= 60 else self.content[:57] + "..."
        return (
            f"Record(id={self.id!r}, content={content!r}, scope={self.scope!r}, "
            f"categories={self.categories!r}, metadata={self.metadata!r}, "
            f"importance={self.importance!r}, created_at={self.created_at!r}, "
            f"last_accessed={self.last_accessed!r}, source={self.source!r}, "
            f"private={self.private!r}, vector=<float32[{self.vector.shape[0]}]>)"
        )


@dataclass(frozen=True, slots=True)
class ScopeInfo:
    """A summary of the records at or below one scope."""

    path: str
    record_count: int
    categories: tuple[str, ...]
    oldest: float | None
    newest: float | None
    child_scopes: tuple[str, ...]
