"""The native async API: :func:`open_async` and :class:`AsyncStore`.

::

    import ferromem

    async def main():
        async with await ferromem.open_async("memory.ferro") as store:
            await store.add("note-1", embedding, contents="...")
            hits = await store.search(query_embedding, k=5)

An :class:`AsyncStore` has the operations of :class:`ferromem.Store`, each a coroutine.
Arguments are checked and converted exactly as the Store does (the same code, on the
caller's thread: it is fast and never waits); only the engine's work is awaited. With the
native engine that work runs on the blocking pool of ferromem's Rust runtime (at most
``MAX_BLOCKING_THREADS`` = 16 threads for the whole process, however many tasks await),
and its answer resolves an asyncio future of the caller's event loop: no Python thread is
started per call, and the event loop never blocks on a search, a write or a catch-up.

Cancellation is safe: a write whose await is cancelled after it started completes
atomically (all or nothing, like every write) and its result is dropped; one cancelled
before it started may be skipped. Either way the store stays consistent and usable, and
nothing reaches the loop's exception handler.

With the NumPy reference engine (``engine="reference"``, or when the native extension
cannot load), each call runs in asyncio's default executor (``asyncio.to_thread``): the
same API, one executor thread per call in flight.

docs/api.md ("Async") has the details.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from typing import TYPE_CHECKING, Any, cast, overload

import numpy as np

from . import _validate as check
from . import store as _store
from ._engine import AsyncEngine, Engine
from ._schema import Filter, Patch, RecordBatch
from ._typing import (
    ArrayLike,
    DeleteCriteria,
    DevicePolicy,
    Durability,
    EngineChoice,
    Filters,
    IndexMode,
    ListOptions,
    Matrix,
    Precision,
    RecordFields,
    SearchOptions,
    Vector,
)
from .exceptions import InvalidInputError
from .records import Record, ScopeInfo
from .store import _UNSET, SearchResult, Store, _keywords, _only_keywords

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only type checkers read it here
    from typing_extensions import Unpack

__all__ = ["open_async", "AsyncStore"]

_Hits = tuple[np.ndarray, np.ndarray, np.ndarray]


async def open_async(
    path: str | os.PathLike | None = None,
    *,
    dim: int | None = None,
    durability: Durability = "normal",
    engine: EngineChoice = "auto",
    cache_size: int = 256,
    index: IndexMode = "auto",
    ef_search: int = 96,
    recall_target: float = 0.95,
    precision: Precision = "f32",
    fast_open: bool = False,
    read_only: bool = False,
    device: DevicePolicy | None = None,
) -> AsyncStore:
    """Opens (or creates) a store, as :func:`ferromem.open` does with the same arguments,
    without blocking the event loop, and returns its :class:`AsyncStore`.

    Opening can take a while (a large store read into memory, a PostgreSQL store's
    replica loaded): with the native engine the engine is opened on ferromem's runtime and
    awaited; with the reference engine in asyncio's default executor. Arguments are
    checked before anything is opened, with the errors of :func:`ferromem.open`.
    """
    plan = _store._plan_open(
        path,
        dim=dim,
        durability=durability,
        engine=engine,
        cache_size=cache_size,
        index=index,
        ef_search=ef_search,
        recall_target=recall_target,
        precision=precision,
        fast_open=fast_open,
        read_only=read_only,
        device=device,
    )
    if plan.engine_name == "native":
        engine_instance = await _store._core.AsyncEngine.open(*plan.engine_args())
    else:
        engine_instance = await asyncio.to_thread(plan.open_engine)
    return AsyncStore(_store._open_store(engine_instance, plan))


class _ThreadedEngine:
    """:class:`~ferromem._engine.AsyncEngine` over an engine without a native async API
    (the reference engine): each call runs in asyncio's default executor."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def upsert(self, batch: RecordBatch, mode: str) -> None:
        await asyncio.to_thread(self._engine.upsert, batch, mode)

    async def search(
        self,
        queries: np.ndarray,
        k: int,
        filter: Filter | None = None,
        min_score: float | None = None,
        device: str | None = None,
    ) -> _Hits:
        # No device path: the facade refused device="gpu" already, and "cpu" is all there is.
        return await asyncio.to_thread(self._engine.search, queries, k, filter, min_score)

    async def explain(
        self,
        queries: np.ndarray,
        k: int,
        filter: Filter | None = None,
        min_score: float | None = None,
        device: str | None = None,
    ) -> tuple[_Hits, dict[str, Any]]:
        def timed() -> tuple[_Hits, dict[str, Any]]:
            t = time.perf_counter()
            hits = self._engine.search(queries, k, filter, min_score)
            return hits, _store._reference_explanation(queries, time.perf_counter() - t)

        return await asyncio.to_thread(timed)

    async def get(self, ids: builtins.list[str]) -> builtins.list[Any]:
        return await asyncio.to_thread(self._engine.get, ids)

    async def update(self, id: str, patch: Patch) -> bool:
        return await asyncio.to_thread(self._engine.update, id, patch)

    async def touch(self, ids: builtins.list[str], t: float) -> int:
        return await asyncio.to_thread(self._engine.touch, ids, t)

    async def delete(self, ids: builtins.list[str] | None = None, filter: Filter | None = None) -> int:
        return await asyncio.to_thread(self._engine.delete, ids, filter)

    async def list(
        self, filter: Filter | None = None, offset: int = 0, limit: int | None = None
    ) -> builtins.list[Any]:
        return await asyncio.to_thread(self._engine.list, filter, offset, limit)

    async def count(self, filter: Filter | None = None) -> int:
        return await asyncio.to_thread(self._engine.count, filter)

    async def child_scopes(self, scope: str | None = None) -> builtins.list[str]:
        return await asyncio.to_thread(self._engine.child_scopes, scope)

    async def category_counts(self, filter: Filter | None = None) -> dict[str, int]:
        return await asyncio.to_thread(self._engine.category_counts, filter)

    async def scope_info(self, scope: str | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self._engine.scope_info, scope)

    async def reset(self) -> None:
        await asyncio.to_thread(self._engine.reset)

    async def close(self) -> None:
        await asyncio.to_thread(self._engine.close)

    async def stats(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._engine.stats)


