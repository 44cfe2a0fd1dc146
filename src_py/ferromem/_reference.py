"""ReferenceEngine: the engine interface of docs/architecture.md in NumPy and sqlite3.

It is the oracle of the tests and the fallback when the native engine cannot load, so
it is written for obvious correctness rather than speed: exact brute-force cosine
(float64 arithmetic on the stored float32 vectors), filters evaluated record by record,
and the same SQLite schema as the native engine so that either can open the other's
files.

State: a dict of records in memory (the source of answers) mirrored, when a path is
given, in SQLite. Every write is one ``BEGIN IMMEDIATE`` transaction that first catches
up with what other connections committed, then validates against that fresh state,
writes, commits, and only then changes memory. Reads ask ``PRAGMA data_version`` whether
another connection committed and, if so, apply the rows and tombstones stamped with a
newer ``seq`` (or reload everything when ``epoch`` changed, i.e. after a reset).
"""

from __future__ import annotations

import builtins
import collections
import dataclasses
import functools
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from . import _buffers, _storefile
from . import _validate as check
from ._schema import Filter, Patch, RecordBatch, RecordRow, record_field_names
from .exceptions import (
    CorruptStoreError,
    DimensionMismatchError,
    DuplicateIdError,
    IncompatibleStoreError,
    InvalidInputError,
    InvalidMetadataError,
    InvalidVectorError,
    NotAStoreError,
    ReadOnlyStoreError,
    StorageError,
    StoreClosedError,
)

__all__ = ["ReferenceEngine", "scope_matches", "child_of"]

SCHEMA_VERSION = str(_storefile.SCHEMA_VERSION)

