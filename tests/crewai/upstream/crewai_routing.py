"""A pytest plugin that routes every memory storage CrewAI's own tests build to ferromem.

Loaded with ``-p crewai_routing`` (see run_crewai_memory_tests.sh) into a run of the
test suite that ships in CrewAI's sdist. It changes nothing in CrewAI's code or tests:

- ``ferromem.crewai.install(qdrant_edge=True)``: ``Memory()``, ``Memory(storage="path")``,
  ``Memory(storage="lancedb" | "qdrant-edge")`` and knowledge use ferromem, through
  CrewAI's own factory seams (one shared store per file, which ``Memory.close()`` leaves
  open). With ``FERROMEM_ROUTING=classes`` the memory factory is left out, so those
  Memory objects fall through to the classes below and each owns its store;
- the names ``LanceDBStorage`` and ``QdrantEdgeStorage`` in CrewAI's storage modules are
  bound to subclasses of :class:`ferromem.crewai.MemoryStorage` that take those classes'
  constructor arguments, so a test that builds one directly gets a ferromem storage
  that owns its store (and closes it on close(), then reopens on the next call).

Tests that inspect the internals of LanceDB or Qdrant Edge (their files, tables,
shards) are not about the StorageBackend contract; the runner deselects them by name
(listed in run_crewai_memory_tests.sh, each with its reason).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest


def _routed_classes() -> tuple[type, type]:
    from ferromem.crewai.memory import MemoryStorage

    class FerromemAsLanceDB(MemoryStorage):
        """LanceDBStorage's constructor, ferromem's storage."""

        def __init__(
            self,
            path: str | os.PathLike | None = None,
            table_name: str = "memories",
            vector_dim: int | None = None,
            compact_every: int = 100,
        ) -> None:
            super().__init__(path, table_name, vector_dim)

    class FerromemAsQdrantEdge(MemoryStorage):
        """QdrantEdgeStorage's constructor, ferromem's storage."""

        def __init__(self, path: str | Path | None = None, vector_dim: int | None = None) -> None:
            super().__init__(path, "memories", vector_dim)

    return FerromemAsLanceDB, FerromemAsQdrantEdge


def pytest_configure(config: Any) -> None:
    import ferromem.crewai

    lance_cls, qdrant_cls = _routed_classes()
    from crewai.memory.storage import lancedb_storage

    lancedb_storage.LanceDBStorage = lance_cls
    try:
        from crewai.memory.storage import qdrant_edge_storage
    except ImportError:  # qdrant-edge is an optional extra of CrewAI
        pass
    else:
        qdrant_edge_storage.QdrantEdgeStorage = qdrant_cls
    routing = os.environ.get("FERROMEM_ROUTING", "install")
    if routing not in ("install", "classes"):
        raise pytest.UsageError(f"FERROMEM_ROUTING must be 'install' or 'classes', got {routing!r}")
    ferromem.crewai.install(memory=routing == "install", qdrant_edge=True)


@pytest.fixture(autouse=True)
def _ferromem_storage_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Memory() with no storage opens the default store: keep each test's apart.
    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "crewai-storage"))
