"""One-line switch: route CrewAI's memory and knowledge through ferromem.

:func:`install` registers ferromem through the seams CrewAI provides for this (no
patching of CrewAI code): ``set_memory_storage_factory`` for ``Memory()``,
``Memory(storage="some/path")`` and ``Crew(memory=True)``; ``set_knowledge_storage_factory``
for ``Knowledge`` and knowledge sources; ``register_rag_client_factory`` for the
``"ferromem"`` RAG provider (and, on request, in place of ``"chromadb"``).
:func:`uninstall` puts back what was registered before.

A ``Memory`` given an explicit storage instance keeps it: CrewAI only consults the
factories for string specs and defaults.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .. import store as _store
from .._location import DatabaseLocation
from .._typing import Durability
from ..exceptions import InvalidInputError
from ._names import location_argument, open_at
from .memory import MemoryStorage

__all__ = ["install", "uninstall", "installed"]

# The specs CrewAI's Memory resolves to its built-in backends; any other string is a path.
_BUILTIN_SPECS = ("lancedb", "qdrant-edge")

_lock = threading.Lock()
_state: dict[str, Any] | None = None


def _memory_factory(settings: dict[str, Any]) -> Any:
    """CrewAI's memory storage factory: spec -> MemoryStorage, or None to decline."""
    stores: dict[str | DatabaseLocation, _store.Store] = settings["stores"]

    def factory(spec: str) -> MemoryStorage | None:
        if spec == "qdrant-edge" and not settings["qdrant_edge"]:
            return None
        if spec in _BUILTIN_SPECS:
            path = settings["path"]
        else:
            path = spec
        where = MemoryStorage._resolve_location(path, "memories")
        # A file by its real path (two spellings, one file); a database store by its URL.
        key: str | DatabaseLocation = os.path.realpath(where) if isinstance(where, str) else where
        # One Store per file or database store in a process: every Memory() shares its
        # in-memory replica (and Memory.close() on one of them cannot close it under the
        # others).
        with _lock:
            shared = stores.get(key)
            if shared is None or shared.closed:
                shared = open_at(where, durability=settings["durability"])
                stores[key] = shared
        return MemoryStorage(store=shared)

    return factory


def _knowledge_factory(database: DatabaseLocation) -> Any:
    """CrewAI's knowledge storage factory for knowledge kept in a database."""
    from .rag import KnowledgeStorage

    def factory(embedder: Any, collection_name: str | None) -> Any:
        return KnowledgeStorage(embedder=embedder, collection_name=collection_name, path=database.url)

    return factory


def _rag_client_factory(database: DatabaseLocation) -> Any:
    """The RAG client factory for collections kept in a database: a config that names no
    place of its own (ChromaDB's, or a RagConfig without a path) gets the database."""
    from .rag import rag_client_for

    def factory(config: Any) -> Any:
        return rag_client_for(config, database.url)

    return factory


def install(
    *,
    memory: bool = True,
    knowledge: bool = True,
    chromadb: bool = False,
    qdrant_edge: bool = False,
    path: str | os.PathLike | None = None,
    durability: Durability = "normal",
) -> None:
    """Makes CrewAI use ferromem. Call once at start-up, before creating Memory/Crew.

    ``memory``: ``Memory()`` / ``Crew(memory=True)`` (spec ``"lancedb"``) and
    ``Memory(storage="some/path")`` use :class:`MemoryStorage`. ``qdrant_edge``: also
    ``Memory(storage="qdrant-edge")`` (left to CrewAI by default: asking for it by name
    is a choice). ``path``: where the default memory store lives: a directory or a
    ``.ferro`` file (default: CrewAI's memory directory, honouring ``CREWAI_STORAGE_DIR``),
    or a ``postgresql://`` URL, which then holds the knowledge too: memory in the store
    named by the URL's ``store`` option (default ``memories``), knowledge collections in
    the stores ``<store>/<collection>`` (default ``knowledge/<collection>``), as with
    ``MemoryStorage(path=URL)`` and ``RagClient(path=URL)``; every host that installs the
    same URL shares them. ``Memory(storage="postgresql://...")`` works as well.
    ``knowledge``: ``Knowledge`` and knowledge sources use ferromem's knowledge storage,
    and the ``"ferromem"`` RAG provider is registered. ``chromadb``: the RAG provider
    ``"chromadb"`` is served by ferromem too (for code that builds ChromaDB configs).
    ``durability``: "normal" or "full" for the stores opened here.

    Calling install() again replaces the previous settings.
    """
    global _state
    for name, value in (
        ("memory", memory),
        ("knowledge", knowledge),
        ("chromadb", chromadb),
        ("qdrant_edge", qdrant_edge),
    ):
        if not isinstance(value, bool):
            raise InvalidInputError(f"{name} must be True or False, got {value!r}")
    if durability not in ("normal", "full"):
        raise InvalidInputError(f"durability must be 'normal' or 'full', got {durability!r}")
    from crewai.knowledge.storage import factory as knowledge_factory
    from crewai.memory.storage import factory as memory_factory
    from crewai.rag import factory as rag_factory

    from . import rag

    with _lock:
        previous: dict[str, Any]
        if _state is None:
            previous = {
                "memory": memory_factory._factory,
                "knowledge": knowledge_factory._factory,
                "rag": {p: rag_factory._factories.get(p) for p in ("ferromem", "chromadb")},
            }
        else:
            previous = _state["previous"]
        where = None if path is None else location_argument(path)
        database = where if isinstance(where, DatabaseLocation) else None
        settings = {
            "path": where,
            "durability": durability,
            "qdrant_edge": qdrant_edge,
            "stores": {} if _state is None else _state["settings"]["stores"],
        }
        _state = {"previous": previous, "settings": settings}
    memory_factory.set_memory_storage_factory(_memory_factory(settings) if memory else previous["memory"])
    if not knowledge:
        knowledge_factory.set_knowledge_storage_factory(previous["knowledge"])
    elif database is None:
        knowledge_factory.set_knowledge_storage_factory(rag.knowledge_storage_factory)
    else:
        knowledge_factory.set_knowledge_storage_factory(_knowledge_factory(database))
    rag_client_factory = rag.create_rag_client if database is None else _rag_client_factory(database)
    for provider, wanted in (("ferromem", knowledge), ("chromadb", chromadb)):
        if wanted:
            rag_factory.register_rag_client_factory(provider, rag_client_factory)
        else:
            _restore_rag(rag_factory, provider, previous["rag"][provider])


def _restore_rag(rag_factory: Any, provider: str, factory: Any) -> None:
    if factory is None:
        rag_factory.unregister_rag_client_factory(provider)
    else:
        rag_factory.register_rag_client_factory(provider, factory)


def uninstall() -> None:
    """Restores the factories that were registered before :func:`install` and closes the
    shared memory stores it opened. A no-op when ferromem is not installed."""
    global _state
    from crewai.knowledge.storage import factory as knowledge_factory
    from crewai.memory.storage import factory as memory_factory
    from crewai.rag import factory as rag_factory

    with _lock:
        state, _state = _state, None
    if state is None:
        return
    previous = state["previous"]
    memory_factory.set_memory_storage_factory(previous["memory"])
    knowledge_factory.set_knowledge_storage_factory(previous["knowledge"])
    for provider, factory in previous["rag"].items():
        _restore_rag(rag_factory, provider, factory)
    for shared in state["settings"]["stores"].values():
        if not shared.closed:
            shared.close()


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _state is not None
