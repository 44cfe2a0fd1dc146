"""CrewAI 0.x memory storages backed by ferromem: :class:`RAGStorage` and :class:`LTMStorage`.

For CrewAI 0.x (tested with 0.203.2, its last release)::

    from crewai.memory import EntityMemory, LongTermMemory, ShortTermMemory
    from ferromem.crewai.v0 import LTMStorage, RAGStorage

    crew = Crew(
        agents=..., tasks=..., memory=True,
        short_term_memory=ShortTermMemory(storage=RAGStorage("short_term", embedder=embed)),
        entity_memory=EntityMemory(storage=RAGStorage("entities", embedder=embed)),
        long_term_memory=LongTermMemory(storage=LTMStorage()),
    )

This module imports nothing from CrewAI when it is imported; CrewAI 0.x is used only to
build an embedder from a CrewAI embedder config and to find CrewAI's default storage
directory, when those are asked for.

**RAGStorage** replaces ``crewai.memory.storage.rag_storage.RAGStorage`` (short-term,
entity and external memory). Each collection (``memory_<type>`` or
``memory_<type>_<agent roles>``, CrewAI's names) is one ferromem store file, by default in
CrewAI's storage directory (``db_storage_path()``: the user data directory of the app
named ``$CREWAI_STORAGE_DIR``, else of the current directory's name), beside CrewAI's own
``chroma.sqlite3``. Where it differs from CrewAI's Chroma-backed storage:

- **Errors are raised**, as ferromem's typed errors, instead of being logged and turned
  into a silent no-op (CrewAI's save) or an empty result (CrewAI's search): a memory that
  cannot be stored or searched says so. CrewAI's agents already catch save errors.
- **Metadata** may be any JSON object (lists and nested objects too; Chroma takes only
  scalars and drops keys whose value is None); a value JSON cannot represent exactly
  raises :class:`~ferromem.exceptions.InvalidMetadataError`, a TypeError.
- **Filters are exact and applied before ranking**, so a search returns min(limit,
  matches) results. A filter is ``{key: value, ...}`` (all must hold, compared with
  Python equality like CrewAI 1.x's backends, so ``True`` matches ``1``, see
  :mod:`ferromem.crewai._filters`; Chroma refuses more than one key),
  ``{key: {"$eq": value}}`` or ``{"$and": [filter, ...]}``; any other operator raises
  :class:`~ferromem.exceptions.InvalidFilterError`.
- **allow_reset=False** makes :meth:`RAGStorage.reset` raise
  :class:`ResetNotAllowedError`; CrewAI 0.203.2 stores the flag and ignores it.
- **A deep copy** (``Crew.copy()``, used by ``kickoff_for_each``, ``train`` and ``test``)
  shares the store; CrewAI's own storage cannot be deep-copied once it has an embedder.
- An embedder is not called at construction (CrewAI embeds the word "test" to check it).
- **Zero embeddings**: a value whose embedding is all zeros is stored (and reset) like
  any other but never returned by a search (a zero vector has no cosine with anything);
  a zero query gives []. Metadata keys starting with ``"\x00ferromem."`` are reserved.
- **close()** releases the store's file and threads; the next call reopens it.

Ids, scores and result dicts are CrewAI's: the id of a saved value is the BLAKE2b hash of
its text and metadata, so saving the same value and metadata again replaces it; a search
returns ``[{"id", "content", "metadata", "score"}, ...]``, best first, where ``score`` is
``(1 + cosine) / 2`` clamped to [0, 1] (CrewAI's conversion of Chroma's cosine distance),
so ``score_threshold`` (default 0.6; 0 or None means none) keeps its meaning.

**LTMStorage** replaces ``LTMSQLiteStorage`` (long-term memory): ``load`` returns exactly
what CrewAI's does, in the same order, and several processes may write at once.

**In PostgreSQL.** Either storage also takes a ``postgresql://`` URL where it takes a path:
the store is the one the URL's ``store`` option names, else the collection's name
(RAGStorage; a name of 200 characters or more is cut and ends in ``~`` and its SHA-256)
or ``long_term_memory_storage`` (LTMStorage), shared by every process and host using the
URL. Nothing is written on local disk, and the password is never shown (``path`` and
``db_path`` hold the URL without it).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import _validate as check
from .._location import DatabaseLocation, store_path
from .._typing import Durability
from ..exceptions import (
    DimensionMismatchError,
    FerromemError,
    InvalidInputError,
)
from ..store import Store
from ._embedding import (
    NO_EMBEDDING_KEY,
    _DefaultEmbedder,
    check_reserved_keys,
    embedding_matrix,
    is_zero_query,
    placeholder_rows,
    search_ranked,
)
from ._filters import chroma_where, filter_ids, split_metadata_filter
from ._names import (
    STORE_SUFFIX,
    collection_file_name,
    database_store_name,
    location_argument,
    open_at,
)

__all__ = [
    "RAGStorage",
    "LTMStorage",
    "ResetNotAllowedError",
    "default_storage_dir",
    "collection_file_name",
]

LTM_STORE_NAME = "long_term_memory_storage"
LTM_FILE_NAME = LTM_STORE_NAME + STORE_SUFFIX

# The engine compares its float32 cosines with min_score; the threshold is then applied
# exactly, to the reported score. The margin keeps rounding in the engine from dropping a
# result the exact test keeps (that test only removes results from the tail).
_THRESHOLD_MARGIN = 1e-6


class ResetNotAllowedError(FerromemError, PermissionError):
    """``reset()`` was called on a storage created with ``allow_reset=False``."""


def default_storage_dir() -> Path:
    """CrewAI 0.x's storage directory, ``crewai.utilities.paths.db_storage_path()``."""
    try:
        from crewai.utilities.paths import db_storage_path
    except ImportError as exc:
        raise ImportError(
            f"the default storage location is CrewAI's; install crewai 0.x or pass a path ({exc})"
        ) from exc
    return Path(db_storage_path())


