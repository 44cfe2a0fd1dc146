"""Whose file it is, and record checksums, for the NumPy reference engine.

The native engine does the same in Rust (``storage/sqlite.rs``, ``storage/checksum.rs``);
these must agree byte for byte, and the tests open each engine's files with the other:

- A store is a SQLite file whose header carries ``application_id`` APPLICATION_ID and
  ``user_version`` SCHEMA_VERSION, read straight from the file before SQLite opens it for
  writing. Anything else is refused with NotAStoreError and left untouched. Version 1
  stores (no application id; identified by their exact tables) are upgraded in place.
- A new store is built whole in a temporary file beside the path, then linked into place.
- Every record row carries ``fields_crc`` and ``vector_crc`` (CRC-32, zlib's), whose byte
  layout is documented in ``storage/checksum.rs``.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import time
import zlib
from urllib.parse import quote

from .exceptions import IncompatibleStoreError, NotAStoreError, StorageError

APPLICATION_ID = 0x4665526D  # "FeRm"
SCHEMA_VERSION = 2
_MAGIC = b"SQLite format 3\x00"

TABLES = (
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE records(id TEXT PRIMARY KEY, content TEXT NOT NULL, scope TEXT NOT NULL,"
    " categories TEXT NOT NULL, metadata TEXT NOT NULL, importance REAL NOT NULL,"
    " created_at REAL NOT NULL, last_accessed REAL NOT NULL, source TEXT,"
    " private INTEGER NOT NULL, vector BLOB NOT NULL, seq INTEGER NOT NULL,"
    " fields_crc INTEGER NOT NULL, vector_crc INTEGER NOT NULL)",
    "CREATE INDEX records_seq ON records(seq)",
    "CREATE TABLE tombstones(id TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    "CREATE INDEX tombstones_seq ON tombstones(seq)",
    "INSERT INTO meta(key, value) VALUES ('schema_version', '2'), ('dim', ''), ('seq', '0'), ('epoch', '0')",
)


def _refuse(path: str, what: str, hint: str = "") -> NotAStoreError:
    return NotAStoreError(f"{path} {what}: it is not a ferromem store, and ferromem left it untouched.{hint}")


def inspect(path: str) -> str:
    """ "missing", "store" (this schema version) or "v1"; raises for anything else.

    The header is read through SQLite (``immutable=1``), never with a plain file: closing
    any descriptor of a file drops every POSIX lock this process holds on it, including
    those of its open connections to the same store. Files too short to be a database
    are read directly, for the message."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    if os.path.isdir(path):
        raise _refuse(path, "is a directory")
    if size == 0:
        raise _refuse(
            path,
            "is empty (0 bytes)",
            " A store is never empty: if this file was one, it was truncated, and only a"
            " backup can restore it.",
        )
    if size < 512:
        with open(path, "rb") as f:
            head = f.read(100)
        if _MAGIC.startswith(head[:16]) or head.startswith(_MAGIC):
            raise _refuse(
                path,
                f"is truncated ({size} bytes, shorter than any SQLite database)",
                " If this file was a store, only a backup can restore it.",
            )
        raise _refuse(path, "is not a SQLite database")
    try:
        conn = sqlite3.connect(_uri(path, "immutable=1"), uri=True)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
            user_version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise _refuse(path, "is not a SQLite database") from None
        raise StorageError(f"cannot read {path}: {exc}") from exc
    if application_id == APPLICATION_ID:
        if user_version > SCHEMA_VERSION:
            raise IncompatibleStoreError(
                f"{path} has ferromem schema version {user_version}; this ferromem reads up"
                f" to version {SCHEMA_VERSION}: upgrade ferromem (the store is left as it is)"
            )
        return "store"
    if application_id != 0:
        raise _refuse(
            path,
            f"is a SQLite database of another application (application_id"
            f" {application_id & 0xFFFFFFFF:#010x})",
        )
    if _is_version_1(path):
        return "v1"
    raise _refuse(path, "is a SQLite database of another application (its tables are not a store's)")


def _uri(path: str, params: str) -> str:
    return "file:" + quote(os.path.abspath(path), safe="/") + "?" + params


def _is_version_1(path: str) -> bool:
    def look(params: str) -> tuple[list[str], str | None]:
        conn = sqlite3.connect(_uri(path, params), uri=True)
        try:
            tables = [
                r[0]
                for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            ]
            version = None
            if "meta" in tables:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                version = row[0] if row else None
            return tables, version
        finally:
            conn.close()

    try:
        tables, version = look("immutable=1")
        wal = path + "-wal"
        if not tables and os.path.exists(wal) and os.path.getsize(wal) > 0:
            tables, version = look("mode=ro")
    except sqlite3.Error:
        return False
    return tables == ["meta", "records", "tombstones"] and version == "1"


def create(path: str) -> None:
    """Makes a new empty store at ``path`` (whole, then linked into place); returns quietly
    when another process made it first."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(
        directory,
        f".{os.path.basename(path)}.new-{os.getpid()}-{time.time_ns() & 0xFFFFFFFF:08x}",
    )
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA page_size = 32768")
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("BEGIN")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for statement in TABLES:
                conn.execute(statement)
            conn.execute("COMMIT")
        finally:
            conn.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won
        except OSError:
            if not os.path.exists(path):  # a file system without hard links
                os.rename(tmp, path)
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"cannot create a store at {path}: {exc}") from exc
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(tmp + suffix)
            except OSError:
                pass


def upgrade_from_1(conn: sqlite3.Connection) -> None:
    """Adds and fills the checksum columns of a version 1 store; the caller holds the write
    transaction (BEGIN IMMEDIATE) and commits."""
    if conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID:
        return  # another process upgraded it first
    conn.execute("ALTER TABLE records ADD COLUMN fields_crc INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE records ADD COLUMN vector_crc INTEGER NOT NULL DEFAULT 0")
    sums = []
    for row in conn.execute(
        "SELECT rowid, id, content, scope, categories, metadata, importance, created_at,"
        " last_accessed, source, private, vector FROM records"
    ):
        rowid, *fields, blob = row
        if isinstance(blob, bytes):
            sums.append((fields_crc(*fields), vector_crc(blob), rowid))
    conn.executemany("UPDATE records SET fields_crc = ?, vector_crc = ? WHERE rowid = ?", sums)
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _text(value: str | bytes) -> bytes:
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
    return struct.pack("<I", len(data)) + data


def fields_crc(
    record_id: str,
    content: str,
    scope: str,
    categories_json: str,
    metadata_json: str,
    importance: float,
    created_at: float,
    last_accessed: float,
    source: str | None,
    private: bool | int,
) -> int:
    """The CRC-32 of a record's fields in the layout of ``storage/checksum.rs``."""
    data = b"".join(_text(x) for x in (record_id, content, scope, categories_json, metadata_json))
    data += struct.pack("<ddd", float(importance), float(created_at), float(last_accessed))
    data += b"\x00" if source is None else b"\x01" + _text(source)
    data += b"\x01" if private else b"\x00"
    return zlib.crc32(data)


def vector_crc(blob: bytes) -> int:
    return zlib.crc32(blob)
