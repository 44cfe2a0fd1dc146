"""``ferromem import``: copy CrewAI's existing stores into ferromem.

- ``lancedb``: a CrewAI memory store (LanceDB, the 1.x default) into a ferromem memory
  store that :class:`~ferromem.crewai.MemoryStorage` opens.
- ``chromadb``: CrewAI knowledge collections (ChromaDB) into a ferromem knowledge
  directory that :class:`~ferromem.crewai.RagClient` opens.

Vectors are copied as stored (nothing is re-embedded, so no API key is needed), in
batches of one transaction each, with a progress line on stderr. Importing again is
safe: records are upserted by id. At the end every source id is looked up in the
destination and the counts are compared; a shortfall is an error. All-zero vectors (an
embedder's answer to empty text) are imported as records without a direction, as the
adapters store them.

The source is only read, never written: it is first identified (a LanceDB table
directory ``<table>.lance``; a Chroma ``chroma.sqlite3`` with Chroma's tables, read
through SQLite's read-only, immutable mode), and anything else is refused with a
:class:`MigrationError` before a file is opened for writing. ChromaDB's client writes to
the directory it opens (its migrations, its log), so a Chroma store is read from a
temporary copy.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TextIO

import numpy as np

from ..exceptions import DimensionMismatchError, FerromemError
from ._names import path_argument

__all__ = ["import_lancedb", "import_chromadb", "MigrationError"]

BATCH = 2000


class MigrationError(FerromemError):
    """The source cannot be read, or the destination does not hold every source record."""


class _Progress:
    """A one-line progress report, rewritten in place on a terminal, every ~0.5 s."""

    def __init__(self, label: str, total: int, stream: TextIO | None):
        self.label, self.total, self.stream = label, total, stream
        self.done, self._last = 0, 0.0
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.stream is not None and (now - self._last > 0.5 or self.done >= self.total):
            self._last = now
            width = 30
            filled = width * self.done // max(self.total, 1)
            line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done:,}/{self.total:,}"
            self.stream.write(("\r" + line) if self._tty else (line + "\n"))
            self.stream.flush()

    def close(self) -> None:
        if self.stream is not None and self._tty:
            self.stream.write("\n")
            self.stream.flush()


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if value is None or value == "":
        return datetime.utcnow()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _lance_row_to_record(row: dict[str, Any]) -> Any:
    """One row of CrewAI's LanceDB memory table (schema of LanceDBStorage) as a MemoryRecord."""
    from crewai.memory.types import MemoryRecord

    vector = row.get("vector")
    vector = None if vector is None else [float(x) for x in vector]
    if vector is not None and not any(vector):
        vector = None  # LanceDB's placeholder for a record saved without an embedding
    return MemoryRecord(
        id=str(row["id"]),
        content=str(row.get("content") or ""),
        scope=str(row.get("scope") or "/"),
        categories=json.loads(row["categories_str"]) if row.get("categories_str") else [],
        metadata=json.loads(row["metadata_str"]) if row.get("metadata_str") else {},
        importance=float(row.get("importance", 0.5)),
        created_at=_parse_time(row.get("created_at")),
        last_accessed=_parse_time(row.get("last_accessed")),
        embedding=vector,
        source=row.get("source") or None,
        private=bool(row.get("private", False)),
    )


def _lance_batches(table: Any, batch: int) -> Iterator[list[dict[str, Any]]]:
    """The table's rows in batches, streamed (a full scan, not the whole table in memory)."""
    for record_batch in table.search().limit(None).to_batches(batch):
        yield record_batch.to_pylist()


def import_lancedb(
    source: str | os.PathLike,
    destination: str | os.PathLike | None = None,
    *,
    table: str = "memories",
    batch: int = BATCH,
    progress: TextIO | None = sys.stderr,
) -> dict[str, int]:
    """Copies CrewAI's LanceDB memory table at ``source`` (a directory) into the ferromem
    memory store at ``destination`` (a directory or ``.ferro`` file, or a ``postgresql://``
    URL as :class:`MemoryStorage` takes it; default: beside the source, where
    :class:`MemoryStorage` looks by default). Returns ``{"source", "imported",
    "destination_total"}``."""
    import lancedb

    source = path_argument(source, "source")
    if not os.path.isdir(source):
        raise MigrationError(f"no LanceDB directory at {source!r}")
    if not os.path.isdir(os.path.join(source, table + ".lance")):
        # Checked before LanceDB opens anything, so a wrong folder is left untouched.
        raise MigrationError(
            f"cannot open LanceDB table {table!r} in {source!r}: it has no {table}.lance "
            "directory, so it is not a CrewAI LanceDB memory store"
        )
    try:
        lance_table = lancedb.connect(source).open_table(table)
    except Exception as exc:  # lancedb raises several kinds for a missing table
        raise MigrationError(f"cannot open LanceDB table {table!r} in {source!r}: {exc}") from exc
    # Imported only now: importing CrewAI creates its data directory.
    from crewai.memory.storage.backend import EmbeddingDimensionMismatchError

    from .memory import MemoryStorage

    total = int(lance_table.count_rows())
    storage = MemoryStorage(destination if destination is not None else source)
    seen: list[str] = []
    bar = _Progress(f"lancedb {table}", total, progress)
    try:
        for rows in _lance_batches(lance_table, batch):
            records = [_lance_row_to_record(r) for r in rows if r.get("id") != "__schema_placeholder__"]
            try:
                storage.save(records)
            except EmbeddingDimensionMismatchError as exc:
                raise MigrationError(
                    f"the destination {storage.location} holds {exc.stored_dim}-dimensional vectors "
                    f"but the LanceDB table's are {exc.new_dim}-dimensional: import into another "
                    "destination (--to) or remove that store first"
                ) from exc
            seen.extend(r.id for r in records)
            bar.advance(len(rows))
        bar.close()
        return _verify(seen, total, storage.store.get_many, storage.count(), "memory records")
    finally:
        storage.close()


