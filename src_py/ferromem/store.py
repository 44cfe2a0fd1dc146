"""The public facade: :func:`open`, :class:`Store` and :class:`SearchResult`.

The Store checks every argument (``ferromem._validate``) and converts vectors (the
Cython data plane ``ferromem._buffers``) before it calls the engine, so a bad call
raises a typed error and writes nothing. It talks to the engine through the typed
shapes of ``ferromem._schema`` (records, batches, patches, filters) and the
``ferromem._engine.Engine`` protocol. The engine is the native ``ferromem._core.Engine``
when it loads, else the NumPy :class:`~ferromem._reference.ReferenceEngine` (with one
warning).
"""

from __future__ import annotations

import array
import builtins
import inspect
import os
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import numpy as np

from . import _location, _planner
from . import _validate as check
from ._engine import Engine, IndexedEngine
from ._reference import ReferenceEngine
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
from .exceptions import (
    DamagedCacheWarning,
    DamagedRecordsWarning,
    DeviceUnavailableError,
    FerromemError,
    InvalidInputError,
    NativeUnavailableWarning,
    NotFoundError,
    StorageError,
    StoreClosedError,
    UnsupportedStoreError,
)
from .records import Record, ScopeInfo

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only type checkers read it here
    from typing_extensions import Unpack

__all__ = ["open", "check_store", "Store", "SearchResult"]


# --------------------------------------------------------------------------- data plane


def _load_data_plane() -> Any:
    """The compiled data plane: the one intake of vectors. It is built with the package
    (setup.py builds it beside ``_core``); without it no vector could be read, so its
    absence is an ImportError that says how to fix it."""
    try:
        from . import _buffers
    except ImportError as exc:
        raise ImportError(
            f"ferromem's data plane (ferromem._buffers) is not built: {exc}. To fix it, {_REINSTALL_HINT}"
        ) from exc
    return _buffers


_REINSTALL_HINT = (
    "reinstall ferromem with a Rust toolchain and a C compiler available "
    "(https://rustup.rs): in a clone of the ferromem repository, "
    "`pip install --force-reinstall .` (ferromem is not published on a package index)"
)

_data_plane = _load_data_plane()
_as_matrix = _data_plane.as_matrix
_as_vector = _data_plane.as_vector


# --------------------------------------------------------------------------- engines


def _load_native() -> tuple[Any, BaseException | None]:
    try:
        from . import _core
    except ImportError as exc:
        return None, exc
    if not hasattr(_core, "Engine"):
        return None, ImportError("ferromem._core loaded but has no Engine (a partial or outdated build)")
    return _core, None


_core, _core_import_error = _load_native()
_native_warning_lock = threading.Lock()
_native_warning_issued = False


def _warn_native_unavailable() -> None:
    """Warns once per process that the reference engine stands in for the native one."""
    global _native_warning_issued
    with _native_warning_lock:
        if _native_warning_issued:
            return
        _native_warning_issued = True
    warnings.warn(
        "ferromem's native engine could not be loaded "
        f"({type(_core_import_error).__name__}: {_core_import_error}); using the NumPy "
        f"reference engine, which is correct but much slower. To fix it, {_REINSTALL_HINT}. "
        "Pass engine='reference' to choose it explicitly and silence this warning.",
        NativeUnavailableWarning,
        stacklevel=5,  # _warn_native_unavailable <- _select_engine <- _plan_open <- open <- caller
    )


def _warn_damaged_caches(engine_instance: Engine, path: str) -> None:
    """Warns when the engine found the store image or the saved graph damaged at open. Both
    are caches: the engine already ignored them (the store was read from its file, the
    graph is rebuilt), so answers are right; the user should still hear of the damage,
    which may be a failing disk."""
    raw = dict(engine_instance.stats())
    image = dict(raw.get("fast_open") or {}).get("rejected")
    graph = dict(raw.get("index") or {}).get("graph_file_rejected")
    if image:
        warnings.warn(
            f"the store image {path + '.image'!r} is damaged ({image}); it was ignored and "
            "the store was read from its file, so answers are unaffected. A new image is "
            "written when the store is closed. If this repeats, check the disk.",
            DamagedCacheWarning,
            stacklevel=4,  # _warn_damaged_caches <- _open_store <- open <- caller
        )
    if graph:
        warnings.warn(
            f"the saved search graph {path + '.hnsw'!r} is damaged ({graph}); it was "
            "ignored and is rebuilt in the background, and searches are exact meanwhile. "
            "If this repeats, check the disk.",
            DamagedCacheWarning,
            stacklevel=4,
        )


def _select_engine(engine: str) -> tuple[Any, str]:
    if engine == "reference":
        return ReferenceEngine, "reference"
    if _core is not None:
        return _core.Engine, "native"
    if engine == "native":
        raise FerromemError(
            f"the native engine (ferromem._core) is unavailable: {_core_import_error}. "
            f"To fix it, {_REINSTALL_HINT}; or pass engine='reference' (NumPy, slower)."
        ) from _core_import_error
    _warn_native_unavailable()
    return ReferenceEngine, "reference"


