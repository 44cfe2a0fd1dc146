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
- **Records saved without an embedding, or with an all-zero one** (CrewAI saves
  whitespace-only content without one; mock and real embedders return zeros for empty
  or odd input) are kept, counted, listed, filtered and deleted like any other, but
  never returned by a vector search: a zero vector has no direction, so it has no cosine
  with any query (the built-in backends store a zero vector that LanceDB scores
  1/(1 + |query|) against any query). ``get_record``/``list_records`` give back the
  embedding as saved: None, or the zero vector.
- **A zero query** (all components 0) has no direction either: ``search`` returns []
  (after checking its dimension), never a NaN score.
- **Times** are CrewAI's naive UTC datetimes; an aware datetime is converted to UTC and
  comes back naive (the same instant). They are stored as float seconds and round-trip
  to the microsecond: every time from 1698 to 2241 does, and beyond that a time is kept
  when it round-trips exactly (whole seconds do, and so do ``datetime.min`` and
  ``datetime.max``) and is refused at save with
  :class:`~ferromem.exceptions.InvalidInputError` otherwise. A stored time out of ``datetime``'s
  range (written through :func:`ferromem.open`) reads back as ``datetime.min`` or
  ``datetime.max``: a stored record never makes a read fail.
- **close()** releases the store's file handles and threads; any later call reopens it
  (CrewAI reads ``memory._storage`` after ``Memory.close()``). A store passed in with
  ``store=`` stays the caller's: close() leaves it open, and once the caller closes it
  every call raises its :class:`~ferromem.exceptions.StoreClosedError`.
