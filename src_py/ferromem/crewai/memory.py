"""CrewAI 1.x memory storage backed by ferromem: :class:`MemoryStorage`.

It implements CrewAI's ``StorageBackend`` protocol (``crewai.memory.storage.backend``)
and takes and returns CrewAI's own ``MemoryRecord`` and ``ScopeInfo``. It is a plain
Python class over one :class:`ferromem.Store` file, so CrewAI code and users' tests can
patch methods on an instance, as they do with the built-in backends.

Semantics, and where they differ from CrewAI's LanceDB backend (each difference is a bug
there that the tests show):

- **Scores** are cosine similarity (as with CrewAI's Qdrant Edge backend), so Memory's
  cosine settings (consolidation at 0.85, batch de-duplication at 0.98) mean what they
  say. LanceDB reports 1/(1 + L2 distance) instead. ``min_score`` compares against the
  cosine, so the default 0.0 leaves out records pointing away from the query.
- **Filters are applied before ranking**: a search returns min(limit, matches) records.
  LanceDB fetches ``3 * limit`` neighbours and then filters categories and metadata, so a
  selective filter loses results.
- **Scope prefixes match at path boundaries**: ``/a`` matches ``/a`` and ``/a/x``, never
  ``/ab``; LanceDB's ``LIKE '/a%'`` leaks sibling scopes into searches and deletes, and its
  scoped delete also deletes every record in the root scope ``/``. A prefix or scope
  without a leading ``/`` means the same path with one (``crew/x`` is ``/crew/x``), like
  Qdrant Edge's scope ancestors; the record still returns the scope string it was saved
  with, byte for byte.
- **delete() ANDs every criterion given** (LanceDB ignores the scope and ``older_than``
  when ``record_ids`` are given without categories or metadata), and a delete with no
  criterion deletes everything, as in LanceDB.
- **Metadata filters use Python equality** exactly like the built-in backends
  (``record.metadata.get(key) == value``; see :mod:`ferromem.crewai._filters`).
- **Records saved without an embedding** (CrewAI saves whitespace-only content that way)
  are kept and listed, but never returned by a vector search: the built-in backends store
  a zero vector that LanceDB scores 0.5 against any query.
- **Times** are CrewAI's naive UTC datetimes; an aware datetime is converted to UTC and
  comes back naive. They round-trip to the microsecond.
- **Categories** keep their order; a repeated category is stored once.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from crewai.memory.storage.backend import EmbeddingDimensionMismatchError
from crewai.memory.types import MemoryRecord, ScopeInfo

from .. import store as _store
from ..exceptions import DimensionMismatchError, InvalidInputError, InvalidMetadataError
from ._filters import filter_ids, split_metadata_filter
from ._names import STORE_SUFFIX

__all__ = ["MemoryStorage", "DEFAULT_VECTOR_DIM", "default_memory_path"]

# The dimension a store gets when its first save has no embedding at all: CrewAI's
# default embedder (text-embedding-3-large), the value LanceDBStorage uses in that case.
DEFAULT_VECTOR_DIM = 3072

# Reserved metadata keys, hidden from CrewAI. The NUL prefix cannot collide with a key a
# caller would choose and keeps them out of the way of every metadata filter.
_RESERVED_PREFIX = "\x00ferromem."
_RAW_SCOPE_KEY = _RESERVED_PREFIX + "scope"  # the scope as saved, when it is not canonical
_NO_EMBEDDING_KEY = _RESERVED_PREFIX + "no_embedding"  # saved without an embedding
_EPOCH = datetime(1970, 1, 1)


def default_memory_path() -> Path:
    """``$CREWAI_STORAGE_DIR/memory``, else CrewAI's platform data directory ``/memory``:
    the directory CrewAI's LanceDB backend uses (ferromem's file sits beside its table)."""
    storage_dir = os.environ.get("CREWAI_STORAGE_DIR")
    if storage_dir:
        return Path(storage_dir) / "memory"
    from crewai_core.paths import db_storage_path

    return Path(db_storage_path()) / "memory"


def canonical_scope(scope: str) -> str:
    """The path a scope or prefix means: a leading ``/`` added when missing, trailing ``/``
    dropped (``""`` and ``"/"`` are the root)."""
    stripped = scope.rstrip("/")
    if not stripped:
        return "/"
    return stripped if stripped.startswith("/") else "/" + stripped


def _prefix(scope_prefix: str | None) -> str | None:
    """A scope filter for the store, None for the whole store."""
    if scope_prefix is None:
        return None
    if not isinstance(scope_prefix, str):
        raise InvalidInputError(
            f"scope_prefix must be a str or None, got {type(scope_prefix).__name__}"
        )
    path = canonical_scope(scope_prefix)
    return None if path == "/" else path


def _to_epoch(value: datetime, name: str) -> float:
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    # Exact to the microsecond: whole seconds and microseconds are added separately.
    delta = value - _EPOCH
    return delta.days * 86400.0 + delta.seconds + delta.microseconds / 1e6


def _from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None)


_FIELDS = frozenset(MemoryRecord.model_fields)


def _construct_fast(values: dict[str, Any]) -> MemoryRecord:
    """A MemoryRecord from already-validated values, the way pydantic's model_construct
    builds one (instance dict plus its three pydantic slots), at a fifth of the cost,
    which matters per search result."""
    record = object.__new__(MemoryRecord)
    object.__setattr__(record, "__dict__", values)
    object.__setattr__(record, "__pydantic_fields_set__", set(_FIELDS))
    object.__setattr__(record, "__pydantic_extra__", None)
    object.__setattr__(record, "__pydantic_private__", None)
    return record


def _fast_construct_works() -> bool:
    """Checked once at import: the shortcut must equal model_construct on this pydantic."""
    values = {
        "id": "x", "content": "c", "scope": "/", "categories": ["a"], "metadata": {"k": 1},
        "importance": 0.5, "created_at": _EPOCH, "last_accessed": _EPOCH, "embedding": [1.0],
        "source": None, "private": False,
    }
    if set(values) != _FIELDS:
        return False
    try:
        fast = _construct_fast(dict(values))
        slow = MemoryRecord.model_construct(**values)
        return fast == slow and fast.model_dump() == slow.model_dump() and repr(fast) == repr(slow)
    except Exception:  # noqa: BLE001 - any failure means: use model_construct
        return False


_construct = _construct_fast if _fast_construct_works() else (
    lambda values: MemoryRecord.model_construct(**values)
)


def _stored_metadata(record: MemoryRecord) -> dict[str, Any]:
    """The metadata as stored: the record's, plus its scope string when that is not
    canonical (so it round-trips byte for byte)."""
    metadata = dict(record.metadata)
    if any(isinstance(key, str) and key.startswith(_RESERVED_PREFIX) for key in metadata):
        raise InvalidMetadataError(
            f"metadata keys starting with {_RESERVED_PREFIX!r} are reserved by ferromem"
        )
    if canonical_scope(record.scope) != record.scope:
        metadata[_RAW_SCOPE_KEY] = record.scope
    return metadata


class MemoryStorage:
    """CrewAI ``StorageBackend`` on a ferromem store (one SQLite file, many processes).

    ``path``: a directory (the store is ``<path>/<table_name>.ferro``) or a file ending in
    ``.ferro``; None for CrewAI's default memory directory (``$CREWAI_STORAGE_DIR/memory``
    when set). ``vector_dim`` fixes the dimension up front (else the first embedding does).
    ``durability``: "normal" (survives a process crash) or "full" (also power loss).
    ``store``: an open :class:`ferromem.Store` to use instead of a path (in memory, or one
    store shared by several Memory objects); the caller keeps it, and close() leaves it open.
    ``search_embeddings``: also return each search result's embedding. Off by default, as
    in CrewAI's Qdrant Edge backend: no CrewAI caller reads it, and turning 10 vectors of
    1536 floats into Python lists costs several times the search itself. get_record and
    list_records always return embeddings.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        table_name: str = "memories",
        vector_dim: int | None = None,
        *,
        durability: str = "normal",
        store: _store.Store | None = None,
        search_embeddings: bool = False,
    ) -> None:
        if store is not None:
            if path is not None:
                raise InvalidInputError("pass either path or store, not both")
            self._store = store
            self._owns_store = False
        else:
            self._store = _store.open(
                self._resolve_path(path, table_name), dim=vector_dim, durability=durability
            )
            self._owns_store = True
        self._vector_dim = vector_dim
        self._search_embeddings = bool(search_embeddings)
        self._close_lock = threading.Lock()

    @staticmethod
    def _resolve_path(path: str | os.PathLike | None, table_name: str) -> str:
        if not isinstance(table_name, str) or not table_name or "/" in table_name or (
            os.sep in table_name or table_name in (".", "..")
        ):
            raise InvalidInputError(
                f"table_name must be a plain file name such as 'memories', got {table_name!r}"
            )
        base = default_memory_path() if path is None else Path(os.fspath(path))
        if base.suffix == STORE_SUFFIX:
            return str(base)
        return str(base / (table_name + STORE_SUFFIX))

    @property
    def store(self) -> _store.Store:
        """The underlying ferromem store."""
        return self._store

    @property
    def path(self) -> str | None:
        return self._store.path

    # ------------------------------------------------------------ conversions

    @staticmethod
    def _placeholder(dim: int) -> list[float]:
        """The vector of a record saved without an embedding. It is never ranked (see
        search), so any direction does."""
        return [1.0] + [0.0] * (dim - 1)

    def _write(self, records: Sequence[MemoryRecord]) -> None:
        """Validates every record, then upserts all of them in one transaction."""
        if isinstance(records, MemoryRecord) or not isinstance(records, (list, tuple)):
            raise InvalidInputError(
                f"records must be a list of MemoryRecord, got {type(records).__name__}"
            )
        dim = None
        for record in records:
            if not isinstance(record, MemoryRecord):
                raise InvalidInputError(
                    f"records must be MemoryRecord objects, got {type(record).__name__}"
                )
            if record.embedding:
                if dim is None:
                    dim = len(record.embedding)
                elif len(record.embedding) != dim:
                    raise EmbeddingDimensionMismatchError(dim, len(record.embedding))
        # The store's own dimension is checked by the engine (DimensionMismatchError below),
        # against its state caught up with other processes.
        placeholder = None
        vectors = []
        metadata = []
        for record in records:
            meta = _stored_metadata(record)
            if record.embedding:
                vectors.append(record.embedding)
            else:
                if placeholder is None:
                    placeholder = self._placeholder(
                        dim or self._store.dim or self._vector_dim or DEFAULT_VECTOR_DIM
                    )
                vectors.append(placeholder)
                meta[_NO_EMBEDDING_KEY] = True
            metadata.append(meta)
        try:
            self._store.upsert(
                [record.id for record in records],
                vectors,
                contents=[record.content for record in records],
                scopes=[canonical_scope(record.scope) for record in records],
                categories=[list(record.categories) for record in records],
                metadata=metadata,
                importance=[record.importance for record in records],
                created_at=[_to_epoch(record.created_at, "created_at") for record in records],
                last_accessed=[
                    _to_epoch(record.last_accessed, "last_accessed") for record in records
                ],
                sources=[record.source for record in records],
                private=[record.private for record in records],
            )
        except DimensionMismatchError as exc:
            # Another process fixed the dimension since this one last looked.
            raise EmbeddingDimensionMismatchError(exc.expected, exc.got) from exc

    @staticmethod
    def _to_record(record: Any, with_embedding: bool = True) -> MemoryRecord:
        metadata = record.metadata
        embedded = True
        scope = record.scope
        if _NO_EMBEDDING_KEY in metadata or _RAW_SCOPE_KEY in metadata:
            metadata = dict(metadata)
            embedded = not metadata.pop(_NO_EMBEDDING_KEY, False)
            scope = metadata.pop(_RAW_SCOPE_KEY, scope)
        # The values were validated when saved: skipping pydantic's validation keeps the
        # conversion from dominating a search.
        return _construct({
            "id": record.id,
            "content": record.content,
            "scope": scope,
            "categories": list(record.categories),
            "metadata": metadata,
            "importance": record.importance,
            "created_at": _from_epoch(record.created_at),
            "last_accessed": _from_epoch(record.last_accessed),
            "embedding": record.vector.tolist() if embedded and with_embedding else None,
            "source": record.source,
            "private": record.private,
        })

    # ------------------------------------------------------------ StorageBackend

    def save(self, records: list[MemoryRecord]) -> None:
        """Saves (upserts) the records in one transaction: all or none."""
        if isinstance(records, (list, tuple)) and not records:
            return
        self._write(records)

    def update(self, record: MemoryRecord) -> None:
        """Replaces the record with the same id (saves it if there is none). A record
        without an embedding keeps the stored vector: search results come without one."""
        if record.embedding or not isinstance(record, MemoryRecord):
            self._write([record])
            return
        existing = self._store.get(record.id) if isinstance(record.id, str) else None
        if existing is None or _NO_EMBEDDING_KEY in existing.metadata:
            self._write([record])
            return
        metadata = _stored_metadata(record)
        self._store.update(
            record.id,
            content=record.content,
            scope=canonical_scope(record.scope),
            categories=list(record.categories),
            metadata=metadata,
            importance=record.importance,
            created_at=_to_epoch(record.created_at, "created_at"),
            last_accessed=_to_epoch(record.last_accessed, "last_accessed"),
            source=record.source,
            private=record.private,
        )

    def touch_records(self, record_ids: list[str]) -> None:
        """Sets last_accessed to now for the given ids (missing ids are skipped)."""
        if record_ids:
            self._store.touch(list(record_ids))

    def get_record(self, record_id: str) -> MemoryRecord | None:
        record = self._store.get(record_id)
        return None if record is None else self._to_record(record)

    def search(
        self,
        query_embedding: list[float],
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        metadata_filter: dict[str, Any] | None = None,
        limit: int = 10,
        min_score: float = 0.0,
    ) -> list[tuple[MemoryRecord, float]]:
        """The ``limit`` records most similar to the query (cosine, best first) among those
        matching every filter."""
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InvalidInputError(f"limit must be an int, got {type(limit).__name__}")
        if limit <= 0:
            return []
        # An empty store answers [] and a wrong dimension raises: both come from the engine.
        where, residual = split_metadata_filter(metadata_filter)
        criteria: dict[str, Any] = {
            "scope": _prefix(scope_prefix),
            "categories": categories or None,
            "where": where,
        }
        if residual:
            criteria["ids"] = filter_ids(self._store, residual, **criteria)
            if not criteria["ids"]:
                return []
        # Records saved without an embedding sit at a placeholder direction and must not
        # rank: ask for as many more as there are, then drop them. Exact, and free when
        # there are none (an index lookup).
        unembedded = self._store.count(where={_NO_EMBEDDING_KEY: True})
        try:
            result = self._store.search(
                query_embedding, limit + unembedded, min_score=min_score, **criteria
            )
        except DimensionMismatchError as exc:
            raise EmbeddingDimensionMismatchError(exc.expected, exc.got) from exc
        out = []
        for stored_record, score in zip(result.records(), result.scores.tolist()):
            # None: deleted by another thread since the search.
            if stored_record is None or _NO_EMBEDDING_KEY in stored_record.metadata:
                continue
            out.append((self._to_record(stored_record, self._search_embeddings), score))
            if len(out) == limit:
                break
        return out

    def delete(
        self,
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        record_ids: list[str] | None = None,
        older_than: datetime | None = None,
        metadata_filter: dict[str, Any] | None = None,
    ) -> int:
        """Deletes the records matching every criterion given (all records when none is)
        and returns how many."""
        where, residual = split_metadata_filter(metadata_filter)
        scope = _prefix(scope_prefix)
        categories = categories or None  # CrewAI treats [] as no category filter
        ids = None if record_ids is None else list(record_ids)
        if residual:
            matched = filter_ids(
                self._store, residual, scope=scope, categories=categories, where=where, ids=ids
            )
            ids = matched
        if ids is not None and not ids:
            return 0
        older = None if older_than is None else _to_epoch(older_than, "older_than")
        if ids is None and scope is None and categories is None and where is None and older is None:
            return self._store.clear()
        return self._store.delete(
            ids, scope=scope, categories=categories, where=where, older_than=older
        )

    def list_records(
        self, scope_prefix: str | None = None, limit: int = 200, offset: int = 0
    ) -> list[MemoryRecord]:
        """Records in a scope, newest first (created_at descending, ties by id)."""
        if limit <= 0 or offset < 0:
            return []
        return [
            self._to_record(record)
            for record in self._store.list(scope=_prefix(scope_prefix), offset=offset, limit=limit)
        ]

    def get_scope_info(self, scope: str) -> ScopeInfo:
        path = canonical_scope(scope)
        info = self._store.scope_info(path)
        return ScopeInfo(
            path=path,
            record_count=info.record_count,
            categories=list(info.categories),
            oldest_record=None if info.oldest is None else _from_epoch(info.oldest),
            newest_record=None if info.newest is None else _from_epoch(info.newest),
            child_scopes=list(info.child_scopes),
        )

    def list_scopes(self, parent: str = "/") -> list[str]:
        return self._store.child_scopes(canonical_scope(parent))

    def list_categories(self, scope_prefix: str | None = None) -> dict[str, int]:
        return self._store.category_counts(scope=_prefix(scope_prefix))

    def count(self, scope_prefix: str | None = None) -> int:
        return self._store.count(scope=_prefix(scope_prefix))

    def reset(self, scope_prefix: str | None = None) -> None:
        """Deletes every record in the scope; without one (or at the root) the whole
        store, whose dimension is then free again (as when LanceDB drops its table)."""
        scope = _prefix(scope_prefix)
        if scope is None:
            self._store.reset()
        else:
            self._store.delete(scope=scope)

    def optimize(self) -> None:
        """Nothing to do: every save is one transaction in one file (no fragments to merge,
        unlike LanceDB) and SQLite checkpoints its log as it goes. Kept for callers that
        call it on any backend."""

    def close(self) -> None:
        """Closes the store this storage opened (later calls raise
        ferromem.StoreClosedError); a store passed in as ``store=`` stays open."""
        with self._close_lock:
            if self._owns_store and not self._store.closed:
                self._store.close()

    # ------------------------------------------------------------ async

    async def asave(self, records: list[MemoryRecord]) -> None:
        await asyncio.to_thread(self.save, records)

    async def asearch(
        self,
        query_embedding: list[float],
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        metadata_filter: dict[str, Any] | None = None,
        limit: int = 10,
        min_score: float = 0.0,
    ) -> list[tuple[MemoryRecord, float]]:
        return await asyncio.to_thread(
            self.search, query_embedding, scope_prefix, categories, metadata_filter, limit, min_score
        )

    async def adelete(
        self,
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        record_ids: list[str] | None = None,
        older_than: datetime | None = None,
        metadata_filter: dict[str, Any] | None = None,
    ) -> int:
        return await asyncio.to_thread(
            self.delete, scope_prefix, categories, record_ids, older_than, metadata_filter
        )

    def __repr__(self) -> str:
        return f"MemoryStorage(path={self.path!r})"