_RECORD_COLUMNS = (
    "id, content, scope, categories, metadata, importance, created_at, last_accessed, source, private, vector"
)
# Selected for reads: the record, then its two checksums.
_READ_COLUMNS = _RECORD_COLUMNS + ", fields_crc, vector_crc"
_UPSERT_SQL = (
    f"INSERT OR REPLACE INTO records({_RECORD_COLUMNS}, seq, fields_crc, vector_crc)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_BUSY_TIMEOUT_MS = 60_000
# Beyond SQLite's own busy timeout, lock errors are retried for this long: a writer
# that holds the lock longer than this is stuck, and the caller should hear about it.
_LOCK_RETRY_S = 600.0
_LATENCY_SAMPLES = 4096
# Queries are scored in chunks so that a large batch against a large store does not
# allocate one (nq x n) float64 matrix at once.
_SCORE_CHUNK_ELEMENTS = 1 << 22


_MISSING = object()


# --------------------------------------------------------------------------- semantics


def scope_matches(prefix: str | None, scope: str) -> bool:
    """The scope rule: ``prefix`` matches ``scope`` when they are equal, or ``scope``
    starts with ``prefix`` and the next character is '/' or the prefix's last character
    is not alphanumeric. ``None``, '' and '/' match everything."""
    if prefix is None or prefix == "" or prefix == "/":
        return True
    if not scope.startswith(prefix):
        return False
    if len(scope) == len(prefix):
        return True
    if scope[len(prefix)] == "/":
        return True
    return not prefix[-1].isalnum()


def child_of(parent: str, scope: str) -> str | None:
    """The direct child of ``parent`` on the way to ``scope``, if ``scope`` lies strictly
    below it: ``child_of('/a', '/a/b/c') == '/a/b'``."""
    parent = parent or "/"
    if parent == "/":
        if not scope.startswith("/"):
            return None
        rest = scope[1:]
    else:
        if not scope.startswith(parent):
            return None
        rest = scope[len(parent) :]
        if not rest.startswith("/"):
            return None
        rest = rest[1:]
    if not rest:
        return None
    end = rest.find("/")
    if end < 0:
        end = len(rest)
    return scope[: len(scope) - len(rest) + end]


def _scalar_key(value: Any) -> tuple | None:
    """The equality key of a scalar: numbers compare numerically (1 == 1.0), booleans are
    not numbers, None is JSON null. Non-scalars have no key."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        try:
            return ("num", float(value))
        except OverflowError:  # an integer beyond float range equals no filter value
            return None
    if isinstance(value, str):
        return ("str", value)
    return None


class _Stored:
    """One record in memory: the fields of the schema's RecordRow (in its order), and
    the metadata's scalars for where-filters. Replaced, never mutated."""

    __slots__ = (*record_field_names(), "scalars")

    def __init__(
        self,
        record_id: str,
        content: str,
        scope: str,
        categories: Iterable[str],
        metadata_json: str,
        importance: float,
        created_at: float,
        last_accessed: float,
        source: str | None,
        private: bool,
        vector: np.ndarray,
        scalars: dict[str, tuple] | None = None,
    ):
        self.id = record_id
        self.content = content
        self.scope = scope
        self.categories = tuple(categories)
        self.metadata_json = metadata_json
        self.importance = float(importance)
        self.created_at = float(created_at)
        self.last_accessed = float(last_accessed)
        self.source = source
        self.private = bool(private)
        self.vector = vector
        self.scalars = _metadata_scalars(metadata_json) if scalars is None else scalars

    def replace(self, **changes: Any) -> _Stored:
        values = {name: getattr(self, name) for name in self.__slots__}
        if "metadata_json" in changes:
            values["scalars"] = None  # re-derived from the new metadata
        values.update(changes)
        values["record_id"] = values.pop("id")
        return _Stored(**values)

    def record_row(self) -> RecordRow:
        """The record as the engine interface returns it (the vector is shared: it is
        read-only)."""
        fields = {name: getattr(self, name) for name in record_field_names()}
        fields["categories"] = list(self.categories)
        return RecordRow(**fields)

    def as_row(self, seq: int) -> tuple:
        fields = (
            self.id,
            self.content,
            self.scope,
            json.dumps(list(self.categories), ensure_ascii=False),
            self.metadata_json,
            float(self.importance),
            float(self.created_at),
            float(self.last_accessed),
            self.source,
            int(self.private),
        )
        blob = self.vector.astype("<f4", copy=False).tobytes()
        return (*fields, blob, seq, _storefile.fields_crc(*fields), _storefile.vector_crc(blob))


def _metadata_scalars(metadata_json: str) -> dict[str, tuple]:
    try:
        metadata = json.loads(metadata_json)
    except (TypeError, ValueError) as exc:
        raise InvalidMetadataError(f"metadata is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise InvalidMetadataError("metadata must be a JSON object (a dict)")
    scalars = {}
    for key, value in metadata.items():
        scalar = _scalar_key(value)
        if scalar is not None:
            scalars[key] = scalar
    return scalars


def _readonly_vector(values: Any) -> np.ndarray:
    vector = np.array(values, dtype=np.float32, copy=True).reshape(-1)
    vector.flags.writeable = False
    return vector


def _check_matrix(vectors: Any, dim: int | None) -> np.ndarray:
    """Re-checks what would corrupt state: shape, finite, non-zero rows (through the
    facade's own intake, so with its wording), then the store's dimension (with the
    native engine's wording: the one a caller sees from either engine)."""
    matrix = _buffers.as_matrix(vectors)
    if dim is not None and matrix.shape[1] != dim:
        raise DimensionMismatchError(
            f"vector has {matrix.shape[1]} dimensions but the store holds {dim}-dimensional vectors",
            expected=dim,
            got=matrix.shape[1],
        )
    return matrix


# The native engine's range of a stored vector's largest absolute value (its f32 kernels
# stay exact inside it; docs/architecture.md, "Extreme magnitudes"). This engine scores in
# float64 and would cope with more, but both engines accept the same stores.
MIN_STORED_MAGNITUDE = 2.0**-100
MAX_STORED_MAGNITUDE = 2.0**100


def _check_stored_range(matrix: np.ndarray) -> None:
    largest = np.abs(matrix).max(axis=1)
    bad = np.flatnonzero((largest < MIN_STORED_MAGNITUDE) | (largest > MAX_STORED_MAGNITUDE))
    if bad.size:
        row = int(bad[0])
        raise InvalidVectorError(
            f"vector {row} has largest absolute value {float(largest[row]):e}: a stored "
            "vector's largest absolute value must lie between 2^-100 (about 7.9e-31) and "
            "2^100 (about 1.3e30); cosine similarity does not depend on scale, so rescale "
            "it (e.g. divide it by its norm)"
        )


class _Filter:
    """A canonical filter dict (docs/architecture.md), prepared for record-by-record tests."""

    __slots__ = (
        "scope",
        "categories",
        "where",
        "source",
        "include_private",
        "visible_to",
        "older_than",
        "ids",
    )

    def __init__(self, flt: Filter | None):
        flt = Filter() if flt is None else flt
        self.scope = flt.scope
        self.categories = None if flt.categories is None else frozenset(flt.categories)
        if flt.where:
            keyed = []
            for key, value in flt.where:
                scalar = _scalar_key(check.where_value(value, f"where[{key!r}]"))
                assert scalar is not None  # where_value lets only scalars through
                keyed.append((key, scalar))
            self.where: list[tuple[str, tuple]] | None = keyed
        else:
            self.where = None
        self.source = flt.source
        self.include_private = bool(flt.include_private)
        self.visible_to = flt.visible_to
        self.older_than = flt.older_than
        self.ids = None if flt.ids is None else frozenset(flt.ids)

    def is_empty(self) -> bool:
        """True when the filter restricts nothing (a scope of '/' matches everything)."""
        return (
            self.scope in (None, "", "/")
            and self.categories is None
            and self.where is None
            and self.source is None
            and self.include_private
            and self.older_than is None
            and self.ids is None
        )

    def matches(self, record: _Stored) -> bool:
        if self.ids is not None and record.id not in self.ids:
            return False
        if self.scope is not None and not scope_matches(self.scope, record.scope):
            return False
        if self.categories is not None and self.categories.isdisjoint(record.categories):
            return False
        if self.where is not None:
            for key, wanted in self.where:
                if record.scalars.get(key, _MISSING) != wanted:
                    return False
        if self.source is not None and record.source != self.source:
            return False
        if not self.include_private and record.private:
            if self.visible_to is None or record.source != self.visible_to:
                return False
        if self.older_than is not None and not record.created_at < self.older_than:
            return False
        return True


# --------------------------------------------------------------------------- sqlite help


class _SqlRow(NamedTuple):
    """A row of the records table as ``_READ_COLUMNS`` selects it (values as SQLite
    returns them, unchecked)."""

    id: Any
    content: Any
    scope: Any
    categories: Any  # a JSON list text
    metadata: Any  # a JSON object text
    importance: Any
    created_at: Any
    last_accessed: Any
    source: Any
    private: Any  # 0 or 1
    vector: Any  # little-endian float32 bytes
    fields_crc: Any
    vector_crc: Any


def _row_damage(row: _SqlRow) -> str | None:
    """What fails in a stored row ("unreadable", "fields", "vector"), or None when it is
    whole; the layout is ``storage/checksum.rs``'s."""
    texts = (row.id, row.content, row.scope, row.categories, row.metadata)
    numbers = (row.importance, row.created_at, row.last_accessed)
    if (
        not all(isinstance(t, str) for t in texts)
        or not all(isinstance(x, (int, float)) for x in numbers)
        or not (row.source is None or isinstance(row.source, str))
        or row.private not in (0, 1)
        or not isinstance(row.vector, bytes)
        or not isinstance(row.fields_crc, int)
        or not isinstance(row.vector_crc, int)
    ):
        return "unreadable"
    if _storefile.fields_crc(*texts, *numbers, row.source, row.private) != row.fields_crc:
        return "fields"
    if _storefile.vector_crc(row.vector) != row.vector_crc:
        return "vector"
    return None


def _describe_damage(d: dict[str, Any]) -> str:
    what = {
        "vector": "its vector fails its checksum",
        "fields": "its fields fail their checksum",
    }.get(d["what"], "its stored values cannot be decoded")
    return f"record {d['id']!r}: {what}"


def _sqlite_error_name(exc: sqlite3.Error) -> str:
    return getattr(exc, "sqlite_errorname", "") or ""


def _is_busy(exc: sqlite3.Error) -> bool:
    name = _sqlite_error_name(exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return True
    message = str(exc).lower()
    return "database is locked" in message or "database table is locked" in message


def _storage_error(exc: sqlite3.Error, path: str | None) -> StorageError:
    name = _sqlite_error_name(exc)
    message = str(exc)
    if (
        name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT"))
        or "file is not a database" in message
        or "malformed" in message
    ):
        return CorruptStoreError(
            f"{path!r} is not a readable ferromem store ({message}); check the path, or "
            "restore the file from a backup"
        )
    return StorageError(f"storage error on {path!r}: {message}")


def _parse_dim(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        dim = int(text)
    except ValueError:
        raise CorruptStoreError(f"the store's dimension {text!r} is not an integer") from None
    if dim < 1:
        raise CorruptStoreError(f"the store's dimension {dim} is not positive")
    return dim


def _operation(name: str, *, sync: bool = True) -> Callable:
    """Wraps an engine method: lock, closed check, catch-up (reads), latency sample.

    Operation names are those the native engine reports (add, upsert, search, get,
    update, touch, delete, list, count, scopes, reset, open), so stats read the same."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self: ReferenceEngine, *args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self._check_open()
                started = time.perf_counter_ns()
                self._current_op = name
                try:
                    if sync:
                        self._sync()
                    return method(self, *args, **kwargs)
                finally:
                    self._record_latency(self._current_op, time.perf_counter_ns() - started)

        return wrapper

    return decorate


# --------------------------------------------------------------------------- engine


class ReferenceEngine:
    """The NumPy engine. Same interface as ``ferromem._core.Engine``."""

    def __init__(
        self,
        path: str | None,
        dim: int | None,
        durability: str = "normal",
        *,
        read_only: bool = False,
    ):
        if durability not in ("normal", "full"):
            raise InvalidInputError(f"durability must be 'normal' or 'full', got {durability!r}")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise InvalidInputError(f"dim must be a positive int or None, got {dim!r}")
        self._lock = threading.RLock()
        self._path = path
        self._closed = False
        self._read_only = bool(read_only)
        self._version_1 = False  # a version 1 store opened read-only: no checksums to check
        self._records: dict[str, _Stored] = {}
        # Rows that fail their checksums, by id as stored: kept out of _records, reported.
        self._damaged: dict[str, dict[str, Any]] = {}
        self._dim: int | None = None
        self._seq = 0
        self._epoch = 0
        self._data_version: int | None = None
        self._conn: sqlite3.Connection | None = None
        # (ids in arena order, float64 vectors, norms), rebuilt after writes.
        self._arena: tuple[list[str], np.ndarray, np.ndarray] | None = None
        self._latency_us: dict[str, collections.deque] = {}
        self._op_counts: collections.Counter = collections.Counter()
        self._current_op = "open"
        started = time.perf_counter_ns()
        if path is None:
            self._dim = dim
        else:
            self._open_database(path, dim, durability)
        self._record_latency("open", time.perf_counter_ns() - started)

    # ----------------------------------------------------------------- properties

    @property
    def dim(self) -> int | None:
        with self._lock:
            self._check_open()
            self._sync()
            return self._dim

    @property
    def path(self) -> str | None:
        return self._path

    # ----------------------------------------------------------------- plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed; open it again to use it")

    def _record_latency(self, name: str, elapsed_ns: int) -> None:
        samples = self._latency_us.get(name)
        if samples is None:
            samples = self._latency_us[name] = collections.deque(maxlen=_LATENCY_SAMPLES)
        samples.append(elapsed_ns / 1000.0)
        self._op_counts[name] += 1

    def _retrying(self, attempt: Callable[[], Any]) -> Any:
        """Runs ``attempt`` until it does not fail on a lock; maps sqlite3 errors."""
        deadline = time.monotonic() + _LOCK_RETRY_S
        delay = 0.001
        while True:
            try:
                return attempt()
            except sqlite3.Error as exc:
                if _is_busy(exc) and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.1)
                    continue
                raise _storage_error(exc, self._path) from exc

    def _open_database(self, path: str, dim: int | None, durability: str) -> None:
        found = _storefile.inspect(path)
        if found == "missing":
            if self._read_only:
                raise NotAStoreError(f"{path} does not exist: there is no store to open read-only")
            _storefile.create(path)
            found = _storefile.inspect(path)
        self._version_1 = found == "v1"
        try:
            conn = sqlite3.connect(
                _storefile._uri(path, "mode=ro") if self._read_only else path,
                uri=self._read_only,
                timeout=_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # autocommit; transactions are explicit
                check_same_thread=False,  # guarded by self._lock
            )
        except sqlite3.Error as exc:
            raise _storage_error(exc, path) from exc
        try:
            self._conn = conn

            def configure() -> None:
                conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise CorruptStoreError(f"{path} is not in WAL mode (got {mode}), as every store is")
                synchronous = "FULL" if durability == "full" else "NORMAL"
                conn.execute(f"PRAGMA synchronous = {synchronous}")

            self._retrying(configure)
            self._retrying(lambda: self._initialise(dim))
        except BaseException:
            self._conn = None
            conn.close()
            raise

    def _initialise(self, dim: int | None) -> None:
        """Creates the schema if absent, checks version and dimension, loads everything."""
        conn = self._conn
        assert conn is not None
        data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        conn.execute("BEGIN" if self._read_only else "BEGIN IMMEDIATE")
        try:
            if self._version_1 and not self._read_only:
                _storefile.upgrade_from_1(conn)
                self._version_1 = False
            # The header again, through the connection: a change still in the WAL shows here.
            user_version = conn.execute("PRAGMA user_version").fetchone()[0]
            if user_version > _storefile.SCHEMA_VERSION:
                raise IncompatibleStoreError(
                    f"{self._path} has ferromem schema version {user_version}; this ferromem "
                    f"reads up to version {SCHEMA_VERSION}: upgrade ferromem (the store is "
                    "left as it is)"
                )
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            expected = "1" if self._version_1 else SCHEMA_VERSION
            if meta.get("schema_version") != expected:
                raise CorruptStoreError(
                    f"{self._path}: its header says ferromem schema {expected} but its meta "
                    f"table says {meta.get('schema_version')!r}"
                )
            stored_dim = _parse_dim(meta.get("dim"))
            if dim is not None and stored_dim is not None and dim != stored_dim:
                raise DimensionMismatchError(
                    f"the store at {self._path!r} holds {stored_dim}-dimensional vectors "
                    f"but dim={dim} was given; open it without dim, or with dim={stored_dim}",
                    expected=stored_dim,
                    got=dim,
                )
            if dim is not None and stored_dim is None and not self._read_only:
                # Declaring the dimension is a change other connections must notice.
                seq = int(meta.get("seq", "0")) + 1
                conn.executemany(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    [("dim", str(dim)), ("seq", str(seq))],
                )
            self._load_all()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._data_version = data_version

    def _read_meta(self) -> tuple[int, int, int | None]:
        assert self._conn is not None
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("schema_version") != ("1" if self._version_1 else SCHEMA_VERSION):
            raise IncompatibleStoreError(
                f"{self._path!r} now has schema version {meta.get('schema_version')!r}; "
                f"this version of ferromem reads {SCHEMA_VERSION!r}"
            )
        try:
            seq = int(meta.get("seq", "0"))
            epoch = int(meta.get("epoch", "0"))
        except ValueError:
            raise CorruptStoreError(f"{self._path!r} has a malformed change sequence") from None
        return seq, epoch, _parse_dim(meta.get("dim"))

    def _row_to_stored(self, row: tuple, seq: int, dim: int | None) -> _Stored | None:
        """The record of a row, or None (and the row quarantined) when it fails its
        checksums or cannot be decoded."""
        stored = _SqlRow._make(row)
        record_id, blob = stored.id, stored.vector
        damage = None if self._version_1 else _row_damage(stored)
        if damage is not None:
            if isinstance(record_id, bytes):
                record_id = record_id.decode("utf-8", "replace")
            record_id = str(record_id)
            self._records.pop(record_id, None)
            self._damaged[record_id] = {"id": record_id, "seq": seq, "what": damage}
            return None
        self._damaged.pop(record_id, None)
        try:
            category_list = json.loads(stored.categories)
        except ValueError:
            raise CorruptStoreError(f"record {record_id!r} has malformed categories") from None
        if not isinstance(blob, bytes) or len(blob) % 4 != 0 or (dim is not None and len(blob) != 4 * dim):
            size = len(blob) if isinstance(blob, bytes) else "?"
            raise CorruptStoreError(
                f"record {record_id!r} has a vector of {size} bytes, which does not fit the "
                f"store's dimension {dim}"
            )
        vector = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        vector.flags.writeable = False
        try:
            return _Stored(
                record_id,
                stored.content,
                stored.scope,
                category_list,
                stored.metadata,
                stored.importance,
                stored.created_at,
                stored.last_accessed,
                stored.source,
                bool(stored.private),
                vector,
            )
        except InvalidMetadataError as exc:
            raise CorruptStoreError(f"record {record_id!r} has malformed metadata: {exc}") from None

    def _select_records(self, tail: str = "", args: tuple = ()) -> Any:
        assert self._conn is not None
        columns = _RECORD_COLUMNS + ", NULL, NULL" if self._version_1 else _READ_COLUMNS
        return self._conn.execute(f"SELECT {columns}, seq FROM records {tail}", args)

    def _load_all(self) -> None:
        """Replaces memory with the database's content (inside a read snapshot)."""
        assert self._conn is not None
        seq, epoch, dim = self._read_meta()
        records = {}
        self._damaged = {}
        for *row, row_seq in self._select_records():
            stored = self._row_to_stored(tuple(row), row_seq, dim)
            if stored is not None:
                records[stored.id] = stored
        self._records = records
        self._dim = dim
        self._seq = seq
        self._epoch = epoch
        self._arena = None

    def _catch_up(self) -> None:
        """Applies what other connections committed since self._seq (inside a snapshot)."""
        assert self._conn is not None
        seq, epoch, dim = self._read_meta()
        if epoch != self._epoch or seq < self._seq:
            self._load_all()  # a reset (or a replaced file): start over
            return
        self._dim = dim
        if seq == self._seq:
            return
        changed = [
            stored
            for *row, row_seq in self._select_records("WHERE seq > ?", (self._seq,))
            if (stored := self._row_to_stored(tuple(row), row_seq, dim)) is not None
        ]
        deleted = [
            row[0] for row in self._conn.execute("SELECT id FROM tombstones WHERE seq > ?", (self._seq,))
        ]
        for stored in changed:
            self._records[stored.id] = stored
        for record_id in deleted:
            self._records.pop(record_id, None)
            self._damaged.pop(record_id, None)
        self._seq = seq
        self._arena = None

    def _sync(self) -> None:
        """Catches up when another connection committed since we last looked."""
        conn = self._conn
        if conn is None:
            return

        def attempt() -> None:
            # Read data_version before the snapshot: a commit that lands in between is
            # applied now and merely triggers one more (empty) catch-up next time.
            data_version = conn.execute("PRAGMA data_version").fetchone()[0]
            if data_version == self._data_version:
                return
            conn.execute("BEGIN")
            try:
                self._catch_up()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._data_version = data_version

        self._retrying(attempt)

    def _write(self, plan: Callable[[int], tuple[Any, list, Callable[[], None]]]) -> Any:
        """Runs one write: ``plan(seq)`` validates against the caught-up state and returns
        (result, sql statements [(sql, rows)], apply-to-memory callback). The statements
        run in one transaction; memory changes only after COMMIT succeeded."""
        conn = self._conn
        if conn is None:
            result, statements, apply = plan(self._seq + 1)
            if statements:
                apply()
                self._seq += 1
                self._arena = None
            return result

        if self._read_only:
            raise ReadOnlyStoreError(
                f"{self._path} was opened read-only: open it without read_only=True to change it"
            )

        def attempt() -> Any:
            data_version = conn.execute("PRAGMA data_version").fetchone()[0]
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._catch_up()
                seq = self._seq + 1
                result, statements, apply = plan(seq)
                if statements:
                    for sql, rows in statements:
                        conn.executemany(sql, rows)
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (str(seq),))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._data_version = data_version
            if statements:
                apply()
                self._seq = seq
                self._arena = None
            return result

        return self._retrying(attempt)

    def _set_dim_statement(self, dim: int) -> tuple[str, list]:
        return ("INSERT OR REPLACE INTO meta(key, value) VALUES ('dim', ?)", [(str(dim),)])

    def _matching(self, flt: Filter | None) -> list[_Stored]:
        prepared = _Filter(flt)
        return [record for record in self._records.values() if prepared.matches(record)]

    def _arena_matrix(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(ids, their vectors as float64 rows, the rows' norms), rebuilt after writes."""
        if self._arena is None:
            ids = list(self._records)
            if ids:
                matrix = np.stack([self._records[i].vector for i in ids]).astype(np.float64)
            else:
                matrix = np.zeros((0, self._dim or 0), dtype=np.float64)
            self._arena = (ids, matrix, np.linalg.norm(matrix, axis=1))
        return self._arena

    # ----------------------------------------------------------------- writes

    @_operation("write", sync=False)
    def upsert(self, batch: RecordBatch, mode: str) -> None:
        self._current_op = "add" if mode == "insert" else "upsert"
        if mode not in ("insert", "upsert"):
            raise InvalidInputError(f"mode must be 'insert' or 'upsert', got {mode!r}")
        ids = batch.id
        n = len(ids)
        columns = [getattr(batch, name) for name in record_field_names() if name != "vector"]
        if any(len(column) != n for column in columns):
            raise InvalidInputError("every field needs one value per id")
        check.check_unique_ids(ids)
        matrix = _check_matrix(batch.vector, None)
        _check_stored_range(matrix)
        check.check_vector_count(n, matrix.shape[0])
        # Each record's values in the schema's order, the vector last.
        new_records = [
            _Stored(*[column[i] for column in columns] + [_readonly_vector(matrix[i])]) for i in range(n)
        ]

        def plan(seq: int) -> tuple[None, list, Callable[[], None]]:
            if self._dim is not None and matrix.shape[1] != self._dim:
                _check_matrix(matrix, self._dim)  # raises DimensionMismatchError
            if mode == "insert":
                for record_id in ids:
                    if record_id in self._records:
                        raise DuplicateIdError(f"id {record_id!r} already exists; use upsert to replace it")
            new_dim = matrix.shape[1] if self._dim is None else None
            statements: builtins.list[tuple[str, Any]] = [
                # Generators: the rows are only built when a database executes them.
                (_UPSERT_SQL, (record.as_row(seq) for record in new_records)),
                ("DELETE FROM tombstones WHERE id = ?", ((record_id,) for record_id in ids)),
            ]
            if new_dim is not None:
                statements.append(self._set_dim_statement(new_dim))

            def apply() -> None:
                if new_dim is not None:
                    self._dim = new_dim
                for record in new_records:
                    self._records[record.id] = record
                    self._damaged.pop(record.id, None)  # saved again: whole

            return None, statements, apply

        self._write(plan)

    @_operation("update", sync=False)
    def update(self, id: str, patch: Patch) -> bool:
        changes = patch.changes()
        vector = None
        if "vector" in changes:
            vector = _check_matrix(changes.pop("vector"), None)
            if vector.shape[0] != 1:
                raise InvalidVectorError("update takes exactly one vector")
            _check_stored_range(vector)
        if "metadata_json" in changes:
            _metadata_scalars(changes["metadata_json"])  # raises on a non-object
        if "categories" in changes:
            changes["categories"] = tuple(changes["categories"])

        def plan(seq: int) -> tuple[bool, list, Callable[[], None]]:
            current = self._records.get(id)
            if current is None:
                return False, [], lambda: None
            record_changes = dict(changes)
            if vector is not None:
                _check_matrix(vector, self._dim)
                record_changes["vector"] = _readonly_vector(vector[0])
            updated = current.replace(**record_changes)

            def apply() -> None:
                self._records[id] = updated

            return True, [(_UPSERT_SQL, [updated.as_row(seq)])], apply

        return self._write(plan)

    @_operation("touch", sync=False)
    def touch(self, ids: list[str], t: float) -> int:
        wanted = list(dict.fromkeys(ids))
        t = float(t)

        def plan(seq: int) -> tuple[int, list, Callable[[], None]]:
            existing = [record_id for record_id in wanted if record_id in self._records]
            if not existing:
                return 0, [], lambda: None
            touched = {i: self._records[i].replace(last_accessed=t) for i in existing}
            # The fields' checksum covers last_accessed; the vector and its sum stay.
            statements = [
                (
                    "UPDATE records SET last_accessed = ?, seq = ?, fields_crc = ? WHERE id = ?",
                    [(t, seq, touched[i].as_row(seq)[-2], i) for i in existing],
                )
            ]

            def apply() -> None:
                self._records.update(touched)

            return len(existing), statements, apply

        return self._write(plan)

    @_operation("delete", sync=False)
    def delete(self, ids: list[str] | None = None, filter: Filter | None = None) -> int:
        flt = check.require_delete_criterion(ids, Filter() if filter is None else filter)
        only_ids = ids is not None and not dataclasses.replace(flt, ids=None).restricts()
        if ids is not None:
            wanted = set(ids)
            flt = dataclasses.replace(flt, ids=list(wanted if flt.ids is None else wanted & set(flt.ids)))
        _Filter(flt)  # reject a malformed filter before the transaction

        def plan(seq: int) -> tuple[int, list, Callable[[], None]]:
            doomed = [record.id for record in self._matching(flt)]
            if only_ids:  # damaged records are deleted by id (how a user clears them)
                doomed += [i for i in dict.fromkeys(flt.ids or ()) if i in self._damaged]
            if not doomed:
                return 0, [], lambda: None
            statements = [
                ("DELETE FROM records WHERE id = ?", [(record_id,) for record_id in doomed]),
                (
                    "INSERT OR REPLACE INTO tombstones(id, seq) VALUES (?, ?)",
                    [(record_id, seq) for record_id in doomed],
                ),
            ]

            def apply() -> None:
                for record_id in doomed:
                    self._records.pop(record_id, None)
                    self._damaged.pop(record_id, None)

            return len(doomed), statements, apply

        return self._write(plan)

    @_operation("reset", sync=False)
    def reset(self) -> None:
        def plan(seq: int) -> tuple[None, list, Callable[[], None]]:
            epoch = self._epoch + 1
            statements = [
                ("DELETE FROM records", [()]),
                ("DELETE FROM tombstones", [()]),
                (
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    [("dim", ""), ("epoch", str(epoch))],
                ),
            ]

            def apply() -> None:
                self._records = {}
                self._dim = None
                self._epoch = epoch

            return None, statements, apply

        self._write(plan)

    # ----------------------------------------------------------------- reads

    @_operation("search")
    def search(
        self, queries: Any, k: int, filter: Filter | None = None, min_score: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k must be an int >= 1, got {k!r}")
        if min_score is not None and not math.isfinite(float(min_score)):
            raise InvalidInputError(f"min_score must be finite, got {min_score!r}")
        query_matrix = _check_matrix(queries, self._dim)
        prepared = _Filter(filter)
        nq = query_matrix.shape[0]

        arena_ids, arena, arena_norms = self._arena_matrix()
        if prepared.is_empty():
            candidate_ids, candidate_matrix, candidate_norms = arena_ids, arena, arena_norms
        else:
            candidates = [
                i for i, record_id in enumerate(arena_ids) if prepared.matches(self._records[record_id])
            ]
            candidate_ids = [arena_ids[i] for i in candidates]
            candidate_matrix = arena[candidates]
            candidate_norms = arena_norms[candidates]

        out_ids: list[str] = []
        out_scores: list[float] = []
        offsets = np.zeros(nq + 1, dtype=np.int64)
        if candidate_ids:
            q64 = query_matrix.astype(np.float64)
            query_norms = np.linalg.norm(q64, axis=1)
            chunk = max(1, _SCORE_CHUNK_ELEMENTS // len(candidate_ids))
            for start in range(0, nq, chunk):
                stop = min(start + chunk, nq)
                # cos = q.v / (|q| |v|) on the raw values: exact dot products stay exact
                # (orthogonal vectors score exactly 0), which normalising first would lose.
                dots = q64[start:stop] @ candidate_matrix.T
                cosines = dots / (query_norms[start:stop, None] * candidate_norms[None, :])
                # Rank on the float32 scores that are reported, so that equal reported
                # scores are ordered by id as the contract says.
                scores = cosines.astype(np.float32)
                for row_index, row in enumerate(scores):
                    top = self._top_k(row, candidate_ids, k, min_score)
                    out_ids.extend(candidate_ids[i] for i in top)
                    out_scores.extend(row[i] for i in top)
                    offsets[start + row_index + 1] = len(out_ids)
        ids_array = np.empty(len(out_ids), dtype=object)
        ids_array[:] = out_ids
        return ids_array, np.asarray(out_scores, dtype=np.float32), offsets

    @staticmethod
    def _top_k(scores: np.ndarray, ids: list[str], k: int, min_score: float | None) -> list[int]:
        """Indices of the k best: score descending, ties by id ascending."""
        if min_score is None:
            keep = np.arange(len(scores))
        else:
            keep = np.flatnonzero(scores.astype(np.float64) >= min_score)
        if len(keep) > k:
            # Every index whose score reaches the k-th best survives, ties included,
            # so the exact sort below can order the boundary ties by id.
            kth_best = np.partition(scores[keep], len(keep) - k)[len(keep) - k]
            keep = keep[scores[keep] >= kth_best]
        ordered = sorted(keep.tolist(), key=lambda i: (-float(scores[i]), ids[i]))
        return ordered[:k]

    @_operation("get")
    def get(self, ids: list[str]) -> list[RecordRow | None]:
        result = []
        for record_id in ids:
            record = self._records.get(record_id)
            if record is None and record_id in self._damaged:
                raise CorruptStoreError(
                    f"damaged store: record {record_id!r} fails its checksum on disk. Save "
                    "the record again (or delete it) to clear it; `ferromem check` lists all "
                    "damage"
                )
            result.append(None if record is None else record.record_row())
        return result

    @_operation("list")
    def list(
        self, filter: Filter | None = None, offset: int = 0, limit: int | None = None
    ) -> builtins.list[RecordRow]:
        if offset < 0 or (limit is not None and limit < 0):
            raise InvalidInputError("offset and limit must be >= 0")
        records = sorted(self._matching(filter), key=lambda r: (-r.created_at, r.id))
        end = None if limit is None else offset + limit
        return [record.record_row() for record in records[offset:end]]

    @_operation("count")
    def count(self, filter: Filter | None = None) -> int:
        return len(self._matching(filter))

    @_operation("scopes")
    def child_scopes(self, scope: str | None = None) -> builtins.list[str]:
        return self._child_scopes(scope or "/")

    def _child_scopes(self, scope: str) -> builtins.list[str]:
        children = set()
        for record in self._records.values():
            child = child_of(scope, record.scope)
            if child is not None:
                children.add(child)
        return sorted(children)

    @_operation("scopes")
    def category_counts(self, filter: Filter | None = None) -> dict[str, int]:
        counts: collections.Counter = collections.Counter()
        for record in self._matching(filter):
            counts.update(record.categories)
        return dict(sorted(counts.items()))

    @_operation("scopes")
    def scope_info(self, scope: str | None = None) -> dict[str, Any]:
        scope = scope or "/"
        records = self._matching(Filter(scope=scope))
        categories = sorted({c for record in records for c in record.categories})
        created = [record.created_at for record in records]
        return {
            "path": scope,
            "record_count": len(records),
            "categories": categories,
            "oldest": min(created) if created else None,
            "newest": max(created) if created else None,
            "child_scopes": self._child_scopes(scope),
        }

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._records = {}
            self._damaged = {}
            self._arena = None
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()

    def stats(self) -> dict[str, dict[str, float]]:
        with self._lock:
            self._check_open()
            report = {}
            for name, samples in sorted(self._latency_us.items()):
                values = np.fromiter(samples, dtype=np.float64)
                p50, p95, p99 = np.percentile(values, [50, 95, 99])
                report[name] = {
                    "count": int(self._op_counts[name]),
                    "mean_us": float(values.mean()),
                    "p50_us": float(p50),
                    "p95_us": float(p95),
                    "p99_us": float(p99),
                    "max_us": float(values.max()),
                }
            return report

    def damaged(self) -> builtins.list[dict[str, Any]]:
        """The quarantined records ({"id", "seq", "what"}), like the native engine's
        stats()["damaged"]."""
        with self._lock:
            return sorted((dict(d) for d in self._damaged.values()), key=lambda d: d["id"])

    @property
    def read_only(self) -> bool:
        return self._read_only

    @staticmethod
    def verify(path: str) -> builtins.list[str]:
        """What ``ferromem.check`` reports, read-only (see :func:`ferromem.check`)."""
        engine = ReferenceEngine(path, None, read_only=True)
        try:
            assert engine._conn is not None
            problems = [
                f"SQLite: {line}"
                for (line,) in engine._conn.execute("PRAGMA integrity_check")
                if line != "ok"
            ]
            if engine._version_1:
                problems.append(
                    "the store has schema version 1, whose records carry no checksums: "
                    "open it once for writing to upgrade it"
                )
            problems += [_describe_damage(d) for d in engine._damaged.values()]
            return problems
        finally:
            engine.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"dim={self._dim}, records={len(self._records)}"
        return f"<ReferenceEngine path={self._path!r} {state}>"