def import_chromadb(
    source: str | os.PathLike,
    destination: str | os.PathLike | None = None,
    *,
    collections: list[str] | None = None,
    batch: int = BATCH,
    progress: TextIO | None = sys.stderr,
) -> dict[str, dict[str, int]]:
    """Copies the ChromaDB collections at ``source`` (a persistent ChromaDB directory, such
    as CrewAI's knowledge store) into the ferromem knowledge directory ``destination``, or
    the database of a ``postgresql://`` URL as :class:`RagClient` takes it (default: where
    :class:`RagClient` looks by default).
    ``collections``: names to copy (default: all). Returns per collection ``{"source",
    "imported", "destination_total"}``."""
    import chromadb
    from chromadb.config import Settings

    source = path_argument(source, "source")
    if not os.path.isdir(source):
        raise MigrationError(f"no ChromaDB directory at {source!r}")
    _check_chroma_store(source)
    with tempfile.TemporaryDirectory(prefix="ferromem-import-chroma-") as copy_root:
        copy = os.path.join(copy_root, "chroma")
        try:
            shutil.copytree(source, copy, symlinks=True)
        except OSError as exc:
            raise MigrationError(f"cannot read the ChromaDB directory {source!r}: {exc}") from exc
        client = chromadb.PersistentClient(path=copy, settings=Settings(anonymized_telemetry=False))
        return _copy_chroma(client, source, destination, collections, batch, progress)


_CHROMA_TABLES = {"collections", "segments", "embeddings", "embedding_metadata"}


def _check_chroma_store(source: str) -> None:
    """MigrationError unless ``source`` holds a Chroma ``chroma.sqlite3``; opened read-only
    and immutable, so SQLite creates no journal, log or lock file beside it."""
    file = os.path.join(source, "chroma.sqlite3")
    if not os.path.isfile(file):
        raise MigrationError(f"{source!r} is not a ChromaDB directory: it has no chroma.sqlite3")
    uri = "file:" + urllib.parse.quote(os.path.abspath(file)) + "?mode=ro&immutable=1"
    try:
        connection = sqlite3.connect(uri, uri=True)
        try:
            tables = {
                row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise MigrationError(f"{file!r} is not a ChromaDB database: {exc}") from exc
    missing = _CHROMA_TABLES - tables
    if missing:
        raise MigrationError(
            f"{file!r} is not a ChromaDB database: it has no {', '.join(sorted(missing))} table"
        )


def _copy_chroma(
    client: Any,
    source: str,
    destination: str | os.PathLike | None,
    collections: list[str] | None,
    batch: int,
    progress: TextIO | None,
) -> dict[str, dict[str, int]]:
    # Imported only now: importing CrewAI creates its data directory.
    from ._embedding import placeholder_rows
    from .rag import RagClient, default_knowledge_path

    if destination is None:
        destination = default_knowledge_path()

    names = [c if isinstance(c, str) else c.name for c in client.list_collections()]
    if collections is not None:
        missing = sorted(set(collections) - set(names))
        if missing:
            raise MigrationError(f"no collection {missing} in {source!r}; it has {sorted(names)}")
        names = list(collections)
    rag = RagClient(destination)
    report: dict[str, dict[str, int]] = {}
    try:
        for name in names:
            col = client.get_collection(name)
            total = col.count()
            seen: list[str] = []
            bar = _Progress(f"chromadb {name}", total, progress)
            store = rag.get_or_create_collection(collection_name=name)
            for offset in range(0, total, batch):
                got = col.get(include=["embeddings", "documents", "metadatas"], limit=batch, offset=offset)
                if got["ids"]:
                    vectors, metadata = placeholder_rows(
                        np.asarray(got["embeddings"], dtype=np.float32),
                        [dict(m) if m else {} for m in got["metadatas"]],
                    )
                    try:
                        store.upsert(
                            got["ids"],
                            vectors,
                            contents=[d or "" for d in got["documents"]],
                            metadata=metadata,
                        )
                    except DimensionMismatchError as exc:
                        raise MigrationError(
                            f"the destination collection {name!r} holds {exc.expected}-"
                            f"dimensional vectors but the ChromaDB collection's are {exc.got}-"
                            "dimensional: import into another destination (--to) or delete "
                            "that collection first"
                        ) from exc
                seen.extend(got["ids"])
                bar.advance(len(got["ids"]))
            bar.close()
            report[name] = _verify(seen, total, store.get_many, store.count(), f"documents of {name!r}")
    finally:
        rag.close()
    return report


def _verify(
    ids: list[str], total: int, get_many: Callable[[list[str]], list[Any]], dest_total: int, what: str
) -> dict[str, int]:
    if len(set(ids)) != total:
        raise MigrationError(f"read {len(set(ids))} distinct {what} but the source counts {total}")
    missing = 0
    for start in range(0, len(ids), BATCH):
        missing += sum(r is None for r in get_many(ids[start : start + BATCH]))
    if missing:
        raise MigrationError(f"{missing} of {total} {what} are missing from the destination")
    return {"source": total, "imported": len(ids), "destination_total": dest_total}