def _async_engine(store: Store) -> AsyncEngine:
    """The async face of a Store's engine, made once per Store and kept on it (it refers to
    the engine only, so the Store makes no reference cycle)."""
    engine = store._async_engine
    if engine is None:
        if store.engine == "native":
            engine = _store._core.AsyncEngine(store._engine)
        else:
            engine = _ThreadedEngine(store._engine)
        store._async_engine = engine
    return cast(AsyncEngine, engine)


def async_store(store: Store) -> AsyncStore:
    """The :class:`AsyncStore` of an open Store (the CrewAI adapters hold a Store and await
    through this): a light wrapper over the Store's cached async engine."""
    return AsyncStore(store)


class AsyncStore:
    """A vector memory store with coroutine methods. Open one with :func:`open_async`, or
    wrap an open :class:`ferromem.Store` with ``AsyncStore(store)``: the two share the
    store's engine (what one writes the other reads at once), and closing either closes
    both.

    Any number of tasks, on any number of event loops in any threads, may use one
    AsyncStore at once. Search results are :class:`ferromem.SearchResult`; their
    ``records()`` reads synchronously (quick, from memory): in a coroutine, ``await
    store.get_many(hits.ids.tolist())`` never blocks the loop.
    """

    def __init__(self, store: Store) -> None:
        if not isinstance(store, Store):
            raise InvalidInputError(f"AsyncStore wraps a ferromem.Store, got {type(store).__name__}")
        store._check_open()
        self._store = store
        self._engine = _async_engine(store)

    # ----------------------------------------------------------------- properties

    @property
    def sync(self) -> Store:
        """The synchronous :class:`ferromem.Store` on the same engine: for set_index,
        wait_for_index and code that is not async."""
        return self._store

    @property
    def dim(self) -> int | None:
        """The vector dimension, or None until the first vector (or ``dim=``) fixes it."""
        return self._store.dim

    @property
    def path(self) -> str | None:
        """The store's file, or None for an in-memory store."""
        return self._store.path

    @property
    def engine(self) -> str:
        """ "native" or "reference"."""
        return self._store.engine

    @property
    def closed(self) -> bool:
        """True once closed (through this object or its Store), and in a forked child for
        a store of the parent."""
        return self._store.closed

    # ----------------------------------------------------------------- writes

    @_keywords(RecordFields)
    async def add(self, ids: Any, vectors: Any, **fields: Unpack[RecordFields]) -> builtins.list[str]:
        """:meth:`ferromem.Store.add`: adds new records (an existing id raises
        DuplicateIdError and nothing is written); returns the ids."""
        _only_keywords("AsyncStore.add", fields, RecordFields)
        return await self._write("insert", ids, vectors, fields)

    @_keywords(RecordFields)
    async def upsert(self, ids: Any, vectors: Any, **fields: Unpack[RecordFields]) -> builtins.list[str]:
        """:meth:`ferromem.Store.upsert`: like :meth:`add`, but an existing id is
        replaced (the whole record)."""
        _only_keywords("AsyncStore.upsert", fields, RecordFields)
        return await self._write("upsert", ids, vectors, fields)

    async def _write(self, mode: str, ids: Any, vectors: Any, fields: RecordFields) -> builtins.list[str]:
        id_list, batch = self._store._write_batch(ids, vectors, fields)
        if batch is not None:
            await self._engine.upsert(batch, mode)
        return id_list

    async def update(
        self,
        id: str,
        *,
        content: Any = _UNSET,
        scope: Any = _UNSET,
        categories: Any = _UNSET,
        metadata: Any = _UNSET,
        importance: Any = _UNSET,
        created_at: Any = _UNSET,
        last_accessed: Any = _UNSET,
        source: Any = _UNSET,
        private: Any = _UNSET,
        vector: Any = _UNSET,
    ) -> Record:
        """:meth:`ferromem.Store.update`: changes only the fields passed and returns the
        updated record; a missing id raises NotFoundError."""
        self._store._check_open()
        record_id, patch = _store._patch_of(
            id,
            content=content,
            scope=scope,
            categories=categories,
            metadata=metadata,
            importance=importance,
            created_at=created_at,
            last_accessed=last_accessed,
            source=source,
            private=private,
            vector=vector,
        )
        if patch is not None and not await self._engine.update(record_id, patch):
            raise _store._not_found(record_id)
        record = await self.get(record_id)
        if record is None:
            raise _store._not_found(record_id)
        return record

    async def touch(self, ids: Any, at: Any = None) -> int:
        """:meth:`ferromem.Store.touch`: sets last_accessed (now by default); returns how
        many of the ids exist."""
        id_list, when = self._store._touch_args(ids, at)
        if not id_list:
            return 0
        return int(await self._engine.touch(id_list, when))

    @_keywords(DeleteCriteria)
    async def delete(self, ids: Any = None, **criteria: Unpack[DeleteCriteria]) -> int:
        """:meth:`ferromem.Store.delete`: deletes the records matching all the criteria
        given (at least one); returns how many."""
        id_list, flt = self._store._delete_args("AsyncStore.delete", ids, criteria)
        if id_list == []:
            return 0
        return int(await self._engine.delete(id_list, flt))

    async def clear(self) -> int:
        """Deletes every record in one transaction and returns how many; the dimension
        stays fixed."""
        self._store._check_open()
        return int(await self._engine.delete(None, _store._every_record()))

    async def reset(self) -> None:
        """Deletes every record; the dimension is free again."""
        self._store._check_open()
        await self._engine.reset()

    # ----------------------------------------------------------------- reads

    @overload
    async def search(self, query: Vector, k: int = 10, **options: Unpack[SearchOptions]) -> SearchResult: ...

    @overload
    async def search(
        self, query: Matrix, k: int = 10, **options: Unpack[SearchOptions]
    ) -> builtins.list[SearchResult]: ...

    @overload
    async def search(
        self, query: ArrayLike, k: int = 10, **options: Unpack[SearchOptions]
    ) -> SearchResult | builtins.list[SearchResult]: ...

    @_keywords(SearchOptions, include_private=True)
    async def search(
        self, query: Any, k: int = 10, **options: Unpack[SearchOptions]
    ) -> SearchResult | builtins.list[SearchResult]:
        """:meth:`ferromem.Store.search`: the k most similar records (cosine similarity,
        best first, ties by id), with the same filters, ``min_score`` and ``device``."""
        store = self._store
        queries, single, k, flt, min_score = store._query_args("AsyncStore.search", query, k, options)
        device = store._device_policy(options.get("device"))
        # Once per store: the planner's constants, from the calibration cache on disk (or
        # measured, about a quarter of a second, the first time on this machine).
        store._plan_search(queries)
        return store._results(await self._engine.search(queries, k, flt, min_score, device), single)

    @_keywords(SearchOptions, include_private=True)
    async def explain(self, query: Any, k: int = 10, **options: Unpack[SearchOptions]) -> dict[str, Any]:
        """:meth:`ferromem.Store.explain`: runs the search and says how it was served."""
        store = self._store
        queries, single, k, flt, min_score = store._query_args("AsyncStore.explain", query, k, options)
        device = store._device_policy(options.get("device"))
        if not store._planner_ready:
            store._prepare_planner(queries.shape[1])
        hits, how = await self._engine.explain(queries, k, flt, min_score, device)
        return store._explained(hits, dict(how), single)

    async def get(self, id: str) -> Record | None:
        """The record with this id, or None."""
        self._store._check_open()
        row = (await self._engine.get([check.check_id(id)]))[0]
        return None if row is None else Record._from_row(row)

    async def get_many(self, ids: Any) -> builtins.list[Record | None]:
        """The records with these ids, in the same order (None where missing)."""
        self._store._check_open()
        rows = await self._engine.get(check.check_id_list(ids))
        return [None if row is None else Record._from_row(row) for row in rows]

    @_keywords(ListOptions, include_private=True, offset=0)
    async def list(self, **options: Unpack[ListOptions]) -> builtins.list[Record]:
        """:meth:`ferromem.Store.list`: the matching records, newest first."""
        flt, offset, limit = self._store._list_args("AsyncStore.list", options)
        if limit == 0:
            return []
        return [Record._from_row(row) for row in await self._engine.list(flt, offset, limit)]

    @_keywords(Filters, include_private=True)
    async def count(self, **filters: Unpack[Filters]) -> int:
        """How many records match the filter."""
        return int(await self._engine.count(self._store._filter_args("AsyncStore.count", filters)))

    async def child_scopes(self, scope: Any = "/") -> builtins.list[str]:
        """The direct child scopes of ``scope`` that hold records (at or below them)."""
        self._store._check_open()
        return builtins.list(await self._engine.child_scopes(check.scope_argument(scope)))

    @_keywords(Filters, include_private=True)
    async def category_counts(self, **filters: Unpack[Filters]) -> dict[str, int]:
        """How many records matching the filter have each category."""
        flt = self._store._filter_args("AsyncStore.category_counts", filters)
        return dict(await self._engine.category_counts(flt))

    async def scope_info(self, scope: Any = "/") -> ScopeInfo:
        """A summary of the records at or below ``scope``."""
        self._store._check_open()
        return _store._scope_info(await self._engine.scope_info(check.scope_argument(scope)))

    async def stats(self) -> dict[str, Any]:
        """:meth:`ferromem.Store.stats`."""
        self._store._check_open()
        raw = dict(await self._engine.stats())
        return self._store._stats_view(raw, int(await self._engine.count(Filter())))

    # ----------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Closes the store (and its Store); closing twice is harmless. A write in flight
        finishes first; calls made after it raise StoreClosedError."""
        if self._store._mark_closed():
            await self._engine.close()

    async def __aenter__(self) -> AsyncStore:
        self._store._check_open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return repr(self._store).replace("<ferromem.Store", "<ferromem.AsyncStore", 1)
