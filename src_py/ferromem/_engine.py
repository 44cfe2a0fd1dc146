"""The engine interface: what ``Store`` calls, and what every engine provides.

Two engines satisfy it: the native ``ferromem._core.Engine`` (Rust) and the NumPy
``ferromem._reference.ReferenceEngine`` (the test oracle and the fallback when ``_core``
cannot load). ``tests/engine/test_schema.py`` checks both against this protocol, method
by method and parameter by parameter; docs/architecture.md ("The engine interface")
describes it in words.

Arguments arrive checked and coerced by the facade (``ferromem._validate``,
``ferromem._buffers``): vectors are float32 C-contiguous matrices, filters
:class:`~ferromem._schema.Filter`, batches :class:`~ferromem._schema.RecordBatch`. An
engine still guards its own state (dimensions, duplicate ids, JSON) and raises the
classes of ``ferromem.exceptions``.

The capabilities only the native engine has (a result cache, an HNSW index) are the
separate protocol :class:`IndexedEngine`; the facade asks for them with ``isinstance``.

:class:`AsyncEngine` is what ``ferromem.AsyncStore`` awaits: the same operations, each
returning an awaitable. The native ``ferromem._core.AsyncEngine`` serves them on the Rust
runtime and resolves futures of the caller's loop; ``ferromem.aio._ThreadedEngine`` runs
any engine's in asyncio's default executor (the reference engine's async path).
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ._schema import Filter, Patch, RecordBatch, RecordRow

if TYPE_CHECKING:
    from . import _core

    # A record as an engine returns it: the schema's class, or the native class with the
    # same fields.
    Row = RecordRow | _core.RecordRow
else:
    Row = RecordRow

__all__ = ["Engine", "IndexedEngine", "AsyncEngine", "Row"]


@runtime_checkable
class Engine(Protocol):
    """One open store. Thread-safe."""

    @property
    def dim(self) -> int | None:
        """Fixed at the first vector; None while the store holds no vector."""

    @property
    def path(self) -> str | None:
        """The store's file; None in memory."""

    def upsert(self, batch: RecordBatch, mode: str) -> None:
        """Saves the batch in one transaction, all or nothing. ``mode``: "insert" (an
        existing id raises DuplicateIdError and writes nothing) or "upsert" (the whole
        record is replaced)."""

    def search(
        self, queries: np.ndarray, k: int, filter: Filter | None = None, min_score: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, scores, offsets): query i owns ids[offsets[i]:offsets[i + 1]], best
        first, ties by id; min(k, matches) results each (fewer only through min_score)."""

    def get(self, ids: list[str]) -> list[Row | None]:
        """The records with these ids, in order; None where missing."""

    def update(self, id: str, patch: Patch) -> bool:
        """Changes the fields the patch gives; False when the id does not exist."""

    def touch(self, ids: list[str], t: float) -> int:
        """Sets last_accessed; returns how many of the ids existed."""

    def delete(self, ids: list[str] | None = None, filter: Filter | None = None) -> int:
        """Deletes the records that match every criterion given (ids AND filter)."""

    def list(
        self, filter: Filter | None = None, offset: int = 0, limit: int | None = None
    ) -> builtins.list[Row]:
        """The matching records, newest first (created_at descending, ties by id)."""

    def count(self, filter: Filter | None = None) -> int:
        """How many records match."""

    def child_scopes(self, scope: str | None = None) -> builtins.list[str]:
        """The sorted direct child scopes of ``scope`` that hold records."""

    def category_counts(self, filter: Filter | None = None) -> dict[str, int]:
        """How many matching records have each category."""

    def scope_info(self, scope: str | None = None) -> dict[str, Any]:
        """{"path", "record_count", "categories", "oldest", "newest", "child_scopes"}."""

    def reset(self) -> None:
        """Deletes every record; the dimension is free again."""

    def close(self) -> None:
        """Further calls raise StoreClosedError."""

    def stats(self) -> dict[str, Any]:
        """Per-operation latencies (and, natively, memory, disk, cache, index...)."""


@runtime_checkable
class IndexedEngine(Engine, Protocol):
    """An engine with a result cache and an HNSW index (the native one)."""

    def set_index(
        self,
        mode: str,
        ef_search: int,
        m: int = 16,
        ef_construction: int = 128,
        recall_target: float | None = None,
        graph_min_values: int | None = None,
    ) -> None:
        """Index mode ("auto" | "exact" | "hnsw"), graph search width and shape, the recall
        guard's target (None: 0.95), and the store size (values) from which "auto" builds
        a graph (None: 2^25)."""

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Blocks until the graph covers every record; False on timeout."""

    def set_cache_capacity(self, entries: int) -> None:
        """Bounds the result cache to ``entries`` single-query searches; 0 turns it off."""

    def search(
        self,
        queries: Any,
        k: int,
        filter: Filter | None = None,
        min_score: float | None = None,
        device: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``Engine.search`` under a device policy ("auto" | "cpu" | "gpu"; None: the
        engine's)."""

    def explain(
        self,
        queries: Any,
        k: int,
        filter: Filter | None = None,
        min_score: float | None = None,
        device: str | None = None,
    ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]:
        """``search``, plus how it was served (path, reason, predicted and observed times)."""

    def set_policy(self, policy: str) -> None:
        """The device policy of searches that name none."""

    def attach_device(self, device: Any | None, costs: dict[str, float] | None = None) -> None:
        """Attaches a ``ferromem.gpu.DeviceSearch`` (None detaches) with its costs."""

    def set_cpu_costs(self, costs: dict[str, float]) -> None:
        """The planner's CPU constants (from ``_core.calibrate_cpu``)."""

    def cpu_calibrated(self) -> bool:
        """Whether the planner's CPU constants were set."""


class AsyncEngine(Protocol):
    """An engine's operations as awaitables (see the module's documentation). Arguments as
    for :class:`IndexedEngine`; each call returns an awaitable of what the synchronous
    call returns."""

    def upsert(self, batch: RecordBatch, mode: str) -> Awaitable[None]: ...

    def search(
        self,
        queries: Any,
        k: int,
        filter: Filter | None = None,
        min_score: float | None = None,
        device: str | None = None,
    ) -> Awaitable[tuple[np.ndarray, np.ndarray, np.ndarray]]: ...

    def explain(
        self,
        queries: Any,
        k: int,
        filter: Filter | None = None,
        min_score: float | None = None,
        device: str | None = None,
    ) -> Awaitable[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]]: ...

    def get(self, ids: builtins.list[str]) -> Awaitable[builtins.list[Any]]: ...

    def update(self, id: str, patch: Patch) -> Awaitable[bool]: ...

    def touch(self, ids: builtins.list[str], t: float) -> Awaitable[int]: ...

    def delete(
        self, ids: builtins.list[str] | None = None, filter: Filter | None = None
    ) -> Awaitable[int]: ...

    def list(
        self, filter: Filter | None = None, offset: int = 0, limit: int | None = None
    ) -> Awaitable[builtins.list[Any]]: ...

    def count(self, filter: Filter | None = None) -> Awaitable[int]: ...

    def child_scopes(self, scope: str | None = None) -> Awaitable[builtins.list[str]]: ...

    def category_counts(self, filter: Filter | None = None) -> Awaitable[dict[str, int]]: ...

    def scope_info(self, scope: str | None = None) -> Awaitable[dict[str, Any]]: ...

    def reset(self) -> Awaitable[None]: ...

    def close(self) -> Awaitable[None]: ...

    def stats(self) -> Awaitable[dict[str, Any]]: ...