def _sanitize_role(role: str) -> str:
    """CrewAI's ``RAGStorage._sanitize_role``: the role as it appears in collection names."""
    return role.replace("\n", "").replace(" ", "_").replace("/", "_")


def _openai_default() -> Any:
    """What CrewAI 0.x embeds with when nothing is configured: its default ChromaDBConfig's
    OpenAI ``text-embedding-3-small`` with ``$OPENAI_API_KEY``."""
    from chromadb.utils.embedding_functions.openai_embedding_function import (
        OpenAIEmbeddingFunction,
    )

    return OpenAIEmbeddingFunction(api_key=os.getenv("OPENAI_API_KEY"), model_name="text-embedding-3-small")


def _is_embeddings_provider(value: Any) -> bool:
    # A provider instance can only exist once CrewAI's module is loaded: no import needed.
    module = sys.modules.get("crewai.rag.core.base_embeddings_provider")
    return module is not None and isinstance(value, module.BaseEmbeddingsProvider)


def _resolve_embedder(spec: Any) -> Callable[..., Any]:
    """A callable texts -> vectors from a callable or a CrewAI embedder config (a
    ``{"provider": ..., "config": ...}`` dict or a provider instance), built the way CrewAI
    0.x builds it (``crewai.rag.embeddings.factory.build_embedder``)."""
    if spec is None:
        return _DefaultEmbedder(_openai_default)
    if callable(spec) and not isinstance(spec, type):
        return spec
    if isinstance(spec, Mapping) or _is_embeddings_provider(spec):
        from crewai.rag.embeddings.factory import build_embedder

        return build_embedder(spec)
    raise InvalidInputError(
        "embedder must be a callable (list of texts -> vectors) or a CrewAI embedder "
        "config such as {'provider': 'openai', 'config': {'model_name': "
        f"'text-embedding-3-small'}}, got {type(spec).__name__}"
    )


def _document_id(content: str, metadata: dict[str, Any], metadata_json: str) -> str:
    """CrewAI 0.x's id of a saved value (``crewai.rag.chromadb.utils``): BLAKE2b-256 of the
    text, with ``"|" + json.dumps(metadata, sort_keys=True)`` appended when there is
    metadata. The JSON is taken of the validated metadata, so NumPy scalars hash as the
    numbers they are stored as."""
    text = content
    if metadata:
        text = f"{content}|{json.dumps(json.loads(metadata_json), sort_keys=True)}"
    return hashlib.blake2b(text.encode(), digest_size=32).hexdigest()


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    return int(value)


