"""CrewAI 1.x knowledge (RAG) storage backed by ferromem: :class:`RagClient`.

:class:`RagClient` implements CrewAI's RAG ``BaseClient`` protocol
(``crewai.rag.core.base_client``), sync and async, and behaves like CrewAI's
``ChromaDBClient`` wherever CrewAI relies on it. :class:`KnowledgeStorage` is CrewAI's
knowledge storage on a RagClient. To plug them in::

    from crewai.knowledge.storage.factory import set_knowledge_storage_factory
    from crewai.rag.factory import register_rag_client_factory
    set_knowledge_storage_factory(knowledge_storage_factory)    # Knowledge(...) uses ferromem
    register_rag_client_factory("ferromem", create_rag_client)  # create_client(RagConfig())
    register_rag_client_factory("chromadb", create_rag_client)  # ChromaDBConfig -> ferromem

(``ferromem.crewai.install()`` does this.)

**Layout.** A client owns one directory (default ``$CREWAI_STORAGE_DIR/knowledge_ferromem``,
else CrewAI's data directory ``/knowledge_ferromem``). Each collection is its own ferromem
store file in it, so collections may have different embedding dimensions. The file name is
the collection name percent-encoded to lower-case ASCII letters, digits, ``_`` and ``-``
(everything else, upper-case letters included, becomes ``%XX`` of its UTF-8 bytes), so a
name can never leave the directory and distinct names get distinct files even on
case-insensitive file systems; a name too long for a file name is cut and ends in ``~``
and its SHA-256 (``~`` never occurs otherwise). A collection exists while its file does.
Stores are opened on first use and kept open until :meth:`RagClient.close`; several
threads may share one client, and several clients or processes one directory. Deleting a
collection removes its files; every client notices at its next call on that collection.

**In PostgreSQL.** Given a ``postgresql://`` URL instead of a directory, a client keeps
each collection in a store of that database named ``<prefix>/<collection>``: the prefix is
the URL's ``store`` option (at most 100 characters, without ``/``), else ``knowledge``.
Every client, process and host given the same URL and prefix shares the collections;
nothing is written on local disk and no folder lock is needed (the database serialises
the creation of a name: of two clients creating one collection at once, one gets
CollectionExistsError). A name that cannot be a store name as it is (``<prefix>/<name>``
of 200 characters or more, or holding NUL or a lone surrogate) is cut and ends in ``~``
and its SHA-256, exactly 200 characters long, so distinct names stay distinct stores.
``reset()`` drops every store of the prefix (``ferromem.postgres.list_stores``,
``drop_store``); a collection deleted by another client is noticed by this one when a
call on it meets the deletion (at once for a write; for a search, within the URL's
``max_staleness``), and the call then proceeds on the collection as it is now (a write
creates it again, a search of a collection that no longer exists gives []).

**Documents** are upserted exactly like ``ChromaDBClient.add_documents``: the id is
``doc_id``, else ``metadata["doc_id"]``, else the SHA-256 of the content (with
``"|" + json.dumps(metadata, sort_keys=True)`` appended when there is metadata), so adding
the same content again replaces it; a list of metadata dicts means its first one; an id
repeated in one call keeps its first position and its last content. ``batch_size``
documents are embedded and written per transaction, so a failure leaves the earlier
batches written, as with ChromaDB; every document is checked before the first batch.

**Scores** are on the scale of CrewAI's Chroma client on its (default) cosine collections:
``score = (1 + cosine) / 2``, clamped to [0, 1], so 1 is the same direction, 0.5 orthogonal
and 0 opposite, and ``score_threshold`` values tuned for ChromaDB keep their meaning. The
threshold is applied in the engine as ``min_score = 2 * threshold - 1`` on the cosine; a
threshold of 0 or None, as in Chroma, filters nothing.

**Metadata filters** are exact and applied before ranking, so a search returns
min(limit, matching documents) results (ChromaDB's HNSW index can return fewer). A filter
is CrewAI's ``{key: value, ...}`` (Python equality, as CrewAI compares metadata; see
:mod:`ferromem.crewai._filters`), or the Chroma operator forms ``{key: {"$eq": value}}``
and ``{"$and": [filter, ...]}``; any other operator raises
:class:`~ferromem.exceptions.InvalidFilterError`.

**Zero embeddings.** A document whose embedding is all zeros (what some embedders give
for empty or odd text) is stored, counted and deleted with its collection like any
other, but never returned by a search: a zero vector has no direction, so it has no
cosine with any query. A zero query embedding, likewise, gives [] (its dimension is
still checked). Metadata keys starting with ``"\x00ferromem."`` are reserved.

**close()** releases the open stores; any later call reopens what it needs, so a client
can be closed whenever its files should be let go.

Differences from ChromaDBClient: searching a collection that does not exist returns []
without creating it (Chroma creates it); metadata may be any JSON object (Chroma only
takes scalars); errors are ferromem's typed errors, each also the builtin the protocol
names (ValueError, TypeError).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, cast, overload

import numpy as np
from crewai.knowledge.storage.base_knowledge_storage import BaseKnowledgeStorage
from crewai.rag.config.base import BaseRagConfig
from crewai.rag.core.base_client import BaseClient
from crewai.rag.core.base_embeddings_provider import BaseEmbeddingsProvider
from crewai.rag.embeddings.factory import build_embedder
from crewai.rag.types import BaseRecord, SearchResult
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as pyd_dataclass

from .. import _location
from .. import _validate as check
from .. import postgres as _postgres
from .. import store as _store
from .._location import DatabaseLocation, shown
from .._typing import Durability
from ..aio import async_store
from ..exceptions import (
    DimensionMismatchError,
    FerromemError,
    InvalidInputError,
    InvalidMetadataError,
    NotAStoreError,
    NotFoundError,
    StorageError,
)
from ._embedding import (
    NO_EMBEDDING_KEY,
    _DefaultEmbedder,
    asearch_ranked,
    check_reserved_keys,
    embedding_matrix,
    is_zero_query,
    placeholder_rows,
    search_ranked,
)
from ._filters import afilter_ids, chroma_where, filter_ids, split_metadata_filter
from ._names import (
    STORE_SUFFIX,
    collection_file_name,
    database_store_name,
    location_argument,
    open_at,
)

__all__ = [
    "RagClient",
    "RagConfig",
    "KnowledgeStorage",
    "create_rag_client",
    "knowledge_storage_factory",
    "default_knowledge_path",
    "collection_file_name",
    "CollectionExistsError",
    "CollectionNotFoundError",
    "InvalidDocumentError",
]

# What CrewAI embeds with when nothing is configured (ChromaDBConfig's default).
DEFAULT_EMBEDDER: dict[str, Any] = {
    "provider": "openai",
    "config": {"model_name": "text-embedding-3-small"},
}

# .hnsw: the saved graph index; .reserve: room for deletes on a full disk.
_COMPANIONS = ("", "-wal", "-shm", ".hnsw", ".reserve")
_UNSET: Any = object()
_T = TypeVar("_T")

# In a database: the prefix of the collections' store names when the URL has no ``store``
# option, and the longest one allowed (which leaves 34 readable characters of a long
# collection name before its digest).
DEFAULT_DATABASE_PREFIX = "knowledge"
_MAX_PREFIX = 100


class _Opened(NamedTuple):
    """A collection's open store. ``identity``: (st_dev, st_ino) of its file when opened
    (None in a database); ``writable``: False for a database store opened read-only by a
    search (which must not create the collection)."""

    store: _store.Store
    identity: tuple[int, int] | None
    writable: bool


class CollectionExistsError(FerromemError, ValueError):
    """``create_collection`` was given the name of an existing collection."""


class CollectionNotFoundError(NotFoundError, ValueError):
    """``delete_collection`` was given the name of a collection that does not exist."""


class InvalidDocumentError(InvalidInputError, TypeError):
    """A document is not a dict with a str ``content``."""


def default_knowledge_path() -> Path:
    """``$CREWAI_STORAGE_DIR/knowledge_ferromem``, else CrewAI's platform data directory
    ``/knowledge_ferromem`` (beside CrewAI's own ChromaDB files)."""
    storage_dir = os.environ.get("CREWAI_STORAGE_DIR")
    if storage_dir:
        return Path(storage_dir) / "knowledge_ferromem"
    from crewai_core.paths import db_storage_path

    return Path(db_storage_path()) / "knowledge_ferromem"


def _resolve_embedding_function(value: Any) -> Callable[..., Any]:
    """A callable texts -> vectors from a callable or a CrewAI embedder config."""
    if value is None:
        return _DefaultEmbedder(lambda: build_embedder(DEFAULT_EMBEDDER))
    if callable(value) and not isinstance(value, type):
        return value
    if isinstance(value, (dict, BaseEmbeddingsProvider)):
        return build_embedder(value)
    if isinstance(value, type) and issubclass(value, BaseEmbeddingsProvider):
        # A provider class whose fields all have defaults (the base class's do not).
        provider_class: Any = value
        return build_embedder(provider_class())
    raise InvalidInputError(
        "embedding_function must be a callable (list of texts -> vectors) or a CrewAI "
        f"embedder config such as {DEFAULT_EMBEDDER!r}, got {type(value).__name__}"
    )


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _document_id(doc: Mapping[str, Any], metadata: Any) -> str:
    """ChromaDB's id rule (crewai.rag.chromadb.utils._prepare_documents_for_chromadb)."""
    if "doc_id" in doc:
        return str(doc["doc_id"])
    if isinstance(metadata, dict) and "doc_id" in metadata:
        return str(metadata["doc_id"])
    text = doc["content"]
    if metadata:
        try:
            text = f"{text}|{json.dumps(metadata, sort_keys=True)}"
        except (TypeError, ValueError) as exc:
            raise InvalidMetadataError(f"metadata is not JSON serializable: {exc}") from exc
    return hashlib.sha256(text.encode()).hexdigest()


def _prepare_documents(
    documents: Any,
) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """(ids, contents, metadata) after checking every document; ids are unique."""
    if not isinstance(documents, (list, tuple)):
        raise InvalidDocumentError(f"documents must be a list of dicts, got {type(documents).__name__}")
    if not documents:
        raise InvalidInputError("documents must not be empty")
    positions: dict[str, int] = {}
    ids: list[str] = []
    texts: list[str] = []
    metadatas: list[dict[str, Any]] = []
    for i, doc in enumerate(documents):
        name = f"documents[{i}]"
        if not isinstance(doc, Mapping):
            raise InvalidDocumentError(
                f"{name} must be a dict with a 'content' str, got {type(doc).__name__}"
            )
        if "content" not in doc:
            raise InvalidDocumentError(f"{name} has no 'content'")
        content = doc["content"]
        if not isinstance(content, str):
            raise InvalidDocumentError(f"{name}['content'] must be a str, got {type(content).__name__}")
        check.check_text(content, f"{name}['content']")
        metadata = doc.get("metadata")
        if isinstance(metadata, list):
            stored = metadata[0] if metadata and metadata[0] else {}
        else:
            stored = metadata or {}
        check.metadata_json(stored, f"{name}['metadata']")
        check_reserved_keys(stored, f"{name}['metadata']")
        doc_id = check.check_id(_document_id(doc, metadata), f"{name} id")
        if doc_id in positions:
            at = positions[doc_id]
            texts[at], metadatas[at] = content, stored
        else:
            positions[doc_id] = len(ids)
            ids.append(doc_id)
            texts.append(content)
            metadatas.append(stored)
    return ids, texts, metadatas


def _database_prefix(database: DatabaseLocation) -> str:
    """The prefix of the collections' store names: the URL's ``store`` option, or
    ``knowledge``."""
    prefix = database.store
    if prefix is None:
        return DEFAULT_DATABASE_PREFIX
    if "/" in prefix or len(prefix) > _MAX_PREFIX:
        raise InvalidInputError(
            f"store={prefix!r}: a RagClient's URL names the prefix of its collections' stores "
            f"(<prefix>/<collection>), at most {_MAX_PREFIX} characters and without '/'"
        )
    return prefix


def _identity(file: str) -> tuple[int, int] | None:
    try:
        st = os.stat(file)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock shared by every process using this knowledge folder (released
    by the OS if the holder dies)."""
    fd = os.open(os.path.join(folder, ".ferromem-collections.lock"), os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class RagClient(BaseClient):
    """CrewAI RAG client (``crewai.rag.core.base_client.BaseClient``) on ferromem stores.

    ``path``: the directory of the collections (default :func:`default_knowledge_path`),
    or a ``postgresql://`` URL: the collections are then the stores ``<prefix>/<name>`` of
    that database, the prefix being the URL's ``store`` option, else ``knowledge`` (see
    the module docstring).
    ``embedding_function``: a callable list[str] -> vectors (a matrix, or one vector per
    text) or a CrewAI embedder config (a ``{"provider": ..., "config": ...}`` dict or a
    provider instance); None for CrewAI's default (OpenAI ``text-embedding-3-small``),
    built on first use. A client embeds with its ``embedding_function`` attribute: assign
    another callable to change it. The defaults are ``ChromaDBClient``'s. ``durability``:
    "normal" or "full" for the stores (see :func:`ferromem.open`).
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        embedding_function: Any = None,
        default_limit: int = 5,
        default_score_threshold: float = 0.6,
        default_batch_size: int = 100,
        durability: Durability = "normal",
    ) -> None:
        where = None if path is None else location_argument(path)
        self._database: DatabaseLocation | None = None
        self._path: Path | None = None
        if isinstance(where, DatabaseLocation):
            self._database = where
            self._prefix = _database_prefix(where)
        else:
            base = default_knowledge_path() if where is None else Path(where)
            self._path = Path(os.path.abspath(base))
        self.embedding_function = _resolve_embedding_function(embedding_function)
        self.default_limit = _check_int(default_limit, "default_limit")
        self.default_score_threshold = check.check_real(default_score_threshold, "default_score_threshold")
        self.default_batch_size = _check_int(default_batch_size, "default_batch_size")
        check.check_durability(durability)
        self._durability: Durability = durability
        self._lock = threading.Lock()
        self._stores: dict[str, _Opened] = {}

    # ------------------------------------------------------------ attributes

    @property
    def path(self) -> Path | None:
        """The directory holding the collections; None when they are in a database."""
        return self._path

    @property
    def location(self) -> str:
        """Where the collections are: the directory, or the database URL without its
        password (the form every message and repr shows)."""
        return self._database.shown if self._database is not None else str(self._path)

    @property
    def client(self) -> RagClient:
        """The protocol's underlying client: ferromem has none apart from the stores this
        object opens, so it is the RagClient itself."""
        return self

    def collection_path(self, collection_name: str) -> Path | None:
        """The store file of a collection (it exists once the collection does); None when
        the collections are in a database (see :meth:`collection_location`)."""
        if self._path is None:
            database_store_name(collection_name, self._prefix)  # the name's checks
            return None
        return self._path / collection_file_name(collection_name)

    def collection_location(self, collection_name: str) -> str:
        """Where a collection is kept: its store file, or the URL (without password) of
        its store in the database."""
        if self._database is None:
            return str(self.collection_path(collection_name))
        return self._database_store(collection_name).shown

    def _database_store(self, collection_name: str) -> DatabaseLocation:
        database = cast(DatabaseLocation, self._database)
        return database.with_store(database_store_name(collection_name, self._prefix))

    # ------------------------------------------------------------ stores

    @overload
    def _collection(self, collection_name: str, mode: Literal["get"]) -> _store.Store | None: ...

    @overload
    def _collection(self, collection_name: str, mode: Literal["open", "create"]) -> _store.Store: ...

    def _collection(
        self, collection_name: str, mode: Literal["get", "open", "create"]
    ) -> _store.Store | None:
        """The collection's open store. ``get``: None if the collection does not exist;
        ``open``: created if missing; ``create``: CollectionExistsError if it exists."""
        if self._database is not None:
            return self._database_collection(collection_name, mode)
        file = str(self.collection_path(collection_name))
        with self._lock:
            identity = _identity(file)
            cached = self._stores.get(collection_name)
            if cached is not None:
                if cached.identity == identity and mode != "create" and not cached.store.closed:
                    return cached.store
                if cached.identity != identity or cached.store.closed:
                    # Deleted (or deleted and created again) by another client or process.
                    cached.store.close()
                    del self._stores[collection_name]
            if mode == "get" and identity is None:
                return None
            if mode == "create":
                # Exclusive across processes: the name is checked and the store made under
                # a lock on a file of this folder. (Claiming the name with an empty file
                # no longer works: an empty file is never taken for a store.)
                try:
                    folder = cast(Path, self._path)
                    os.makedirs(folder, exist_ok=True)
                    with _folder_lock(folder):
                        if os.path.exists(file):
                            raise FileExistsError(file)
                        store = _store.open(file, durability=self._durability)
                except FileExistsError:
                    raise CollectionExistsError(
                        f"collection {collection_name!r} already exists; use "
                        "get_or_create_collection() to reuse it"
                    ) from None
                except OSError as exc:
                    raise StorageError(f"cannot create {file!r}: {exc}") from exc
                self._stores[collection_name] = _Opened(store, _identity(file), True)
                return store
            store = _store.open(file, durability=self._durability)
            self._stores[collection_name] = _Opened(store, _identity(file), True)
            return store

    def _database_collection(
        self, collection_name: str, mode: Literal["get", "open", "create"]
    ) -> _store.Store | None:
        """:meth:`_collection` in a database. A search opens the store read-only, so that
        it never creates a collection; a write reopens it for writing."""
        where = self._database_store(collection_name)
        with self._lock:
            cached = self._stores.get(collection_name)
            if cached is not None and (cached.store.closed or (mode == "open" and not cached.writable)):
                # Replaced, not closed: a search in another thread may still be reading
                # it; the handle goes with its last reference.
                del self._stores[collection_name]
                cached = None
            if mode == "create":
                # One statement that only one client can win: the name is unique.
                if not _postgres.create_store(where.url):
                    raise CollectionExistsError(
                        f"collection {collection_name!r} already exists; use "
                        "get_or_create_collection() to reuse it"
                    )
                if cached is not None:
                    # The store this client had open was dropped since: a handle of nothing.
                    del self._stores[collection_name]
                    cached = None
            if cached is not None:
                return cached.store
            if mode == "get":
                try:
                    store = open_at(where, durability=self._durability, read_only=True)
                except NotAStoreError:
                    return None
            else:
                store = open_at(where, durability=self._durability)
            self._stores[collection_name] = _Opened(store, None, mode != "get")
            return store

    def _forget(self, collection_name: str, store: _store.Store) -> None:
        """Forgets the collection's store if it is still ``store`` (a store dropped from the
        database). Not closed: other threads meeting the drop on it too must see
        NotAStoreError, which they retry, not StoreClosedError; it goes with its last
        reference."""
        with self._lock:
            cached = self._stores.get(collection_name)
            if cached is not None and cached.store is store:
                del self._stores[collection_name]

    @overload
    def _on_collection(
        self,
        collection_name: str,
        mode: Literal["get"],
        action: Callable[[_store.Store], _T],
        missing: _T,
    ) -> _T: ...

    @overload
    def _on_collection(
        self, collection_name: str, mode: Literal["open"], action: Callable[[_store.Store], _T]
    ) -> _T: ...

    def _on_collection(
        self,
        collection_name: str,
        mode: Literal["get", "open"],
        action: Callable[[_store.Store], _T],
        missing: Any = None,
    ) -> _T:
        """``action`` on the collection's store (``missing`` when ``get`` finds none). In a
        database, a store dropped by another client while this one had it open raises
        NotAStoreError when the call meets the deletion: the call is then made again on
        the collection as it is now (the file version notices by the file's identity)."""
        store = self._collection(collection_name, mode)
        if store is None:
            return cast(_T, missing)
        try:
            return action(store)
        except NotAStoreError:
            if self._database is None:
                raise
        self._forget(collection_name, store)
        store = self._collection(collection_name, mode)
        if store is None:
            return cast(_T, missing)
        return action(store)

    async def _aon_collection(
        self,
        collection_name: str,
        mode: Literal["get", "open"],
        action: Callable[[_store.Store], Awaitable[_T]],
        missing: Any = None,
    ) -> _T:
        """:meth:`_on_collection` with an awaited ``action``."""
        store = self._collection(collection_name, mode)
        if store is None:
            return cast(_T, missing)
        try:
            return await action(store)
        except NotAStoreError:
            if self._database is None:
                raise
        self._forget(collection_name, store)
        store = self._collection(collection_name, mode)
        if store is None:
            return cast(_T, missing)
        return await action(store)

    def _embed(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        return embedding_matrix(self.embedding_function, texts, query=query)

    @staticmethod
    def _dimension_mismatch(collection_name: str, exc: DimensionMismatchError) -> DimensionMismatchError:
        # CrewAI's KnowledgeStorage recognises this case by the words "dimension mismatch".
        return DimensionMismatchError(
            f"embedding dimension mismatch: collection {collection_name!r} holds "
            f"{exc.expected}-dimensional vectors but the embedding function returned "
            f"{exc.got}-dimensional ones; use the embedding model the collection was built "
            "with, or delete the collection (e.g. `crewai reset-memories -a`) and add the "
            "documents again",
            exc.expected,
            exc.got,
        )

    # ------------------------------------------------------------ BaseClient

    def create_collection(self, *, collection_name: str) -> None:
        """Creates an empty collection; CollectionExistsError (a ValueError) if it exists."""
        self._collection(collection_name, "create")

    def get_or_create_collection(self, *, collection_name: str) -> _store.Store:
        """The collection's :class:`ferromem.Store`, created if missing. The client owns
        it: close the client, not the store."""
        return self._collection(collection_name, "open")

    def add_documents(
        self,
        *,
        collection_name: str,
        documents: list[BaseRecord],
        batch_size: int | None = None,
    ) -> None:
        """Upserts the documents (creating the collection if needed), embedding and
        writing ``batch_size`` of them per transaction (default ``default_batch_size``).

        Empty ``documents`` raise a ValueError; a document that is not a dict with a str
        ``content`` raises InvalidDocumentError (a TypeError); an embedding dimension other
        than the collection's raises DimensionMismatchError ("dimension mismatch")."""
        size = self.default_batch_size if batch_size is None else _check_int(batch_size, "batch_size")
        ids, texts, metadatas = _prepare_documents(documents)

        def add(store: _store.Store) -> None:
            for start in range(0, len(ids), size):
                stop = start + size
                vectors, batch_metadata = placeholder_rows(
                    self._embed(texts[start:stop]), metadatas[start:stop]
                )
                try:
                    store.upsert(
                        ids[start:stop],
                        vectors,
                        contents=texts[start:stop],
                        metadata=batch_metadata,
                    )
                except DimensionMismatchError as exc:
                    raise self._dimension_mismatch(collection_name, exc) from exc

        self._on_collection(collection_name, "open", add)

    def search(
        self,
        *,
        collection_name: str,
        query: str,
        limit: int | None = None,
        metadata_filter: dict[str, Any] | None = None,
        score_threshold: float | None = _UNSET,
    ) -> list[SearchResult]:
        """The ``limit`` documents most similar to ``query`` among those matching
        ``metadata_filter``, best first, with score >= ``score_threshold`` (defaults:
        ``default_limit``, ``default_score_threshold``; None or 0 means no threshold).
        A collection that does not exist gives []."""
        k, threshold, merged, where, residual = self._search_args(
            query, limit, metadata_filter, score_threshold
        )
        return self._on_collection(
            collection_name,
            "get",
            lambda store: (
                []
                if merged is None or store.dim is None
                else self._search(store, collection_name, query, k, threshold, where, residual)
            ),
            [],
        )

    def _search_args(
        self, query: Any, limit: Any, metadata_filter: Any, score_threshold: Any
    ) -> tuple[int, float | None, dict[str, Any] | None, Any, dict[str, Any]]:
        """(k, the score threshold, the merged filter (None: contradictory), the engine's
        where, the pairs left to check in Python) of a search, checked."""
        if not isinstance(query, str):
            raise InvalidInputError(f"query must be a str, got {type(query).__name__}")
        k = self.default_limit if limit is None else _check_int(limit, "limit")
        if score_threshold is _UNSET:
            score_threshold = self.default_score_threshold
        threshold = None if score_threshold is None else check.check_real(score_threshold, "score_threshold")
        merged = chroma_where(metadata_filter, "metadata_filter")
        where, residual = split_metadata_filter(merged or None)
        return k, threshold, merged, where, residual

    def _search(
        self,
        store: _store.Store,
        collection_name: str,
        query: str,
        k: int,
        threshold: float | None,
        where: Any,
        residual: Any,
    ) -> list[SearchResult]:
        """:meth:`search` on the collection's store (of a known dimension)."""
        dim = cast(int, store.dim)
        criteria: dict[str, Any] = {"where": where}
        if residual:
            criteria["ids"] = filter_ids(store, residual, where=where)
            if not criteria["ids"]:
                return []
        vector = self._embed([query], query=True)[0]
        if self._nothing_similar(collection_name, dim, vector):
            return []
        try:
            records, cosines = search_ranked(store, vector, k, min_score=_min_score(threshold), **criteria)
        except DimensionMismatchError as exc:
            raise self._dimension_mismatch(collection_name, exc) from exc
        return self._results(records, cosines, k)

    async def _asearch(
        self,
        store: _store.Store,
        collection_name: str,
        query: str,
        k: int,
        threshold: float | None,
        where: Any,
        residual: Any,
    ) -> list[SearchResult]:
        """:meth:`_search`, the store's work awaited natively."""
        dim = cast(int, store.dim)
        face = async_store(store)
        criteria: dict[str, Any] = {"where": where}
        if residual:
            criteria["ids"] = await afilter_ids(face, residual, where=where)
            if not criteria["ids"]:
                return []
        vector = (await asyncio.to_thread(self._embed, [query], query=True))[0]
        if self._nothing_similar(collection_name, dim, vector):
            return []
        try:
            records, cosines = await asearch_ranked(
                face, vector, k, min_score=_min_score(threshold), **criteria
            )
        except DimensionMismatchError as exc:
            raise self._dimension_mismatch(collection_name, exc) from exc
        return self._results(records, cosines, k)

    def _nothing_similar(self, collection_name: str, dim: int, vector: np.ndarray) -> bool:
        """Whether the query vector is zero: no direction, no cosine, nothing is similar
        (its dimension is still checked)."""
        if not is_zero_query(vector):
            return False
        if vector.shape[0] != dim:
            raise self._dimension_mismatch(
                collection_name,
                DimensionMismatchError("", dim, int(vector.shape[0])),
            )
        return True

    @staticmethod
    def _results(records: list[Any], cosines: list[float], k: int) -> list[SearchResult]:
        results = []
        for record, cosine in zip(records, cosines):
            # None: deleted by another thread since the search; a placeholder never ranks.
            if record is None or NO_EMBEDDING_KEY in record.metadata:
                continue
            results.append(
                SearchResult(
                    id=record.id,
                    content=record.content,
                    metadata=record.metadata,
                    score=min(1.0, max(0.0, (1.0 + cosine) / 2.0)),
                )
            )
            if len(results) == k:
                break
        return results

    def delete_collection(self, *, collection_name: str) -> None:
        """Deletes the collection's file (or its store in the database);
        CollectionNotFoundError (a ValueError) if it does not exist, as ChromaDB raises."""
        if self._database is not None:
            where = self._database_store(collection_name)
            with self._lock:
                cached = self._stores.pop(collection_name, None)
                if cached is not None:
                    cached.store.close()
                if not _postgres.drop_store(where.url):
                    raise CollectionNotFoundError(f"collection {collection_name!r} does not exist")
            return
        file = str(self.collection_path(collection_name))
        with self._lock:
            cached = self._stores.pop(collection_name, None)
            if cached is not None:
                cached.store.close()
            if _identity(file) is None:
                raise CollectionNotFoundError(f"collection {collection_name!r} does not exist")
            self._remove(file)

    def reset(self) -> None:
        """Deletes every collection in the directory (in a database: every store of the
        prefix, whichever client made it)."""
        with self._lock:
            for opened in self._stores.values():
                opened.store.close()
            self._stores.clear()
            if self._database is not None:
                for name in _postgres.list_stores(self._database.url, self._prefix + "/"):
                    _postgres.drop_store(self._database.with_store(name).url)
                return
            folder = cast(Path, self._path)
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                return
            for name in names:
                if name.endswith(STORE_SUFFIX):
                    self._remove(str(folder / name))

    @staticmethod
    def _remove(file: str) -> None:
        # The log and shared-memory files go too: a store created later under the same
        # name must not find them. A process still holding the old file keeps it (unlinked).
        for companion in _COMPANIONS:
            try:
                os.remove(file + companion)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StorageError(f"cannot delete {file + companion!r}: {exc}") from exc

    def close(self) -> None:
        """Closes the open stores, releasing their files and threads; a later call opens
        the collection it needs again. Idempotent. A store handed out by
        get_or_create_collection() is closed with the others."""
        with self._lock:
            for opened in self._stores.values():
                opened.store.close()
            self._stores.clear()

    # ------------------------------------------------------------ async
    #
    # aadd_documents and asearch await the store natively (ferromem.AsyncStore: the Rust
    # runtime's pool, resolved on the caller's loop). The embedding function is the user's
    # synchronous code, most often a call over the network (OpenAI's API by default) that
    # takes tens to hundreds of milliseconds: it runs in asyncio's default executor
    # (asyncio.to_thread), so that the event loop keeps serving other tasks meanwhile,
    # which CrewAI's Chroma client does not do. Creating, deleting and resetting
    # collections (files and a cross-process file lock, or statements on the database)
    # runs there too. A collection's store is opened at its first use, on the caller's
    # thread.

    async def acreate_collection(self, *, collection_name: str) -> None:
        await asyncio.to_thread(self.create_collection, collection_name=collection_name)

    async def aget_or_create_collection(self, *, collection_name: str) -> _store.Store:
        return await asyncio.to_thread(self.get_or_create_collection, collection_name=collection_name)

    async def aadd_documents(
        self,
        *,
        collection_name: str,
        documents: list[BaseRecord],
        batch_size: int | None = None,
    ) -> None:
        """:meth:`add_documents`: the embedding in the default executor, the writes
        awaited natively."""
        size = self.default_batch_size if batch_size is None else _check_int(batch_size, "batch_size")
        ids, texts, metadatas = _prepare_documents(documents)

        async def add(store: _store.Store) -> None:
            face = async_store(store)
            for start in range(0, len(ids), size):
                stop = start + size
                matrix = await asyncio.to_thread(self._embed, texts[start:stop])
                vectors, batch_metadata = placeholder_rows(matrix, metadatas[start:stop])
                try:
                    await face.upsert(
                        ids[start:stop],
                        vectors,
                        contents=texts[start:stop],
                        metadata=batch_metadata,
                    )
                except DimensionMismatchError as exc:
                    raise self._dimension_mismatch(collection_name, exc) from exc

        await self._aon_collection(collection_name, "open", add)

    async def asearch(
        self,
        *,
        collection_name: str,
        query: str,
        limit: int | None = None,
        metadata_filter: dict[str, Any] | None = None,
        score_threshold: float | None = _UNSET,
    ) -> list[SearchResult]:
        """:meth:`search`: the query's embedding in the default executor, the search
        awaited natively."""
        k, threshold, merged, where, residual = self._search_args(
            query, limit, metadata_filter, score_threshold
        )

        async def search(store: _store.Store) -> list[SearchResult]:
            if merged is None or store.dim is None:
                return []
            return await self._asearch(store, collection_name, query, k, threshold, where, residual)

        return await self._aon_collection(collection_name, "get", search, [])

    async def adelete_collection(self, *, collection_name: str) -> None:
        await asyncio.to_thread(self.delete_collection, collection_name=collection_name)

    async def areset(self) -> None:
        await asyncio.to_thread(self.reset)

    def __repr__(self) -> str:
        if self._database is None:
            return f"RagClient(path={str(self._path)!r})"
        return f"RagClient(location={self._database.shown!r}, prefix={self._prefix!r})"


# ---------------------------------------------------------------- registration


@pyd_dataclass(frozen=True)
class RagConfig(BaseRagConfig):
    """The ``"ferromem"`` RAG provider's config, for ``crewai.rag.factory.create_client``
    once :func:`create_rag_client` is registered for ``"ferromem"``. ``embedding_function``,
    ``limit``, ``score_threshold`` and ``batch_size`` as in CrewAI's configs; ``path`` and
    ``durability`` as in :class:`RagClient`."""

    provider: Literal["ferromem"] = field(  # type: ignore[assignment]
        default="ferromem", init=False
    )
    path: str | Path | None = None
    durability: Durability = "normal"

    def __repr__(self) -> str:
        # A postgresql:// path may hold a password: shown without it, like everywhere.
        parts = []
        for name in (f.name for f in dataclasses.fields(self)):
            value = getattr(self, name)
            if name == "path" and isinstance(value, str):
                value = shown(_location.store_path(value)) if _is_url(value) else value
            parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _is_url(text: str) -> bool:
    return text[:13].lower().startswith(("postgresql://", "postgres://"))


def create_rag_client(config: BaseRagConfig) -> RagClient:
    """A RAG client factory for ``register_rag_client_factory``: a :class:`RagConfig`, or
    any CrewAI RAG config (e.g. ``ChromaDBConfig``, when registered for ``"chromadb"``), of
    which the embedding function and the limits are used and the backend settings
    (ChromaDB's tenant, database, persist directory) ignored: the collections live in
    :func:`default_knowledge_path`."""
    return rag_client_for(config, None)


def rag_client_for(config: BaseRagConfig, default_path: str | None) -> RagClient:
    """:func:`create_rag_client`, with the collections in ``default_path`` (a directory or
    a ``postgresql://`` URL) unless the config is a RagConfig with a path of its own.
    ``install(path=URL)`` registers this with its URL."""
    if not isinstance(config, BaseRagConfig):
        raise InvalidInputError(
            f"config must be a CrewAI RAG config (RagConfig, ChromaDBConfig, ...), got "
            f"{type(config).__name__}"
        )
    path: str | Path | None = default_path
    durability: Durability = "normal"
    if isinstance(config, RagConfig):
        path = default_path if config.path is None else config.path
        durability = config.durability
    return RagClient(
        path,
        embedding_function=config.embedding_function,
        default_limit=config.limit,
        default_score_threshold=config.score_threshold,
        default_batch_size=config.batch_size,
        durability=durability,
    )


class KnowledgeStorage(BaseKnowledgeStorage):
    """CrewAI knowledge storage (``BaseKnowledgeStorage``) on a :class:`RagClient`.

    The collection is ``"knowledge"``, or ``"knowledge_<collection_name>"``, as in CrewAI's
    KnowledgeStorage. ``embedder``: a CrewAI embedder config (or a callable), None for
    CrewAI's default; ``path``: the RagClient's directory; or ``client``: a RagClient to
    use instead of both.

    Unlike CrewAI's KnowledgeStorage, failures are raised, not logged and turned into [];
    what callers rely on is kept: an empty query gives [], resetting a collection that was
    never saved to does nothing, and an embedding dimension change raises a ValueError
    that says "dimension mismatch".
    """

    collection_name: str | None = None
    embedder: Any = Field(default=None, exclude=True)
    path: str | Path | None = None
    client: RagClient | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _init_client(self) -> KnowledgeStorage:
        if self.client is None:
            self.client = RagClient(self.path, embedding_function=self.embedder)
            if self.client.path is None:
                # The URL has done its work; the model (its repr, its dumps) keeps only
                # the form without the password.
                self.path = self.client.location
        elif not isinstance(self.client, RagClient):
            # BaseClient's pydantic schema accepts any value: check it here.
            raise InvalidInputError(f"client must be a RagClient, got {type(self.client).__name__}")
        elif self.embedder is not None or self.path is not None:
            raise InvalidInputError("pass either client, or embedder and path, not both")
        return self

    def _rag_client(self) -> RagClient:
        # Never None once constructed: _init_client sets it.
        return cast(RagClient, self.client)

    @property
    def collection(self) -> str:
        """The RAG collection this storage reads and writes."""
        return f"knowledge_{self.collection_name}" if self.collection_name else "knowledge"

    @staticmethod
    def _query_text(query: Sequence[str]) -> str:
        if not isinstance(query, (list, tuple)) or not all(isinstance(q, str) for q in query):
            raise InvalidInputError(f"query must be a list of str, got {type(query).__name__}")
        return " ".join(query)

    def search(
        self,
        query: list[str],
        limit: int = 5,
        metadata_filter: dict[str, Any] | None = None,
        score_threshold: float = 0.6,
    ) -> list[SearchResult]:
        if query is None or (isinstance(query, (str, list, tuple)) and not query):
            return []
        return self._rag_client().search(
            collection_name=self.collection,
            query=self._query_text(query),
            limit=limit,
            metadata_filter=metadata_filter,
            score_threshold=score_threshold,
        )

    def save(self, documents: list[str]) -> None:
        records = self._records(documents)
        if records:
            self._rag_client().add_documents(collection_name=self.collection, documents=records)

    @staticmethod
    def _records(documents: Any) -> list[BaseRecord]:
        """The documents to save as RAG records ([] for None or none)."""
        if documents is None:
            return []
        if not isinstance(documents, (list, tuple)) or not all(isinstance(doc, str) for doc in documents):
            raise InvalidDocumentError(f"documents must be a list of str, got {type(documents).__name__}")
        return [{"content": doc} for doc in documents]

    def reset(self) -> None:
        try:
            self._rag_client().delete_collection(collection_name=self.collection)
        except CollectionNotFoundError:
            pass

    def close(self) -> None:
        """Closes the client's open stores; a later call reopens them."""
        self._rag_client().close()

    async def asearch(
        self,
        query: list[str],
        limit: int = 5,
        metadata_filter: dict[str, Any] | None = None,
        score_threshold: float = 0.6,
    ) -> list[SearchResult]:
        if query is None or (isinstance(query, (str, list, tuple)) and not query):
            return []
        return await self._rag_client().asearch(
            collection_name=self.collection,
            query=self._query_text(query),
            limit=limit,
            metadata_filter=metadata_filter,
            score_threshold=score_threshold,
        )

    async def asave(self, documents: list[str]) -> None:
        records = self._records(documents)
        if records:
            await self._rag_client().aadd_documents(collection_name=self.collection, documents=records)

    async def areset(self) -> None:
        try:
            await self._rag_client().adelete_collection(collection_name=self.collection)
        except CollectionNotFoundError:
            pass


def knowledge_storage_factory(embedder: Any, collection_name: str | None) -> KnowledgeStorage:
    """CrewAI's knowledge storage factory (``set_knowledge_storage_factory``): a
    :class:`KnowledgeStorage` in :func:`default_knowledge_path`."""
    return KnowledgeStorage(embedder=embedder, collection_name=collection_name)


def _min_score(threshold: float | None) -> float | None:
    """The engine's min_score (a cosine) for a score threshold on Chroma's scale."""
    return 2.0 * threshold - 1.0 if threshold else None
