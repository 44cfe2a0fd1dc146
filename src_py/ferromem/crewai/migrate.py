"""``ferromem import``: copy CrewAI's existing stores into ferromem.

- ``lancedb``: a CrewAI memory store (LanceDB, the 1.x default) into a ferromem memory
  store that :class:`~ferromem.crewai.MemoryStorage` opens.
- ``chromadb``: CrewAI knowledge collections (ChromaDB) into a ferromem knowledge
  directory that :class:`~ferromem.crewai.RagClient` opens.

Vectors are copied as stored (nothing is re-embedded, so no API key is needed), in
batches of one transaction each, with a progress line on stderr. Importing again is
safe: records are upserted by id. At the end every source id is looked up in the
destination and the counts are compared; a shortfall is an error.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TextIO

import numpy as np

from ..exceptions import FerromemError

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
            line = (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                    f"{self.done:,}/{self.total:,}")
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
    memory store at ``destination`` (a directory or ``.ferro`` file; default: beside it,
    where :class:`MemoryStorage` looks by default). Returns ``{"source", "imported",
    "destination_total"}``."""
    import lancedb

    from .memory import MemoryStorage

    source = os.fspath(source)
    if not os.path.isdir(source):
        raise MigrationError(f"no LanceDB directory at {source!r}")
    try:
        lance_table = lancedb.connect(source).open_table(table)
    except Exception as exc:  # lancedb raises several kinds for a missing table
        raise MigrationError(f"cannot open LanceDB table {table!r} in {source!r}: {exc}") from exc
    total = int(lance_table.count_rows())
    storage = MemoryStorage(destination if destination is not None else source)
    seen: list[str] = []
    bar = _Progress(f"lancedb {table}", total, progress)
    try:
        for rows in _lance_batches(lance_table, batch):
            records = [_lance_row_to_record(r) for r in rows if r.get("id") != "__schema_placeholder__"]
            storage.save(records)
            seen.extend(r.id for r in records)
            bar.advance(len(rows))
        bar.close()
        return _verify(seen, total, storage.store.get_many, storage.count(), "memory records")
    finally:
        storage.close()


def import_chromadb(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    collections: list[str] | None = None,
    batch: int = BATCH,
    progress: TextIO | None = sys.stderr,
) -> dict[str, dict[str, int]]:
    """Copies the ChromaDB collections at ``source`` (a persistent ChromaDB directory, such
    as CrewAI's knowledge store) into the ferromem knowledge directory ``destination``.
    ``collections``: names to copy (default: all). Returns per collection ``{"source",
    "imported", "destination_total"}``."""
    import chromadb
    from chromadb.config import Settings

    from .rag import RagClient

    source = os.fspath(source)
    if not os.path.isdir(source):
        raise MigrationError(f"no ChromaDB directory at {source!r}")
    client = chromadb.PersistentClient(path=source, settings=Settings(anonymized_telemetry=False))
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
                    store.upsert(
                        got["ids"], np.asarray(got["embeddings"], dtype=np.float32),
                        contents=[d or "" for d in got["documents"]],
                        metadata=[dict(m) if m else {} for m in got["metadatas"]],
                    )
                seen.extend(got["ids"])
                bar.advance(len(got["ids"]))
            bar.close()
            report[name] = _verify(seen, total, store.get_many, store.count(), f"documents of {name!r}")
    finally:
        rag.close()
    return report


def _verify(ids: list[str], total: int, get_many: Callable[[list[str]], list[Any]], dest_total: int,
            what: str) -> dict[str, int]:
    if len(set(ids)) != total:
        raise MigrationError(f"read {len(set(ids))} distinct {what} but the source counts {total}")
    missing = 0
    for start in range(0, len(ids), BATCH):
        missing += sum(r is None for r in get_many(ids[start:start + BATCH]))
    if missing:
        raise MigrationError(f"{missing} of {total} {what} are missing from the destination")
    return {"source": total, "imported": len(ids), "destination_total": dest_total}