def _resolve_location(
    path: str | os.PathLike | None, file_name: str, store_name: str, name: str = "path"
) -> str | DatabaseLocation:
    """``path`` itself when it names a ``.ferro`` file, else ``file_name`` in the directory
    ``path`` (CrewAI's storage directory when None); for a ``postgresql://`` URL, the store
    its ``store`` option names, else ``store_name``."""
    if path is None:
        return str(default_storage_dir() / file_name)
    where = location_argument(path, name)
    if isinstance(where, DatabaseLocation):
        return where if where.store is not None else where.with_store(store_name)
    base = Path(where)
    return str(base if base.suffix == STORE_SUFFIX else base / file_name)


def _shown_path(path: Any) -> Any:
    """``path`` as kept on a storage: a ``postgresql://`` URL without its password."""
    if isinstance(path, str):
        where = store_path(path)
        if isinstance(where, DatabaseLocation):
            return where.shown
    return path


class _SharedOnCopy:
    """Deep copies share the store. CrewAI deep-copies memories in ``Crew.copy()``, and
    the copy is the same memory: it reads and writes the same file through the same
    handle (a store handle cannot be copied). Closing either closes the handle; the next
    call on either opens the file again."""

    def _open(self, location: str | DatabaseLocation, **options: Any) -> None:
        self._handle = open_at(location, **options)
        self._where = location if isinstance(location, DatabaseLocation) else self._handle.path
        self._options = options
        self._reopen_lock = threading.Lock()

    @property
    def _store(self) -> Store:
        """The open store, opened again (once, whatever the threads) after close()."""
        handle = self._handle
        if handle.closed:
            with self._reopen_lock:
                if self._handle.closed:
                    self._handle = open_at(self._where, **self._options)
                handle = self._handle
        return handle

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        clone = copy.copy(self)
        memo[id(self)] = clone
        return clone

    @property
    def store(self) -> Store:
        """The underlying :class:`ferromem.Store`."""
        return self._store

    def close(self) -> None:
        """Closes the store, releasing its file and threads; a later call reopens it.
        Idempotent."""
        with self._reopen_lock:
            if not self._handle.closed:
                self._handle.close()


