"""ferromem for CrewAI: storage for memory and knowledge, and a one-line switch.

    import ferromem.crewai
    ferromem.crewai.install()          # Memory(), Crew(memory=True), Knowledge use ferromem

    from ferromem.crewai import MemoryStorage
    memory = Memory(storage=MemoryStorage("./memory"))   # or explicitly

CrewAI 1.x (``pip install ".[crewai]"`` in a ferromem clone): :class:`MemoryStorage` (the memory
``StorageBackend``), :class:`RagClient` and :class:`KnowledgeStorage` (knowledge),
:func:`install` / :func:`uninstall`. CrewAI 0.x: :mod:`ferromem.crewai.v0` (storages for
ShortTermMemory, EntityMemory and LongTermMemory); it imports no CrewAI 1.x module.

Names are imported on first use, so ``import ferromem.crewai`` works with either CrewAI
major version installed (or none), and fails only when a name needs what is missing.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MemoryStorage": "memory",
    "RagClient": "rag",
    "RagConfig": "rag",
    "KnowledgeStorage": "rag",
    "create_rag_client": "rag",
    "HashingEmbeddingFunction": "embedders",
    "install": "install",
    "uninstall": "install",
    "installed": "install",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ferromem.crewai' has no attribute {name!r}")
    try:
        loaded = importlib.import_module(f"{__name__}.{module}")
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in ("crewai", "crewai_core"):
            raise ImportError(
                f"ferromem.crewai.{name} needs CrewAI 1.x: pip install 'crewai>=1.15,<2' ({exc})"
            ) from exc
        raise
    # Every name of that module at once: importing the submodule ``install`` bound the
    # package attribute ``install`` to the module, which must not hide the function when
    # ``installed`` or ``uninstall`` was asked for first.
    for export, source in _EXPORTS.items():
        if source == module:
            globals()[export] = getattr(loaded, export)
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