- **Arguments** of the wrong type or value raise a class of :mod:`ferromem.exceptions`
  (``InvalidInputError``, a ValueError, or one of its TypeError subclasses).
  ``list_records(limit=None)`` lists every record (CrewAI's built-in backends raise a
  TypeError there; ferromem's own ``Store.list`` takes None as "no limit").
- **Categories** keep their order; a repeated category is stored once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import numpy as np
from crewai.memory.storage.backend import EmbeddingDimensionMismatchError
from crewai.memory.types import MemoryRecord, ScopeInfo

from .. import store as _store
from .._location import DatabaseLocation, shown
from .._typing import Durability
from ..aio import async_store
from ..exceptions import (
    DimensionMismatchError,
    InvalidIdError,
    InvalidInputError,
    InvalidMetadataError,
)
from ._embedding import NO_EMBEDDING_KEY, asearch_ranked, search_ranked
from ._filters import afilter_ids, filter_ids, split_metadata_filter
from ._names import STORE_SUFFIX, location_argument, open_at

__all__ = ["MemoryStorage", "DEFAULT_VECTOR_DIM", "default_memory_path"]

# The dimension a store gets when its first save has no embedding at all: CrewAI's
# default embedder (text-embedding-3-large), the value LanceDBStorage uses in that case.
DEFAULT_VECTOR_DIM = 3072

# Reserved metadata keys, hidden from CrewAI. The NUL prefix cannot collide with a key a
# caller would choose and keeps them out of the way of every metadata filter.
_RESERVED_PREFIX = "\x00ferromem."
_RAW_SCOPE_KEY = _RESERVED_PREFIX + "scope"  # the scope as saved, when it is not canonical
_NO_EMBEDDING_KEY = NO_EMBEDDING_KEY  # saved without a usable embedding
_ZERO_EMBEDDING_KEY = _RESERVED_PREFIX + "zero_embedding"  # ... because it was all zeros
_EPOCH = datetime(1970, 1, 1)


def default_memory_path() -> Path:
    """``$CREWAI_STORAGE_DIR/memory``, else CrewAI's platform data directory ``/memory``:
    the directory CrewAI's LanceDB backend uses (ferromem's file sits beside its table)."""
    storage_dir = os.environ.get("CREWAI_STORAGE_DIR")
    if storage_dir:
        return Path(storage_dir) / "memory"
    from crewai_core.paths import db_storage_path

    return Path(db_storage_path()) / "memory"


def canonical_scope(scope: str, name: str = "scope") -> str:
    """The path a scope or prefix means: a leading ``/`` added when missing, trailing ``/``
    dropped (``""`` and ``"/"`` are the root)."""
    if not isinstance(scope, str):
        raise InvalidInputError(f"{name} must be a str, got {type(scope).__name__}")
    stripped = scope.rstrip("/")
    if not stripped:
        return "/"
    return stripped if stripped.startswith("/") else "/" + stripped


def _prefix(scope_prefix: str | None) -> str | None:
    """A scope filter for the store, None for the whole store."""
    if scope_prefix is None:
        return None
    if not isinstance(scope_prefix, str):
        raise InvalidInputError(f"scope_prefix must be a str or None, got {type(scope_prefix).__name__}")
    path = canonical_scope(scope_prefix, "scope_prefix")
    return None if path == "/" else path


def _is_zero(vector: Any) -> bool:
    """Whether a (non-empty) embedding is all zeros. Stops at the first non-zero
    component, the first one for any real embedding; anything that is not a number
    (NaN included) counts as non-zero and is left for the store to refuse."""
    try:
        return not any(vector)
    except (TypeError, ValueError):
        return False


def _check_limit(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} must be an int, got {type(value).__name__}")


def _id_list(record_ids: Any) -> list[str]:
    if isinstance(record_ids, (str, bytes)) or not isinstance(record_ids, (list, tuple, set)):
        raise InvalidIdError(f"record_ids must be a list of str, got {type(record_ids).__name__}")
    return list(record_ids)


def _to_epoch(value: datetime, name: str, *, exact: bool = True) -> float:
    """Seconds since the epoch of a (naive UTC, or aware) datetime; InvalidInputError for
    a time the stored float cannot give back to the microsecond, so that what is saved
    always reads back equal (the check is one conversion, per record)."""
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.utcoffset() is not None:
        try:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        except (OverflowError, ValueError):
            raise InvalidInputError(
                f"{name} {value.isoformat()} is outside the range of datetime in UTC"
            ) from None
    elif value.tzinfo is not None:
        value = value.replace(tzinfo=None)  # a tzinfo without an offset: naive UTC
    # Exact to the microsecond: whole seconds and microseconds are added separately.
    delta = value - _EPOCH
    seconds = delta.days * 86400.0 + delta.seconds + delta.microseconds / 1e6
    if exact and _from_epoch(seconds) != value:
        raise InvalidInputError(
            f"{name} {value.isoformat()} cannot be stored exactly: times are kept as float "
            "seconds, exact to the microsecond from 1698 to 2241 (and in whole seconds up to "
            "9999-12-31 23:59:59)"
        )
    return seconds


_MIN_SECONDS = (datetime.min - _EPOCH).total_seconds()
_HUGE = 2**62


def _from_epoch(seconds: float) -> datetime:
    """The naive UTC datetime of stored seconds, rounded to the microsecond. Never raises:
    a value outside datetime's range (only ferromem.open can store one) gives the nearest
    end of the range, so one odd record cannot make list_records or search fail."""
    try:
        # timedelta rounds the float's exact value half-even, as fromtimestamp does, and
        # needs no platform time functions (which refuse years before 1 or after 9999).
        return _EPOCH + timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        return datetime.min if seconds < _MIN_SECONDS else datetime.max


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


def _embedding_dimension_error(exc: DimensionMismatchError) -> EmbeddingDimensionMismatchError:
    """CrewAI's error for a vector of another dimension than the store's. The store raises
    DimensionMismatchError with both lengths set (they are None only in one built by hand
    without them), so they are passed on as they are."""
    return EmbeddingDimensionMismatchError(cast(int, exc.expected), cast(int, exc.got))


def _fast_construct_works() -> bool:
    """Checked once at import: the shortcut must equal model_construct on this pydantic."""
    values: dict[str, Any] = {
        "id": "x",
        "content": "c",
        "scope": "/",
        "categories": ["a"],
        "metadata": {"k": 1},
        "importance": 0.5,
        "created_at": _EPOCH,
        "last_accessed": _EPOCH,
        "embedding": [1.0],
        "source": None,
        "private": False,
    }
    if set(values) != _FIELDS:
        return False
    try:
        fast = _construct_fast(dict(values))
        slow = MemoryRecord.model_construct(**values)
        return fast == slow and fast.model_dump() == slow.model_dump() and repr(fast) == repr(slow)
    except Exception:  # noqa: BLE001 - any failure means: use model_construct
        return False


_construct = (
    _construct_fast if _fast_construct_works() else (lambda values: MemoryRecord.model_construct(**values))
)


def _stored_metadata(record: MemoryRecord) -> dict[str, Any]:
    """The metadata as stored: the record's, plus its scope string when that is not
    canonical (so it round-trips byte for byte)."""
    if not isinstance(record.metadata, dict):
        raise InvalidMetadataError(f"metadata must be a dict, got {type(record.metadata).__name__}")
    metadata = dict(record.metadata)
    if any(isinstance(key, str) and key.startswith(_RESERVED_PREFIX) for key in metadata):
        raise InvalidMetadataError(
            f"metadata keys starting with {_RESERVED_PREFIX!r} are reserved by ferromem"
        )
    if canonical_scope(record.scope) != record.scope:
        metadata[_RAW_SCOPE_KEY] = record.scope
    return metadata


class MemoryStorage:
    """CrewAI ``StorageBackend`` on a ferromem store (one SQLite file, or a store in a
    PostgreSQL database; many processes).

    ``path``: a directory (the store is ``<path>/<table_name>.ferro``) or a file ending in
    ``.ferro``; None for CrewAI's default memory directory (``$CREWAI_STORAGE_DIR/memory``
    when set); or a ``postgresql://user@host:5432/db`` URL: the store named by its
    ``store`` option, else ``table_name``, shared by every process and host that opens it
    (nothing is created on disk; the URL's password is never shown). ``vector_dim`` fixes
    the dimension up front (else the first embedding does). ``durability``: "normal"
    (survives a process crash) or "full" (also power loss).
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
        durability: Durability = "normal",
        store: _store.Store | None = None,
        search_embeddings: bool = False,
    ) -> None:
        if store is not None:
            if path is not None:
                raise InvalidInputError("pass either path or store, not both")
            if not isinstance(store, _store.Store):
                raise InvalidInputError(f"store must be a ferromem Store, got {type(store).__name__}")
            self._store = store
            self._owns_store = False
            self._where: str | DatabaseLocation | None = None
        else:
            self._where = self._resolve_location(path, table_name)
            self._store = open_at(self._where, dim=vector_dim, durability=durability)
            self._owns_store = True
        self._vector_dim = vector_dim
        self._durability = durability
        self._search_embeddings = bool(search_embeddings)
        # Guards close() against the reopen of a concurrent call: one store at a time.
        self._close_lock = threading.Lock()

    @staticmethod
    def _resolve_location(
        path: str | os.PathLike | DatabaseLocation | None, table_name: str
    ) -> str | DatabaseLocation:
        """The store's file, or its URL in a database (``table_name`` names the store when
        the URL has no ``store`` option)."""
        if (
            not isinstance(table_name, str)
            or not table_name
            or "/" in table_name
            or (os.sep in table_name or table_name in (".", ".."))
        ):
            raise InvalidInputError(
                f"table_name must be a plain file name such as 'memories', got {table_name!r}"
            )
        where = None if path is None else location_argument(path)
        if isinstance(where, DatabaseLocation):
            return where if where.store is not None else where.with_store(table_name)
        base = default_memory_path() if where is None else Path(where)
        if base.suffix == STORE_SUFFIX:
            return str(base)
        return str(base / (table_name + STORE_SUFFIX))

    @property
    def store(self) -> _store.Store:
        """The underlying ferromem store (reopened if this storage closed it)."""
        return self._live()

    @property
    def path(self) -> str | None:
        """The store's file; None for a store in a database or in memory."""
        if self._owns_store:
            return self._where if isinstance(self._where, str) else None
        return self._store.path

    @property
    def location(self) -> str | None:
        """Where the store lives: its file, or its database URL without the password (the
        form every message and repr shows); None in memory."""
        if self._owns_store:
            return shown(self._where)
        return self._store.location

    def _live(self) -> _store.Store:
        """The open store: the one this storage opened, opened again after close(), or the
        caller's (never reopened: once they close it, calls raise StoreClosedError)."""
        store = self._store
        if store.closed and self._owns_store:
            with self._close_lock:
                if self._store.closed:
                    # The dimension is the file's now; vector_dim only matters for a file
                    # that was removed meanwhile, as when first opened.
                    where = cast("str | DatabaseLocation", self._where)
                    self._store = open_at(where, dim=self._vector_dim, durability=self._durability)
                store = self._store
        return store

    # ------------------------------------------------------------ conversions

    @staticmethod
    def _placeholder(dim: int) -> list[float]:
        """The vector of a record saved without an embedding. It is never ranked (see
        search), so any direction does."""
        return [1.0] + [0.0] * (dim - 1)

    def _write(self, records: Sequence[MemoryRecord]) -> None:
        """Validates every record, then upserts all of them in one transaction."""
        store, ids, vectors, fields = self._columns(records)
        try:
            store.upsert(ids, vectors, **fields)
        except DimensionMismatchError as exc:
            # Another process fixed the dimension since this one last looked.
            raise _embedding_dimension_error(exc) from exc

    async def _awrite(self, records: Sequence[MemoryRecord]) -> None:
        """:meth:`_write`, awaiting the store's native async upsert."""
        store, ids, vectors, fields = self._columns(records)
        try:
            await async_store(store).upsert(ids, vectors, **fields)
        except DimensionMismatchError as exc:
            raise _embedding_dimension_error(exc) from exc

    def _columns(
        self, records: Sequence[MemoryRecord]
    ) -> tuple[_store.Store, list[str], list[Any], dict[str, Any]]:
        """The live store, and the checked records as the columns of one upsert: ids,
        vectors and the other fields (keywords of Store.upsert)."""
        if isinstance(records, MemoryRecord) or not isinstance(records, (list, tuple)):
            raise InvalidInputError(f"records must be a list of MemoryRecord, got {type(records).__name__}")
        store = self._live()
        dim = None
        for record in records:
            if not isinstance(record, MemoryRecord):
                raise InvalidInputError(f"records must be MemoryRecord objects, got {type(record).__name__}")
            embedding = record.embedding
            if embedding is not None and not isinstance(embedding, (list, tuple, np.ndarray)):
                raise InvalidInputError(
                    f"embedding must be a list of floats or None, got {type(embedding).__name__}"
                )
            if embedding is not None and len(embedding):
                if dim is None:
                    dim = len(embedding)
                elif len(embedding) != dim:
                    raise EmbeddingDimensionMismatchError(dim, len(embedding))
        # The store's own dimension is checked by the engine (DimensionMismatchError below),
        # against its state caught up with other processes. A zero vector's length is
        # checked the same way: its placeholder has that length.
        placeholder = None
        vectors = []
        metadata = []
        ids, contents, scopes, categories, created, accessed = [], [], [], [], [], []
        for record in records:
            meta = _stored_metadata(record)
            embedding = record.embedding
            if embedding is not None and len(embedding) and not _is_zero(embedding):
                vectors.append(embedding)
            else:
                if embedding is not None and len(embedding):
                    vectors.append(self._placeholder(len(embedding)))
                    meta[_ZERO_EMBEDDING_KEY] = True
                else:
                    if placeholder is None:
                        placeholder = self._placeholder(
                            dim or store.dim or self._vector_dim or DEFAULT_VECTOR_DIM
                        )
                    vectors.append(placeholder)
                meta[_NO_EMBEDDING_KEY] = True
            metadata.append(meta)
            ids.append(record.id)
            contents.append(record.content)
            scopes.append(canonical_scope(record.scope))
            if isinstance(record.categories, (str, bytes)) or not isinstance(
                record.categories, (list, tuple)
            ):
                raise InvalidInputError(
                    f"categories must be a list of str, got {type(record.categories).__name__}"
                )
            categories.append(list(record.categories))
            created.append(_to_epoch(record.created_at, "created_at"))
            accessed.append(_to_epoch(record.last_accessed, "last_accessed"))
        fields = {
            "contents": contents,
            "scopes": scopes,
            "categories": categories,
            "metadata": metadata,
            "importance": [record.importance for record in records],
            "created_at": created,
            "last_accessed": accessed,
            "sources": [record.source for record in records],
            "private": [record.private for record in records],
        }
        return store, ids, vectors, fields

    @staticmethod
    def _to_record(record: Any, with_embedding: bool = True) -> MemoryRecord:
        metadata = record.metadata
        embedding: Any = None
        scope = record.scope
        if _NO_EMBEDDING_KEY in metadata or _RAW_SCOPE_KEY in metadata:
            metadata = dict(metadata)
            if metadata.pop(_NO_EMBEDDING_KEY, False):
                if metadata.pop(_ZERO_EMBEDDING_KEY, False) and with_embedding:
                    embedding = [0.0] * len(record.vector)
            elif with_embedding:
                embedding = record.vector.tolist()
            scope = metadata.pop(_RAW_SCOPE_KEY, scope)
        elif with_embedding:
            embedding = record.vector.tolist()
        # The values were validated when saved: skipping pydantic's validation keeps the
        # conversion from dominating a search.
        return _construct(
            {
                "id": record.id,
                "content": record.content,
                "scope": scope,
                "categories": list(record.categories),
                "metadata": metadata,
                "importance": record.importance,
                "created_at": _from_epoch(record.created_at),
                "last_accessed": _from_epoch(record.last_accessed),
                "embedding": embedding,
                "source": record.source,
                "private": record.private,
            }
        )

    # ------------------------------------------------------------ StorageBackend

    def save(self, records: list[MemoryRecord]) -> None:
        """Saves (upserts) the records in one transaction: all or none."""
        if isinstance(records, (list, tuple)) and not records:
            return
        self._write(records)

    def update(self, record: MemoryRecord) -> None:
        """Replaces the record with the same id (saves it if there is none). A record
        without an embedding keeps the stored vector: search results come without one."""
        if not isinstance(record, MemoryRecord) or record.embedding:
            self._write([record])
            return
        store = self._live()
        existing = store.get(record.id) if isinstance(record.id, str) else None
        if existing is None or _NO_EMBEDDING_KEY in existing.metadata:
            self._write([record])
            return
        metadata = _stored_metadata(record)
        store.update(
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
        ids = _id_list(record_ids)
        if ids:
            self._live().touch(ids)

    def get_record(self, record_id: str) -> MemoryRecord | None:
        record = self._live().get(record_id)
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
        matching every filter. A zero query matches nothing: []."""
        planned = self._search_plan(query_embedding, scope_prefix, categories, metadata_filter, limit)
        if planned is None:
            return []
        store, criteria, residual = planned
        if residual:
            criteria["ids"] = filter_ids(store, residual, **criteria)
            if not criteria["ids"]:
                return []
        # Records saved without an embedding (or with a zero one) sit at a placeholder
        # direction and must not rank: search_ranked leaves them out, exactly.
        try:
            records, scores = search_ranked(store, query_embedding, limit, min_score=min_score, **criteria)
        except DimensionMismatchError as exc:
            raise _embedding_dimension_error(exc) from exc
        return self._ranked(records, scores, limit)

    def _search_plan(
        self,
        query_embedding: Any,
        scope_prefix: str | None,
        categories: list[str] | None,
        metadata_filter: dict[str, Any] | None,
        limit: Any,
    ) -> tuple[_store.Store, dict[str, Any], dict[str, Any]] | None:
        """(the live store, the engine's criteria, the metadata pairs left to check in
        Python) of a search, checked; None when it matches nothing whatever is stored."""
        _check_limit(limit, "limit")
        if limit <= 0:
            return None
        store = self._live()
        # An empty store answers [] and a wrong dimension raises: both come from the engine.
        where, residual = split_metadata_filter(metadata_filter)
        criteria: dict[str, Any] = {
            "scope": _prefix(scope_prefix),
            "categories": categories or None,
            "where": where,
        }
        if (
            isinstance(query_embedding, (list, tuple, np.ndarray))
            and len(query_embedding)
            and _is_zero(query_embedding)
        ):
            # No direction, no cosine: nothing is similar. The dimension is still checked,
            # as for any query.
            if store.dim is not None and len(query_embedding) != store.dim:
                raise EmbeddingDimensionMismatchError(store.dim, len(query_embedding))
            return None
        return store, criteria, residual

    def _ranked(
        self, records: list[Any], scores: list[float], limit: int
    ) -> list[tuple[MemoryRecord, float]]:
        out = []
        for stored_record, score in zip(records, scores):
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
        store, criteria, residual, older = self._delete_plan(
            scope_prefix, categories, record_ids, older_than, metadata_filter
        )
        if residual:
            criteria["ids"] = filter_ids(store, residual, **criteria)
        ids = criteria.pop("ids")
        if ids is not None and not ids:
            return 0
        if ids is None and older is None and all(value is None for value in criteria.values()):
            return store.clear()
        return store.delete(ids, older_than=older, **criteria)

    def _delete_plan(
        self,
        scope_prefix: str | None,
        categories: list[str] | None,
        record_ids: list[str] | None,
        older_than: datetime | None,
        metadata_filter: dict[str, Any] | None,
    ) -> tuple[_store.Store, dict[str, Any], dict[str, Any], float | None]:
        """(the live store, the engine's criteria (scope, categories, where, ids), the
        metadata pairs left to check in Python, older_than as epoch seconds) of a delete."""
        store = self._live()
        where, residual = split_metadata_filter(metadata_filter)
        criteria = {
            "scope": _prefix(scope_prefix),
            "categories": categories or None,  # CrewAI treats [] as no category filter
            "where": where,
            "ids": None if record_ids is None else _id_list(record_ids),
        }
        older = None if older_than is None else _to_epoch(older_than, "older_than", exact=False)
        return store, criteria, residual, older

    def list_records(
        self, scope_prefix: str | None = None, limit: int | None = 200, offset: int = 0
    ) -> list[MemoryRecord]:
        """Records in a scope, newest first (created_at descending, ties by id).
        ``limit=None``: all of them."""
        if limit is not None:
            _check_limit(limit, "limit")
        _check_limit(offset, "offset")
        if (limit is not None and limit <= 0) or offset < 0:
            return []
        # No store holds 2**63 records: past that, an offset skips everything and a limit
        # keeps everything (the engine takes 64-bit counts).
        if offset >= _HUGE:
            return []
        if limit is not None and limit >= _HUGE:
            limit = None
        return [
            self._to_record(record)
            for record in self._live().list(scope=_prefix(scope_prefix), offset=offset, limit=limit)
        ]

    def get_scope_info(self, scope: str) -> ScopeInfo:
        path = canonical_scope(scope)
        info = self._live().scope_info(path)
        return ScopeInfo(
            path=path,
            record_count=info.record_count,
            categories=list(info.categories),
            oldest_record=None if info.oldest is None else _from_epoch(info.oldest),
            newest_record=None if info.newest is None else _from_epoch(info.newest),
            child_scopes=list(info.child_scopes),
        )

    def list_scopes(self, parent: str = "/") -> list[str]:
        return self._live().child_scopes(canonical_scope(parent, "parent"))

    def list_categories(self, scope_prefix: str | None = None) -> dict[str, int]:
        return self._live().category_counts(scope=_prefix(scope_prefix))

    def count(self, scope_prefix: str | None = None) -> int:
        return self._live().count(scope=_prefix(scope_prefix))

    def reset(self, scope_prefix: str | None = None) -> None:
        """Deletes every record in the scope; without one (or at the root) the whole
        store, whose dimension is then free again (as when LanceDB drops its table)."""
        scope = _prefix(scope_prefix)
        if scope is None:
            self._live().reset()
        else:
            self._live().delete(scope=scope)

    def optimize(self) -> None:
        """Nothing to do: every save is one transaction in one file (no fragments to merge,
        unlike LanceDB) and SQLite checkpoints its log as it goes. Kept for callers that
        call it on any backend."""

    def close(self) -> None:
        """Closes the store this storage opened, releasing its file handles and threads;
        the next call on this storage opens it again. A store passed in as ``store=``
        stays open (it is the caller's). Idempotent."""
        with self._close_lock:
            if self._owns_store and not self._store.closed:
                self._store.close()

    # ------------------------------------------------------------ async
    #
    # The same checks and conversions as the sync methods, on the caller's thread; the
    # store's work is awaited natively (ferromem.AsyncStore: the Rust runtime's pool, the
    # answer resolved on the caller's loop), never a Python thread per call.

    async def asave(self, records: list[MemoryRecord]) -> None:
        """:meth:`save`, awaited natively."""
        if isinstance(records, (list, tuple)) and not records:
            return
        await self._awrite(records)

    async def asearch(
        self,
        query_embedding: list[float],
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        metadata_filter: dict[str, Any] | None = None,
        limit: int = 10,
        min_score: float = 0.0,
    ) -> list[tuple[MemoryRecord, float]]:
        """:meth:`search`, awaited natively."""
        planned = self._search_plan(query_embedding, scope_prefix, categories, metadata_filter, limit)
        if planned is None:
            return []
        store, criteria, residual = planned
        face = async_store(store)
        if residual:
            criteria["ids"] = await afilter_ids(face, residual, **criteria)
            if not criteria["ids"]:
                return []
        try:
            records, scores = await asearch_ranked(
                face, query_embedding, limit, min_score=min_score, **criteria
            )
        except DimensionMismatchError as exc:
            raise _embedding_dimension_error(exc) from exc
        return self._ranked(records, scores, limit)

    async def adelete(
        self,
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        record_ids: list[str] | None = None,
        older_than: datetime | None = None,
        metadata_filter: dict[str, Any] | None = None,
    ) -> int:
        """:meth:`delete`, awaited natively."""
        store, criteria, residual, older = self._delete_plan(
            scope_prefix, categories, record_ids, older_than, metadata_filter
        )
        face = async_store(store)
        if residual:
            criteria["ids"] = await afilter_ids(face, residual, **criteria)
        ids = criteria.pop("ids")
        if ids is not None and not ids:
            return 0
        if ids is None and older is None and all(value is None for value in criteria.values()):
            return await face.clear()
        return await face.delete(ids, older_than=older, **criteria)

    def __repr__(self) -> str:
        location = self.location
        if self.path is None and location is not None:  # a database store
            return f"MemoryStorage(location={location!r})"
        return f"MemoryStorage(path={self.path!r})"