class RAGStorage(_SharedOnCopy):
    """CrewAI 0.x ``RAGStorage`` on a ferromem store file (see the module docstring).

    ``type``, ``allow_reset``, ``embedder_config``, ``crew``: as CrewAI's RAGStorage
    (``type`` and the roles of ``crew.agents`` name the collection). ``embedder``: a
    callable list[str] -> vectors (one per text, a matrix or a list) or a CrewAI embedder
    config; give it or ``embedder_config``, not both; with neither, CrewAI's default
    (OpenAI ``text-embedding-3-small``), built on first use. A callable's ``embed_query``,
    when it has one, embeds search queries, as Chroma does. ``path``: a directory for the
    collection's file (default CrewAI's storage directory), a ``.ferro`` file, or a
    ``postgresql://`` URL (the store of its ``store`` option, else the collection's name).
    ``durability``: "normal" (writes survive a process crash) or "full" (also power loss).
    """

    def __init__(
        self,
        type: str,  # noqa: A002 - CrewAI's parameter name
        allow_reset: bool = True,
        embedder_config: Any = None,
        crew: Any = None,
        path: str | os.PathLike | None = None,
        *,
        embedder: Any = None,
        durability: Durability = "normal",
    ) -> None:
        if not isinstance(type, str) or not type:
            raise InvalidInputError(f"type must be a non-empty str such as 'short_term', got {type!r}")
        if embedder is not None and embedder_config is not None:
            raise InvalidInputError("pass embedder or embedder_config, not both")
        self.type = type
        self.allow_reset = check.check_bool(allow_reset, "allow_reset")
        self.embedder_config = embedder_config
        self.crew = crew
        self.path = _shown_path(path)
        self.agents = "_".join(_sanitize_role(agent.role) for agent in crew.agents) if crew else ""
        self.collection_name = f"memory_{type}_{self.agents}" if self.agents else f"memory_{type}"
        self.embedder = _resolve_embedder(embedder if embedder is not None else embedder_config)
        where = _resolve_location(
            path, collection_file_name(self.collection_name), database_store_name(self.collection_name)
        )
        self._open(where, durability=durability)

    def _embed(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        return embedding_matrix(self.embedder, texts, query=query)

    def _dimension_mismatch(self, exc: DimensionMismatchError) -> DimensionMismatchError:
        return DimensionMismatchError(
            f"embedding dimension mismatch: {self._store.location} holds {exc.expected}-dimensional "
            f"vectors but the embedder returned {exc.got}-dimensional ones; use the embedder "
            "the memory was built with, or reset() it",
            exc.expected,
            exc.got,
        )

    def save(self, value: Any, metadata: dict[str, Any] | None) -> None:
        """Stores ``value`` (a str) with its metadata; the same value and metadata saved
        again replace the earlier record, as in CrewAI."""
        content = check.check_text(value, "value")
        metadata = {} if metadata is None else metadata
        metadata_json = check.metadata_json(metadata)
        check_reserved_keys(metadata, "metadata")
        doc_id = _document_id(content, metadata, metadata_json)
        vectors, [stored] = placeholder_rows(self._embed([content]), [metadata])
        try:
            self._store.upsert(doc_id, vectors[0], contents=content, metadata=stored)
        except DimensionMismatchError as exc:
            raise self._dimension_mismatch(exc) from exc

    def search(
        self,
        query: str,
        limit: int = 5,
        filter: dict[str, Any] | None = None,  # noqa: A002 - CrewAI's parameter name
        score_threshold: float | None = 0.6,
    ) -> list[dict[str, Any]]:
        """The ``limit`` records most similar to ``query`` among those matching
        ``filter``, best first, as CrewAI's ``{"id", "content", "metadata", "score"}``
        dicts with ``score >= score_threshold`` (0 or None: no threshold)."""
        if not isinstance(query, str):
            raise InvalidInputError(f"query must be a str, got {type(query).__name__}")
        k = _check_int(limit, "limit")
        if k < 1:
            raise InvalidInputError(f"limit must be >= 1, got {k}")
        threshold = None if score_threshold is None else check.check_real(score_threshold, "score_threshold")
        merged = chroma_where(filter, "filter")
        where, residual = split_metadata_filter(merged or None)
        if merged is None or self._store.dim is None:
            return []
        criteria: dict[str, Any] = {"where": where}
        if residual:
            criteria["ids"] = filter_ids(self._store, residual, where=where)
            if not criteria["ids"]:
                return []
        vector = self._embed([query], query=True)[0]
        store = self._store
        if is_zero_query(vector):
            # No direction, no cosine: nothing is similar (the dimension is still checked).
            if vector.shape[0] != store.dim:
                raise self._dimension_mismatch(DimensionMismatchError("", store.dim, int(vector.shape[0])))
            return []
        min_score = 2.0 * threshold - 1.0 - _THRESHOLD_MARGIN if threshold else None
        try:
            records, cosines = search_ranked(store, vector, k, min_score=min_score, **criteria)
        except DimensionMismatchError as exc:
            raise self._dimension_mismatch(exc) from exc
        results: list[dict[str, Any]] = []
        for record, cosine in zip(records, cosines):
            score = min(1.0, max(0.0, (1.0 + cosine) / 2.0))
            # None: deleted by another thread since the search; a placeholder (a zero
            # embedding) never ranks.
            if record is None or NO_EMBEDDING_KEY in record.metadata or (threshold and score < threshold):
                continue
            if len(results) == k:
                break
            results.append(
                {
                    "id": record.id,
                    "content": record.content,
                    "metadata": record.metadata,
                    "score": score,
                }
            )
        return results

    def reset(self) -> None:
        """Deletes every record of the collection (its embedding dimension is free again).
        Raises :class:`ResetNotAllowedError` when created with ``allow_reset=False``."""
        if not self.allow_reset:
            raise ResetNotAllowedError(f"the {self.type} memory storage was created with allow_reset=False")
        self._store.reset()

    def __repr__(self) -> str:
        return f"RAGStorage(type={self.type!r}, path={self._store.location!r})"


# Field names of an LTMStorage record's stored metadata. The caller's metadata is nested
# under its own key, so none of its keys can clash with these.
_TASK = "task_description"
_DATETIME = "datetime"
_SCORE = "score"
_METADATA = "metadata"
# Long-term memory is looked up by exact task description, never by similarity, but every
# ferromem record has a vector: all of them get this one, of dimension 1.
_LTM_VECTOR = [1.0]

_stamp_lock = threading.Lock()
_last_stamp = 0


def _ltm_id() -> str:
    """A new entry's id; ids sort in save order, the last tie-break of CrewAI's SQL (its
    rowids). The stamp is wall-clock nanoseconds made strictly increasing within the
    process, so saves order even where the clock is coarse or steps back; the random
    suffix keeps ids of different processes apart."""
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(time.time_ns(), _last_stamp + 1)
        stamp = _last_stamp
    return f"{stamp:020d}-{uuid.uuid4().hex[:16]}"


class LTMStorage(_SharedOnCopy):
    """CrewAI 0.x ``LTMSQLiteStorage`` on a ferromem store file.

    ``db_path``: the store file (default ``long_term_memory_storage.ferro`` in CrewAI's
    storage directory, beside CrewAI's ``long_term_memory_storage.db``), or a
    ``postgresql://`` URL (the store of its ``store`` option, else
    ``long_term_memory_storage``); the attribute holds the URL without its password. ``durability``:
    "normal" (writes survive a process crash) or "full" (also power loss). Every save is
    one transaction, so processes may save to one file at once and nothing is lost.
    """

    def __init__(
        self, db_path: str | os.PathLike | None = None, *, durability: Durability = "normal"
    ) -> None:
        if db_path is None:
            where: str | DatabaseLocation = str(default_storage_dir() / LTM_FILE_NAME)
        else:
            where = location_argument(db_path, "db_path")
            if isinstance(where, DatabaseLocation) and where.store is None:
                where = where.with_store(LTM_STORE_NAME)
        self._open(where, dim=1, durability=durability)
        self.db_path = self._store.path or self._store.location

    def save(
        self,
        task_description: str,
        metadata: dict[str, Any],
        datetime: str,
        score: int | float | None,
    ) -> None:
        """Appends one entry. ``datetime`` is a str (CrewAI passes ``str(time.time())``);
        ``score`` a number, or None, and comes back as a float, as from SQLite's REAL."""
        task = check.check_text(task_description, "task_description")
        when = check.check_text(datetime, "datetime")
        value = None if score is None else check.check_real(score, "score")
        check.metadata_json(metadata)
        self._store.add(
            _ltm_id(),
            _LTM_VECTOR,
            contents=task,
            metadata={_TASK: task, _DATETIME: when, _SCORE: value, _METADATA: metadata},
        )

    def load(self, task_description: str, latest_n: int) -> list[dict[str, Any]] | None:
        """The ``latest_n`` entries of this exact task description as
        ``[{"metadata", "datetime", "score"}, ...]``, or None when there are none.

        CrewAI's SQL order: ``datetime`` descending compared as text, then ``score``
        ascending with None first, then save order. A negative ``latest_n`` means all, as
        SQLite's ``LIMIT -1``."""
        task = check.check_text(task_description, "task_description")
        n = _check_int(latest_n, "latest_n")
        rows = [
            record.metadata for record in sorted(self._store.list(where={_TASK: task}), key=lambda r: r.id)
        ]
        # Python's sort is stable (also with reverse=True): the later keys break the ties
        # of the earlier ones.
        rows.sort(key=lambda m: (m[_SCORE] is not None, m[_SCORE] or 0.0))
        rows.sort(key=lambda m: m[_DATETIME], reverse=True)
        if n >= 0:
            rows = rows[:n]
        if not rows:
            return None
        return [{"metadata": m[_METADATA], "datetime": m[_DATETIME], "score": m[_SCORE]} for m in rows]

    def reset(self) -> None:
        """Deletes every entry."""
        self._store.clear()

    def __repr__(self) -> str:
        return f"LTMStorage(db_path={self.db_path!r})"