def open(  # noqa: A001 - the public name is ferromem.open, like builtins.open
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
) -> Store:
    """Opens (or creates) a store.

    ``path``: where the store lives: its single SQLite file (a path, an os.PathLike,
    ``"sqlite:PATH"`` or ``"sqlite:///ABSOLUTE/PATH"``; parent directories are created),
    or None or ``"memory:"`` for an in-memory store, or a store in a PostgreSQL database,
    ``"postgresql://user@host:5432/dbname?store=NAME"`` (shared by every process that opens
    it; the options, the consistency model and the pool are in docs/postgres.md). Other
    schemes raise UnsupportedStoreError. ``dim``: the vector dimension, if known (it is otherwise fixed
    by the first vector). ``durability``: "normal" (acknowledged writes survive a process
    crash) or "full" (they also survive power loss; one fsync per write). ``engine``:
    "auto" (native if it loads, else the reference engine with a warning), "native" or
    "reference". ``cache_size``: how many single-query searches the native engine keeps
    the results of (0 turns the cache off); an entry serves a repeated search only while
    no change that could alter its result has happened (docs/architecture.md).
    ``index``: "auto" (an HNSW graph once the store holds 2^25 values, e.g. 21,845
    records of 1536 dimensions, serving searches only while the recall guard measures it
    at ``recall_target`` and cheaper than an exact scan; exact scans otherwise),
    "exact" (always exact) or "hnsw" (the graph at any size, at ``ef_search``, whatever
    its recall). The graph is built in a background thread; until it is published, and
    for filters that select few records, searches are exact scans.
    ``ef_search``: how many graph results a search re-scores exactly (at least k);
    higher is slower and closer to exact. Under "auto" it is the narrowest width the
    recall guard tries; it widens it (up to 16x, at most 1024) when the graph's recall
    falls short. ``recall_target`` (default 0.95, 0 < t <= 1): the recall@k the graph must
    be measured to reach, on probe queries when it is published and then on a sample of
    this store's own searches (re-run exactly in a background thread using at most 5% of
    one core), before index="auto" lets it answer; the estimate is in
    ``stats()["index"]["recall"]``. The reference engine always scans exactly.
    ``precision``: "f32" (exact scores; the vectors and a half-precision copy in memory,
    6 bytes a value), "f16" (only the half-precision copy, 2 bytes a value; scores
    within about 1e-3 of the exact cosine) or "int8" (only an int8 copy, 1 byte a value
    plus 4 a record; each search re-ranks its int8 candidates with the exact vectors
    read from the file, so scores are exact and recall@10 against "f32" stays >= 0.995).
    With "f16" and "int8", ``get`` and ``list`` read the exact vectors from the file, so
    they need a path. The reference engine always holds f32.
    ``fast_open``: keep a store image beside the file (``<path>.image``, written at close
    when the store changed) and open from it: the vectors are mapped and paged in on use
    instead of read out of SQLite, so a large store opens in milliseconds. It costs disk
    (about 1.5x the vectors' bytes for "f32", 0.5x for "f16", 0.25x for "int8"). The
    image is a cache, used only when it fits the store (an int8 image serves int8 stores
    only); stores opened without ``fast_open`` leave it alone, and deleting it is always
    safe. Native engine with a path only.
    ``read_only``: never write to the file (it must be a store already): every write
    raises ReadOnlyStoreError, and closing writes no graph or image. ``ferromem stats``
    and ``ferromem check`` open this way.
    ``device``: where exact searches may run: "auto" (the planner picks the CPU scan, the
    CPU batch kernel or the GPU per call, from costs measured on this machine; the GPU
    only when ``ferromem.gpu`` finds one, which needs CuPy: ``pip install
    'ferromem[gpu]'``), "cpu" (never the GPU) or "gpu" (always the GPU; without one,
    DeviceUnavailableError here and DeviceError per search). None: the environment
    variable ``FERROMEM_DEVICE``, else "auto". A GPU search returns the CPU's results
    exactly (docs/gpu.md). ``search(device=...)`` overrides it per call and
    ``explain()`` says which path ran and why.

    A file that is not a ferromem store (another application's SQLite database, an empty
    or truncated file, anything else) raises NotAStoreError and is left byte for byte as
    it was; a store of a newer schema raises IncompatibleStoreError. Records that fail
    their checksums on disk are left out of the open store, listed in
    ``stats()["damaged"]`` and reported once with a DamagedRecordsWarning (see
    :func:`check`).
    """
    plan = _plan_open(
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
    return _open_store(plan.open_engine(), plan)


@dataclass(frozen=True)
class _OpenPlan:
    """Everything :func:`open` decides before it opens the engine (every argument checked,
    the engine chosen, the directory made): shared with ``ferromem.open_async``, which
    opens the engine without blocking its event loop."""

    engine_factory: Any
    engine_name: str
    path_text: str | None  # a local file; None in memory and for a database
    database: _location.DatabaseLocation | None
    dim: int | None
    durability: str
    precision: str
    fast_open: bool
    read_only: bool
    cache_size: int
    index: str
    ef_search: int
    recall_target: float
    policy: str

    @property
    def shown(self) -> str | None:
        """The location as messages and repr show it (a database URL without its password)."""
        return self.path_text if self.database is None else self.database.shown

    def engine_args(self) -> tuple[Any, ...]:
        """The engine constructor's positional arguments."""
        if self.database is not None:
            return (
                self.database.url,
                self.dim,
                self.durability,
                self.precision,
                self.fast_open,
                self.read_only,
            )
        if self.engine_name == "native":
            return (self.path_text, self.dim, self.durability, self.precision, self.fast_open, self.read_only)
        # the reference engine holds f32 and reads the file whatever is asked
        return (self.path_text, self.dim, self.durability)

    def open_engine(self) -> Engine:
        if self.engine_name == "native":
            return cast(Engine, self.engine_factory(*self.engine_args()))
        return cast(Engine, self.engine_factory(*self.engine_args(), read_only=self.read_only))


def _plan_open(
    path: str | os.PathLike | None,
    *,
    dim: int | None,
    durability: Any,
    engine: Any,
    cache_size: Any,
    index: Any,
    ef_search: Any,
    recall_target: Any,
    precision: Any,
    fast_open: Any,
    read_only: Any,
    device: Any,
) -> _OpenPlan:
    location = _location.store_path(path)
    database = location if isinstance(location, _location.DatabaseLocation) else None
    path_text = None if database is not None else check.check_path(location)
    cache_size = check.check_cache_size(cache_size)
    index = check.check_index(index)
    ef_search = check.check_ef_search(ef_search)
    recall_target = check.check_recall_target(recall_target)
    precision = check.check_precision(precision, path_text if database is None else database.shown)
    dim = check.check_dim(dim)
    durability = check.check_durability(durability)
    fast_open = check.check_bool(fast_open, "fast_open")
    read_only = check.check_bool(read_only, "read_only")
    if read_only and path_text is None and database is None:
        raise InvalidInputError("read_only=True needs a path: an in-memory store has no file to protect")
    if fast_open and database is not None:
        raise InvalidInputError(
            "fast_open=True keeps a store image beside a local file; a PostgreSQL store has none"
        )
    # Checked before anything is opened: a bad value touches no file.
    policy = _planner.default_policy() if device is None else _planner.check_policy(device)
    engine_factory, engine_name = _select_engine(check.check_engine(engine))
    if database is not None and engine_name != "native":
        raise UnsupportedStoreError(
            "a PostgreSQL store needs the native engine (ferromem._core); the reference "
            f"engine opens SQLite files only ({database.shown})"
        )
    if path_text is not None and not read_only:
        try:
            os.makedirs(os.path.dirname(path_text), exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the directory of {path_text!r}: {exc}") from exc
    return _OpenPlan(
        engine_factory,
        engine_name,
        path_text,
        database,
        dim,
        durability,
        precision,
        fast_open,
        read_only,
        cache_size,
        index,
        ef_search,
        recall_target,
        policy,
    )


def _open_store(engine_instance: Engine, plan: _OpenPlan) -> Store:
    """The Store of a freshly opened engine: warnings about damage found at open, the
    cache, index and device settings (closing the engine if any of that fails)."""
    path_text, engine_name, policy, precision = plan.path_text, plan.engine_name, plan.policy, plan.precision
    try:
        _warn_if_damaged(engine_instance, plan.shown)
        if engine_name == "native" and path_text is not None:
            _warn_damaged_caches(engine_instance, path_text)
    except BaseException:  # a warnings filter turned a warning into an error
        engine_instance.close()
        raise
    indexed = _indexed(engine_instance)
    device_note: str | None = "the reference engine has no device path"
    try:
        if indexed is not None:  # the reference engine keeps no cache and always scans exactly
            indexed.set_cache_capacity(plan.cache_size)
            indexed.set_index(plan.index, plan.ef_search, recall_target=plan.recall_target)
            indexed.set_policy(policy)
            device_note = _planner.attach(indexed, policy, precision, None)
        elif policy == "gpu":
            raise DeviceUnavailableError(f"device='gpu' cannot be met: {device_note}")
    except BaseException:
        engine_instance.close()
        raise
    store = Store(
        engine_instance,
        engine_name,
        index=plan.index,
        ef_search=plan.ef_search,
        recall_target=plan.recall_target,
        location=plan.shown,
    )
    store._set_planning(precision, policy, device_note)
    return store


def _indexed(engine: Engine) -> IndexedEngine | None:
    """The engine as an :class:`IndexedEngine` when it has a result cache and an index
    (the native one). Not ``isinstance``: a runtime protocol check reads every property
    of the engine (``dim`` catches up with the file)."""
    return cast("IndexedEngine", engine) if hasattr(engine, "wait_for_index") else None


def _damaged_records(engine: Engine) -> builtins.list[dict[str, Any]]:
    """The engine's quarantined records (the native engine reports them in its stats)."""
    reported = getattr(engine, "damaged", None)
    if callable(reported):
        return builtins.list(reported())
    return builtins.list(engine.stats().get("damaged") or [])


def _warn_if_damaged(engine: Engine, path: str | None) -> None:
    damaged = _damaged_records(engine)
    if damaged:
        shown = ", ".join(repr(d["id"]) for d in damaged[:5])
        more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        warnings.warn(
            f"{len(damaged)} record(s) of {path} fail their checksums on disk and were left "
            f"out of the store: {shown}{more}. They are listed in stats()['damaged']; save "
            "them again or delete them by id to clear them. `ferromem check PATH` lists "
            "all damage.",
            DamagedRecordsWarning,
            stacklevel=4,  # _warn_if_damaged <- _open_store <- open <- caller
        )


def check_store(path: str | os.PathLike) -> list[str]:
    """Verifies the store at ``path`` without writing to it: SQLite's own structure, the
    meta table, every record's checksums, and the derived files beside it (the store
    image and the saved graph) where they exist. Returns one line per problem; an empty
    list means the store is whole. Raises NotAStoreError for a file that is not a store.
    ``ferromem check PATH`` prints this list and exits 1 when it is not empty."""
    path_text = _required_path(path)
    if _core is None:
        return ReferenceEngine.verify(path_text)
    problems = builtins.list(_core.verify_store(path_text))
    for suffix, verify_name in ((".image", "verify_image"), (".hnsw", "verify_graph")):
        verify = getattr(_core, verify_name, None)
        derived = path_text + suffix
        if verify is not None and os.path.exists(derived):
            problems.extend(
                f"{os.path.basename(derived)} (a cache, ignored and rebuilt when damaged): {p}"
                for p in verify(derived)
            )
    return problems


def _required_path(path: Any) -> str:
    path_text = check.check_path(path)
    if path_text is None:
        raise InvalidInputError("a path is required: an in-memory store has no file to check")
    return path_text


# --------------------------------------------------------------------------- helpers

_UNSET: Any = object()
# stats()["cache"] of an engine without a result cache (the reference engine).
_NO_CACHE = {"capacity": 0, "entries": 0, "hits": 0, "misses": 0, "hit_rate": 0.0}
# stats()["index"] of an engine without a graph (the reference engine).
_NO_GRAPH = {
    "m": None,
    "ef_construction": None,
    "active": "exact",
    "graph_nodes": 0,
    "pending": 0,
    "graph_bytes": 0,
    "builds": 0,
    "building": False,
    "graph_file_rejected": None,
    "serving_ef": None,
}


def _exact_recall(target: float) -> dict[str, Any]:
    """stats()["index"]["recall"] of an engine without a graph: always exact."""
    return {
        "target": target,
        "verdict": "exact",
        "ladder": [],
        "exact_ms": None,
        "offered": 0,
        "evaluated": 0,
        "dropped": 0,
        "sample_every": 1,
        "auditor_share": 0.0,
        "bootstraps": 0,
        "bootstrap_ms": None,
    }


# k beyond any store size changes nothing (each query returns min(k, matches)); the
# bound keeps a huge k from overflowing a native integer or pre-allocating.
_MAX_K = 2**31 - 1


def _only_keywords(method: str, given: Mapping[str, Any], accepted: Any) -> None:
    """Raises the TypeError Python raises for an unexpected keyword argument when
    ``given`` (a method's ``**kwargs``) holds a name that the TypedDict ``accepted`` lacks."""
    names = accepted.__required_keys__ | accepted.__optional_keys__
    for name in given:
        if name not in names:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _keywords(accepted: Any, **defaults: Any) -> Callable[[_Method], _Method]:
    """Shows the keywords of the TypedDict ``accepted``, which the method takes as
    ``**kwargs``, in its signature (``help()``, ``inspect.signature``) as keyword-only
    parameters, each with its default (None unless given here)."""

    def decorate(method: _Method) -> _Method:
        signature = inspect.signature(method)
        parameters = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        parameters += [
            inspect.Parameter(
                # annotation: as the others read at run time (this module defers annotations)
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=defaults.get(name),
                annotation="Any",
            )
            for name in accepted.__annotations__
        ]
        method.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return method

    return decorate


def _input_ndim(obj: Any) -> int:
    """The number of dimensions of a vector argument, without converting it."""
    ndim = getattr(obj, "ndim", None)
    if isinstance(ndim, int):
        return ndim
    if isinstance(obj, (list, tuple)):
        if not obj:
            return 1
        first = obj[0]
        if isinstance(first, (list, tuple, array.array, memoryview)):
            return 2
        first_ndim = getattr(first, "ndim", None)
        return 1 + first_ndim if isinstance(first_ndim, int) and first_ndim > 0 else 1
    try:
        return memoryview(obj).ndim
    except TypeError:
        return 1  # not a vector at all: the conversion reports it


def _query_matrix(query: Any) -> tuple[np.ndarray, bool]:
    """(queries as (nq, d) float32, True when the caller passed a single vector)."""
    if _input_ndim(query) == 1:
        return _as_vector(query).reshape(1, -1), True
    return _as_matrix(query), False


class SearchResult:
    """The results of one query, best first: ``ids`` (object array of str) and ``scores``
    (float32 cosine similarities). ``len``, iteration (``(id, score)`` pairs), indexing
    and ``records()`` (the full records, fetched on demand)."""

    __slots__ = ("ids", "scores", "_store")

    def __init__(self, ids: np.ndarray, scores: np.ndarray, store: Store):
        self.ids = ids
        self.scores = scores
        self._store = store

    def __len__(self) -> int:
        return len(self.ids)

    def __bool__(self) -> bool:
        return len(self.ids) > 0

    def __iter__(self) -> Iterator[tuple[str, float]]:
        for record_id, score in zip(self.ids, self.scores):
            yield record_id, float(score)

    def __getitem__(self, index: int | slice) -> tuple[str, float] | SearchResult:
        if isinstance(index, slice):
            return SearchResult(self.ids[index], self.scores[index], self._store)
        return self.ids[index], float(self.scores[index])

    def records(self) -> list[Record | None]:
        """The records in rank order, aligned with ``ids``; a record deleted since the
        search is None in its place."""
        if not len(self.ids):
            return []
        return self._store.get_many(self.ids.tolist())

    def __repr__(self) -> str:
        shown = ", ".join(f"({i!r}, {s:.4f})" for i, s in list(self)[:5])
        more = f", ... {len(self) - 5} more" if len(self) > 5 else ""
        return f"SearchResult([{shown}{more}])"


# --------------------------------------------------------------------------- fork

# How many forks this process descends through. A Store remembers the count it was opened
# at: in a forked child, a store of the parent holds an engine whose threads (graph
# builder, scan workers) are gone and whose locks one of them may hold, so it must not be
# used there (the native engine refuses it too, and leaks it instead of closing it).
_forks = 0
# The parent's engines a child closed: kept, never finalised here (closing one would
# touch the parent's connections and files).
_inherited_engines: builtins.list[Engine] = []


def _after_fork_in_child() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)

_FORKED_MESSAGE = (
    "this store was opened in the parent process, before os.fork(); a forked child cannot "
    "use it (its threads and locks stayed in the parent): open it again with "
    "ferromem.open(path) in the child"
)


def _patch_of(
    id: Any,
    *,
    content: Any,
    scope: Any,
    categories: Any,
    metadata: Any,
    importance: Any,
    created_at: Any,
    last_accessed: Any,
    source: Any,
    private: Any,
    vector: Any,
) -> tuple[str, Patch | None]:
    """The checked id and patch of an update (None: no field to change); a field left
    ``_UNSET`` is unchanged."""
    record_id = check.check_id(id)
    changes: dict[str, Any] = {}
    if content is not _UNSET:
        changes["content"] = check.check_text(content, "content")
    if scope is not _UNSET:
        changes["scope"] = check.check_scope(scope)
    if categories is not _UNSET:
        changes["categories"] = check.check_categories(categories)
    if metadata is not _UNSET:
        changes["metadata_json"] = check.metadata_json(metadata)
    if importance is not _UNSET:
        changes["importance"] = check.check_real(importance, "importance")
    if created_at is not _UNSET:
        changes["created_at"] = check.check_timestamp(created_at, "created_at")
    if last_accessed is not _UNSET:
        changes["last_accessed"] = check.check_timestamp(last_accessed, "last_accessed")
    if source is not _UNSET:
        changes["source"] = check.check_source(source)
    if private is not _UNSET:
        changes["private"] = check.check_bool(private, "private")
    if vector is not _UNSET:
        changes["vector"] = _as_vector(vector)  # the engine checks the dimension
    return record_id, (Patch(**changes) if changes else None)


def _every_record() -> Filter:
    """A filter every record matches: a criterion-less delete is refused (the facade's
    guard against wiping a store by accident), so clear() says "created before the
    largest finite time" (created_at is always finite)."""
    return Filter(older_than=sys.float_info.max)


def _reference_explanation(queries: np.ndarray, seconds: float) -> dict[str, Any]:
    """explain()'s account of a reference engine's search, which took ``seconds``."""
    return {
        "path": "reference-scan",
        "reason": "the reference engine always scans exactly on the CPU",
        "policy": "cpu",
        "queries": int(queries.shape[0]),
        "rows": None,
        "predicted_ms": {},
        "observed_ms": seconds * 1e3,
        "device": None,
    }


def _scope_info(info: Mapping[str, Any]) -> ScopeInfo:
    """An engine's scope_info() as the public ScopeInfo."""
    return ScopeInfo(
        path=info["path"],
        record_count=int(info["record_count"]),
        categories=tuple(info["categories"]),
        oldest=info["oldest"],
        newest=info["newest"],
        child_scopes=tuple(info["child_scopes"]),
    )


def _not_found(record_id: str) -> NotFoundError:
    return NotFoundError(f"no record with id {record_id!r}; use add() to create it")


# --------------------------------------------------------------------------- store


class Store:
    """A vector memory store. Create one with :func:`ferromem.open`.

    Thread-safe: any number of threads may call one Store at once.
    """

    def __init__(
        self,
        engine: Engine,
        engine_name: str,
        *,
        index: str = "auto",
        ef_search: int = 96,
        recall_target: float = check.DEFAULT_RECALL_TARGET,
        location: str | None = None,
    ):
        self._engine = engine
        self._engine_name = engine_name
        # Where the store lives, as shown to people: a path, or a database URL without
        # its password. None: taken from the engine (a file or in memory).
        self._location = location
        self._index = index
        self._ef_search = ef_search
        self._recall_target = recall_target
        self._graph_min_values = check.DEFAULT_GRAPH_MIN_VALUES
        self._closed = False
        self._forks = _forks
        self._precision = "f32"
        self._policy = "auto"
        # Why no device is attached (None when one is); whether the planner's constants
        # were loaded or measured (at the first search that has a choice to make).
        self._device_note: str | None = "no device path"
        self._planner_ready = False
        # The async face of its engine (ferromem.aio), made when an AsyncStore first wraps it.
        self._async_engine: Any = None

    def _set_planning(self, precision: str, policy: str, device_note: str | None) -> None:
        self._precision, self._policy, self._device_note = precision, policy, device_note

    def _prepare_planner(self, dim: int) -> None:
        """Gives the planner its measured constants: the CPU's, and the device's when one
        is attached (from the calibration cache, else measured now: see ``_planner``)."""
        indexed = _indexed(self._engine)
        self._planner_ready = True
        if indexed is None:
            return
        if self._device_note is None:
            self._device_note = _planner.attach(indexed, self._policy, self._precision, dim)
        else:
            _planner.ensure_cpu_costs(indexed, self._precision, dim)

    # ----------------------------------------------------------------- properties

    @property
    def dim(self) -> int | None:
        """The vector dimension, or None until the first vector (or ``dim=``) fixes it."""
        self._check_open()
        return self._engine.dim

    @property
    def path(self) -> str | None:
        """The store's file, or None for an in-memory store or a store in a database."""
        path = self._engine.path
        return None if path is None else os.fspath(path)

    @property
    def location(self) -> str | None:
        """Where the store lives: its file, a PostgreSQL URL without its password (and
        without options other than ``store`` and ``schema``), or None in memory."""
        return self._location if self._location is not None else self.path

    @property
    def engine(self) -> str:
        """ "native" or "reference"."""
        return self._engine_name

    @property
    def closed(self) -> bool:
        """True once closed, and in a forked child for a store of the parent."""
        return self._closed or self._forks != _forks

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed; open it again with ferromem.open(path) to use it")
        if self._forks != _forks:
            raise StoreClosedError(_FORKED_MESSAGE)

    # ----------------------------------------------------------------- writes

    @_keywords(RecordFields)
    def add(
        self,
        ids: Any,
        vectors: Any,
        **fields: Unpack[RecordFields],
    ) -> list[str]:
        """Adds new records; an id that already exists raises DuplicateIdError and
        nothing is written. Single form: ``ids`` a str (or None with one vector) and
        scalar fields. Batch form: ``ids`` a list (or None with a matrix) and each field
        a list of one value per record or one value for all. Returns the ids.

        The fields (keywords; each None by default, i.e. the field's default): contents,
        scopes, categories, metadata, importance, created_at, last_accessed, sources,
        private (docs/api.md)."""
        _only_keywords("Store.add", fields, RecordFields)
        return self._write("insert", ids, vectors, fields)

    @_keywords(RecordFields)
    def upsert(
        self,
        ids: Any,
        vectors: Any,
        **fields: Unpack[RecordFields],
    ) -> list[str]:
        """Like :meth:`add` (the same fields), but an existing id is replaced (the whole
        record)."""
        _only_keywords("Store.upsert", fields, RecordFields)
        return self._write("upsert", ids, vectors, fields)

    def _write(self, mode: str, ids: Any, vectors: Any, fields: RecordFields) -> list[str]:
        id_list, batch = self._write_batch(ids, vectors, fields)
        if batch is not None:
            self._engine.upsert(batch, mode)
        return id_list

    def _write_batch(
        self, ids: Any, vectors: Any, fields: RecordFields
    ) -> tuple[list[str], RecordBatch | None]:
        """The ids and the checked batch of an add or upsert (None: an empty batch, which
        writes nothing)."""
        self._check_open()
        # Vectors are not checked against the store's dimension here: the engine does it
        # against its state caught up with other processes (asking first costs a catch-up).
        single = isinstance(ids, str) or (ids is None and _input_ndim(vectors) == 1)
        if single:
            id_list = [uuid.uuid4().hex if ids is None else check.check_id(ids)]
            matrix = _as_vector(vectors).reshape(1, -1)
        elif ids is None:
            matrix = _as_matrix(vectors)
            id_list = [uuid.uuid4().hex for _ in range(matrix.shape[0])]
        else:
            id_list = check.check_id_list(ids)
            if not id_list:
                return self._empty_batch(vectors), None
            check.check_unique_ids(id_list)
            matrix = _as_matrix(vectors)
            check.check_vector_count(len(id_list), matrix.shape[0])
        batch = check.record_batch(
            id_list,
            matrix,
            single,
            fields,
            now=time.time(),
        )
        return id_list, batch

    @staticmethod
    def _empty_batch(vectors: Any) -> list[str]:
        """An empty batch writes nothing, provided it also has no vectors."""
        try:
            n_vectors = len(vectors)
        except TypeError:
            n_vectors = -1
        if n_vectors != 0:
            raise InvalidInputError("ids is an empty list but vectors were given; pass one id per vector")
        return []

    def update(
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
        """Changes only the fields passed (``source=None`` sets None) and returns the
        updated record. A missing id raises NotFoundError."""
        self._check_open()
        record_id, patch = _patch_of(
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
        if patch is not None and not self._engine.update(record_id, patch):
            raise _not_found(record_id)
        record = self.get(record_id)
        if record is None:
            raise _not_found(record_id)
        return record

    def touch(self, ids: Any, at: Any = None) -> int:
        """Sets last_accessed of the given ids (now by default); returns how many exist."""
        id_list, when = self._touch_args(ids, at)
        if not id_list:
            return 0
        return int(self._engine.touch(id_list, when))

    def _touch_args(self, ids: Any, at: Any) -> tuple[builtins.list[str], float]:
        self._check_open()
        id_list = check.ids_or_single(ids)
        when = time.time() if at is None else check.check_timestamp(at, "at")
        return id_list, when

    @_keywords(DeleteCriteria)
    def delete(
        self,
        ids: Any = None,
        **criteria: Unpack[DeleteCriteria],
    ) -> int:
        """Deletes the records matching ALL the criteria given; returns how many.

        The criteria: ``ids`` and the keywords scope, categories, where, source and
        older_than (each None by default: no criterion). At least one criterion is
        required: use :meth:`reset` to delete everything.
        """
        id_list, flt = self._delete_args("Store.delete", ids, criteria)
        if id_list == []:
            return 0
        return int(self._engine.delete(id_list, flt))

    def _delete_args(
        self, method: str, ids: Any, criteria: Mapping[str, Any]
    ) -> tuple[builtins.list[str] | None, Filter]:
        _only_keywords(method, criteria, DeleteCriteria)
        self._check_open()
        id_list = None if ids is None else check.ids_or_single(ids)
        flt = check.build_filter(criteria)
        return id_list, check.require_delete_criterion(id_list, flt)

    def clear(self) -> int:
        """Deletes every record in one transaction and returns how many; unlike
        :meth:`reset`, the dimension stays fixed."""
        self._check_open()
        return int(self._engine.delete(None, _every_record()))

    def reset(self) -> None:
        """Deletes every record; the dimension is free again."""
        self._check_open()
        self._engine.reset()

    # ----------------------------------------------------------------- reads

    # One vector gives one SearchResult, a matrix a list of them (decided at run time by
    # the number of dimensions); the overloads tell a type checker which, from the query's
    # type (ferromem/_typing.py).
    @overload
    def search(self, query: Vector, k: int = 10, **options: Unpack[SearchOptions]) -> SearchResult: ...

    @overload
    def search(
        self, query: Matrix, k: int = 10, **options: Unpack[SearchOptions]
    ) -> builtins.list[SearchResult]: ...

    @overload
    def search(
        self, query: ArrayLike, k: int = 10, **options: Unpack[SearchOptions]
    ) -> SearchResult | builtins.list[SearchResult]: ...

    @_keywords(SearchOptions, include_private=True)
    def search(
        self, query: Any, k: int = 10, **options: Unpack[SearchOptions]
    ) -> SearchResult | builtins.list[SearchResult]:
        """The k most similar records (cosine similarity, best first, ties by id).

        A single vector gives a :class:`SearchResult`; a matrix of queries gives one per
        row, computed in one batched call. Filters are applied before ranking, so each
        query returns min(k, matches) results (fewer only through ``min_score``).

        The keywords: the filter of :meth:`list` (scope, categories, where, source,
        include_private=True, visible_to, ids) and min_score (None: no threshold).
        """
        queries, single, k, flt, min_score = self._query_args("Store.search", query, k, options)
        device = options.get("device")
        indexed = _indexed(self._engine)
        if device is not None or indexed is None:
            device = self._device_policy(device)
        self._plan_search(queries)
        if indexed is not None:
            hits = indexed.search(queries, k, flt, min_score, device)
        else:
            hits = self._engine.search(queries, k, flt, min_score)
        return self._results(hits, single)

    def _query_args(
        self, method: str, query: Any, k: Any, options: Mapping[str, Any]
    ) -> tuple[np.ndarray, bool, int, Filter, float | None]:
        """(queries as (nq, d) float32, whether a single vector was given, k, the filter,
        min_score) of a search, checked; the engine checks the dimension."""
        _only_keywords(method, options, SearchOptions)
        self._check_open()
        k = check.check_k(k)
        min_score = check.check_min_score(options.get("min_score"))
        flt = check.build_filter(options)
        queries, single = _query_matrix(query)
        return queries, single, min(k, _MAX_K), flt, min_score

    def _plan_search(self, queries: np.ndarray) -> None:
        """Readies the planner at the first search that has a choice to make."""
        if not self._planner_ready and (queries.shape[0] > 1 or self._device_note is None):
            self._prepare_planner(queries.shape[1])

    def _results(
        self, hits: tuple[np.ndarray, np.ndarray, np.ndarray], single: bool
    ) -> SearchResult | builtins.list[SearchResult]:
        """The engine's (ids, scores, offsets) as a SearchResult per query."""
        ids, scores, offsets = hits
        results = [
            SearchResult(ids[offsets[i] : offsets[i + 1]], scores[offsets[i] : offsets[i + 1]], self)
            for i in range(len(offsets) - 1)
        ]
        return results[0] if single else results

    def _device_policy(self, device: Any) -> str | None:
        """A per-call device policy, checked; the reference engine has no device."""
        if device is None:
            return None
        policy = _planner.check_policy(device)
        if policy == "gpu" and _indexed(self._engine) is None:
            raise DeviceUnavailableError(
                "device='gpu' cannot be met: the reference engine has no device path"
            )
        return policy

    @_keywords(SearchOptions, include_private=True)
    def explain(self, query: Any, k: int = 10, **options: Unpack[SearchOptions]) -> dict[str, Any]:
        """Runs the search ``search(query, k, **options)`` would (without the result cache
        or coalescing) and says how it was served: ``path`` ("cpu-one", "cpu-batch",
        "gpu-exact", "graph", ...), ``reason``, ``predicted_ms`` (each eligible exact
        path's prediction from the planner's cost model), ``observed_ms``, ``rows`` (what
        the filter left to score), ``device`` and ``policy``; ``results``: the results."""
        queries, single, k, flt, min_score = self._query_args("Store.explain", query, k, options)
        device = self._device_policy(options.get("device"))
        indexed = _indexed(self._engine)
        if indexed is None:
            t = time.perf_counter()
            hits = self._engine.search(queries, k, flt, min_score)
            how = _reference_explanation(queries, time.perf_counter() - t)
        else:
            if not self._planner_ready:
                self._prepare_planner(queries.shape[1])
            hits, how = indexed.explain(queries, k, flt, min_score, device)
        return self._explained(hits, dict(how), single)

    def _explained(
        self, hits: tuple[np.ndarray, np.ndarray, np.ndarray], how: dict[str, Any], single: bool
    ) -> dict[str, Any]:
        if how.get("device") is None and self._device_note is not None:
            how["no_device"] = self._device_note
        how["results"] = self._results(hits, single)
        return how

    def get(self, id: str) -> Record | None:
        """The record with this id, or None."""
        self._check_open()
        row = self._engine.get([check.check_id(id)])[0]
        return None if row is None else Record._from_row(row)

    def get_many(self, ids: Any) -> list[Record | None]:
        """The records with these ids, in the same order (None where missing)."""
        self._check_open()
        rows = self._engine.get(check.check_id_list(ids))
        return [None if row is None else Record._from_row(row) for row in rows]

    @_keywords(ListOptions, include_private=True, offset=0)
    def list(
        self,
        **options: Unpack[ListOptions],
    ) -> builtins.list[Record]:
        """The matching records, newest first (created_at descending, ties by id).

        The keywords: the filter (scope, categories, where, source: None, no criterion;
        include_private=True; visible_to: None, a source whose private records are kept
        with include_private=False; ids: None, or a list of ids) and the page (offset=0,
        limit=None).
        """
        flt, offset, limit = self._list_args("Store.list", options)
        if limit == 0:
            return []
        return [Record._from_row(row) for row in self._engine.list(flt, offset, limit)]

    def _list_args(self, method: str, options: Mapping[str, Any]) -> tuple[Filter, int, int | None]:
        _only_keywords(method, options, ListOptions)
        self._check_open()
        flt = check.build_filter(options)
        offset = check.check_offset(options.get("offset", 0))
        limit = check.check_limit(options.get("limit"))
        return flt, offset, limit

    @_keywords(Filters, include_private=True)
    def count(
        self,
        **filters: Unpack[Filters],
    ) -> int:
        """How many records match the filter (the keywords of :meth:`list` but the page)."""
        return int(self._engine.count(self._filter_args("Store.count", filters)))

    def _filter_args(self, method: str, filters: Mapping[str, Any]) -> Filter:
        _only_keywords(method, filters, Filters)
        self._check_open()
        return check.build_filter(filters)

    def __len__(self) -> int:
        return self.count()

    def child_scopes(self, scope: Any = "/") -> builtins.list[str]:
        """The direct child scopes of ``scope`` that hold records (at or below them)."""
        self._check_open()
        return builtins.list(self._engine.child_scopes(check.scope_argument(scope)))

    @_keywords(Filters, include_private=True)
    def category_counts(
        self,
        **filters: Unpack[Filters],
    ) -> dict[str, int]:
        """How many records matching the filter (the keywords of :meth:`list` but the
        page) have each category."""
        return dict(self._engine.category_counts(self._filter_args("Store.category_counts", filters)))

    def scope_info(self, scope: Any = "/") -> ScopeInfo:
        """A summary of the records at or below ``scope``."""
        self._check_open()
        return _scope_info(self._engine.scope_info(check.scope_argument(scope)))

    def stats(self) -> dict[str, Any]:
        """Engine, record count, dimension, per-operation latencies in microseconds
        (``operations``: {name: {count, p50_us, p95_us, p99_us, max_us, ...}}) and the
        result cache (``cache``: {capacity, entries, hits, misses, hit_rate}) and the
        search index (``index``: {mode, active ("hnsw" while searches use the graph, else
        "exact"), ef_search, serving_ef (the width graph searches run at now, None while
        exact), graph_nodes, pending (records scanned exactly beside the graph),
        graph_bytes, builds, building, graph_min_values, recall}) and the store image (``fast_open``:
        {enabled, opened_from_image, rejected: why the image was found damaged at open,
        or None}); ``index["graph_file_rejected"]`` says why the saved graph was.
        ``storage`` is the durable backend: {backend: "memory", "sqlite" or
        "postgresql", location}, and for PostgreSQL also schema, store, pool ({max_size,
        open, idle, waiting, timeout_s}), listening (whether this process's LISTEN
        connection is up), max_staleness_s and reconnect_timeout_s; never a password.
        ``index["recall"]`` is the recall guard's report: {target, verdict ("graph": the
        graph may serve "auto" searches, "exact": it may not, "unknown": not judged yet),
        ladder (per width tried: {ef, samples, mean and stderr of recall@k, graph_ms}),
        exact_ms, offered, evaluated, dropped, sample_every, auditor_share (its CPU time
        over its lifetime, as a share of one core), bootstraps, bootstrap_ms}."""
        self._check_open()
        raw = dict(self._engine.stats())
        return self._stats_view(raw, int(self._engine.count(Filter())))

    def _stats_view(self, raw: dict[str, Any], records: int) -> dict[str, Any]:
        """stats() from the engine's statistics and its record count."""
        nested = raw.get("operations")
        if isinstance(nested, dict):
            # The engine wraps its per-operation table with facts of its own (memory,
            # disk, SIMD ISA): keep those next to ours.
            operations = dict(nested)
            extras = {
                key: value
                for key, value in raw.items()
                if key not in ("operations", "engine", "records", "dim")
            }
        else:
            operations, extras = raw, {}
        extras.setdefault("cache", dict(_NO_CACHE))
        path = self.path  # the reference engine: a SQLite file, or in memory
        extras.setdefault(
            "storage", {"backend": "sqlite", "location": path} if path is not None else {"backend": "memory"}
        )
        extras.setdefault("damaged", _damaged_records(self._engine))
        extras.setdefault("read_only", bool(getattr(self._engine, "read_only", False)))
        extras.setdefault("precision", "f32")
        extras.setdefault("fast_open", {"enabled": False, "opened_from_image": False, "rejected": None})
        extras.setdefault(
            "index",
            {
                "mode": self._index,
                "ef_search": self._ef_search,
                **_NO_GRAPH,
                "graph_min_values": self._graph_min_values,
                "recall": _exact_recall(self._recall_target),
            },
        )
        extras.setdefault("planner", {"policy": "cpu", "routes": {}})
        extras.setdefault("device", None)
        extras["planner"] = {**extras["planner"], "no_device": self._device_note}
        return {
            "engine": self._engine_name,
            "records": records,
            "dim": self._engine.dim,
            **extras,
            "operations": operations,
        }

    # ----------------------------------------------------------------- lifecycle

    def set_index(
        self,
        index: IndexMode | None = None,
        *,
        ef_search: int | None = None,
        recall_target: float | None = None,
        graph_min_values: int | None = None,
    ) -> None:
        """Changes the index mode, the graph search width and/or the recall target of this
        open store (the same values as :func:`ferromem.open`; None keeps the current one).
        ``graph_min_values``: the store size (records x dimensions) from which
        index="auto" builds a graph (default 2^25 = 33,554,432; 0: at any size). A graph
        the new mode wants is built in the background; cached results are dropped; a new
        ``ef_search`` (the recall guard's ladder of widths) makes the guard judge the graph
        anew."""
        index = self._index if index is None else check.check_index(index)
        ef_search = self._ef_search if ef_search is None else check.check_ef_search(ef_search)
        recall_target = (
            self._recall_target if recall_target is None else check.check_recall_target(recall_target)
        )
        graph_min_values = (
            self._graph_min_values
            if graph_min_values is None
            else check.check_graph_min_values(graph_min_values)
        )
        self._check_open()
        indexed = _indexed(self._engine)
        if indexed is not None:  # the reference engine always scans exactly
            indexed.set_index(
                index, ef_search, recall_target=recall_target, graph_min_values=graph_min_values
            )
        self._index, self._ef_search = index, ef_search
        self._recall_target, self._graph_min_values = recall_target, graph_min_values

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Blocks until the background graph build covers every record (when the index
        mode wants a graph at this size); False if ``timeout`` seconds passed first.
        Searches never need this: they scan exactly whatever the graph does not cover.
        Useful before timing searches, and in tests."""
        timeout = check.check_timeout(timeout)
        self._check_open()
        indexed = _indexed(self._engine)
        if indexed is None:  # the reference engine has no graph
            return True
        return bool(indexed.wait_for_index(timeout))

    def close(self) -> None:
        """Closes the store; closing twice is harmless. Further calls raise
        StoreClosedError."""
        if self._mark_closed():
            self._engine.close()

    def _mark_closed(self) -> bool:
        """Marks the store closed; True when its engine is this process's to close."""
        if self._closed:
            return False
        self._closed = True
        if self._forks != _forks:
            # The parent's engine: left alone (see _forks), kept alive.
            _inherited_engines.append(self._engine)
            return False
        return True

    def __enter__(self) -> Store:
        self._check_open()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed or self._forks != _forks:
            return f"<ferromem.Store location={self.location!r} engine={self._engine_name} closed>"
        return f"<ferromem.Store location={self.location!r} engine={self._engine_name} dim={self.dim}>"
