"""Administration of stores in a PostgreSQL database (docs/postgres.md).

A store is opened with :func:`ferromem.open` and a ``postgresql://`` URL; these functions
take the same URLs. The database's tables are created by a versioned migration the first
time a store is opened for writing; :func:`migrate` runs it on its own, so an operator can
migrate with a privileged role and let the application's role only read and write rows.
"""

from __future__ import annotations

from typing import Any

from ._location import DatabaseLocation, store_path
from .exceptions import InvalidInputError, UnsupportedStoreError

__all__ = ["migrate", "list_stores", "create_store", "drop_store"]


def _url(location: Any) -> str:
    parsed = store_path(location) if isinstance(location, str) else location
    if not isinstance(parsed, DatabaseLocation):
        raise InvalidInputError("this function takes a 'postgresql://' URL")
    return parsed.url


def _native() -> Any:
    try:
        from . import _core
    except ImportError as exc:  # pragma: no cover - depends on the build
        raise UnsupportedStoreError(
            f"PostgreSQL stores need the native engine, which cannot load here: {exc}"
        ) from exc
    return _core


def migrate(url: str) -> int:
    """Creates or upgrades ferromem's tables in the URL's schema (creating the schema too),
    under an advisory lock (concurrent callers migrate once); returns the version of the
    tables (``ferromem_schema_versions``). Opening
    a store does the same when needed; this is for running it ahead, with another role."""
    return int(_native().postgres_migrate(_url(url)))


def list_stores(url: str, prefix: str = "") -> list[str]:
    """The names of the stores in the URL's schema that start with ``prefix``, sorted (the
    URL's own ``store`` option is ignored). A schema without ferromem's tables has none."""
    if not isinstance(prefix, str):
        raise InvalidInputError(f"prefix must be a str, got {type(prefix).__name__}")
    return list(_native().postgres_list_stores(_url(url), prefix))


def create_store(url: str) -> bool:
    """Creates the store the URL names (its ``store`` option), empty, migrating the schema
    first when needed; returns True when this call created it and False when it existed.
    Of processes creating the same store at once, exactly one gets True (what an exclusive
    create needs: ``RagClient.create_collection``). Opening a store creates it too, without
    saying whether it did."""
    return bool(_native().postgres_create_store(_url(url)))


def drop_store(url: str) -> bool:
    """Deletes the store the URL names (its ``store`` option) with all its records, in one
    transaction; returns False when there was none. Processes that have it open get
    NotAStoreError at their next read of the database."""
    return bool(_native().postgres_drop_store(_url(url)))
