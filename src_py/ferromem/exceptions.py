"""The one error hierarchy of ferromem.

Every error ferromem raises on purpose is a :class:`FerromemError`. The classes are
defined here, once, and the native core (Rust) and the data plane (Cython) raise these
very classes, so ``except ferromem.InvalidVectorError`` works whichever engine runs.

Each class also subclasses the builtin a caller would naturally catch: bad values are
``ValueError``, wrong types are ``TypeError``, storage failures are ``OSError``, a
closed store is a ``RuntimeError``, a missing record is a ``KeyError``.
"""

from __future__ import annotations

__all__ = [
    "FerromemError",
    "InvalidInputError",
    "InvalidVectorError",
    "DimensionMismatchError",
    "InvalidMetadataError",
    "InvalidIdError",
    "InvalidFilterError",
    "DuplicateIdError",
    "NotFoundError",
    "StoreClosedError",
    "StorageError",
    "CorruptStoreError",
    "IncompatibleStoreError",
    "NotAStoreError",
    "ReadOnlyStoreError",
    "UnsupportedStoreError",
    "StorageUnavailableError",
    "PoolTimeoutError",
    "DeviceError",
    "DeviceUnavailableError",
    "DeviceMemoryError",
    "NativeUnavailableWarning",
    "DamagedCacheWarning",
    "DamagedRecordsWarning",
]


class FerromemError(Exception):
    """Base class of every error ferromem raises on purpose."""


class InvalidInputError(FerromemError, ValueError):
    """An argument is not acceptable. Raised before anything is written."""


class InvalidVectorError(InvalidInputError):
    """A vector is empty, of the wrong shape, not finite (NaN/inf) or all zeros."""


class DimensionMismatchError(InvalidVectorError):
    """A vector's length differs from the store's dimension (fixed at the first vector).

    ``expected`` and ``got`` hold the two lengths.
    """

    def __init__(self, message: str, expected: int | None = None, got: int | None = None):
        super().__init__(message)
        self.expected = expected
        self.got = got


class InvalidMetadataError(InvalidInputError, TypeError):
    """Metadata is not a JSON object of JSON-serialisable values."""


class InvalidIdError(InvalidInputError, TypeError):
    """A record id is not a non-empty ``str``."""


class InvalidFilterError(InvalidInputError, TypeError):
    """A filter (scope, categories, where, ...) has the wrong type or value."""


class DuplicateIdError(InvalidInputError):
    """``add`` was given an id that already exists (use ``upsert`` to replace)."""


class NotFoundError(FerromemError, KeyError):
    """A record that was required to exist does not."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep messages readable
        return str(self.args[0]) if self.args else ""


class StoreClosedError(FerromemError, RuntimeError):
    """The store was closed; open it again to use it."""


class StorageError(FerromemError, OSError):
    """The durable layer failed (disk full, permission denied, I/O error)."""


class CorruptStoreError(StorageError):
    """A store, or a record in it, is damaged on disk (it fails its checksums, or SQLite
    finds its structure broken). ``ferromem check PATH`` lists all damage."""


class IncompatibleStoreError(StorageError):
    """The store was written by an incompatible (newer) version of ferromem."""


class NotAStoreError(CorruptStoreError):
    """The file at the path is not a ferromem store (another application's database, an
    empty or truncated file, not SQLite at all). ferromem left it byte for byte as it was.
    A CorruptStoreError, which earlier versions raised for such files."""


class ReadOnlyStoreError(StorageError):
    """A write to a store opened with ``read_only=True``."""


class UnsupportedStoreError(InvalidInputError):
    """A store location this build cannot open: an unknown scheme (``mysql://...``) or a
    backend it does not have (``postgresql://...``). Nothing was opened or created."""


class StorageUnavailableError(StorageError):
    """The database server cannot be reached: it stayed unreachable for the store's
    ``reconnect_timeout`` (a PostgreSQL store retries with backoff until then), or a write
    lost its connection too many times before it could commit. Nothing was written."""


class PoolTimeoutError(StorageUnavailableError, TimeoutError):
    """Every pooled connection stayed busy for the store's ``pool_timeout``: the pool is
    exhausted (raise ``pool_size``, or find what holds the connections). Nothing was
    written."""


class DeviceError(FerromemError):
    """A search that must run on a GPU (``device="gpu"``) cannot: none is attached, it
    cannot hold the store, or it failed. Nothing was searched. Under ``device="auto"``
    the same conditions make the search run on the CPU instead."""


class DeviceUnavailableError(DeviceError, RuntimeError):
    """No usable GPU: CuPy is not installed, no CUDA device is visible, or its driver
    failed (the message says which, and what to do about it)."""


class DeviceMemoryError(DeviceError, MemoryError):
    """The store's vectors do not fit the GPU memory they may use (free memory less the
    reserve, and at most ``max_bytes``); ``needed`` and ``available`` are in bytes.
    Nothing of the refused change was applied on the device."""

    def __init__(self, message: str, needed: int | None = None, available: int | None = None):
        super().__init__(message)
        self.needed = needed
        self.available = available


class DamagedRecordsWarning(RuntimeWarning):
    """Records of a store fail their checksums: the store opened without them (they are
    never scored or returned) and ``stats()["damaged"]`` lists them. Saving a record again
    or deleting it by id clears it."""


class NativeUnavailableWarning(RuntimeWarning):
    """The native extension could not be loaded; the NumPy reference engine is used."""


class DamagedCacheWarning(RuntimeWarning):
    """A file ferromem keeps beside a store as a cache (the store image ``<path>.image``
    or the saved graph ``<path>.hnsw``) failed its checksums. It was ignored: the store was
    read from its file and answers correctly; the cache is rebuilt. ``stats()`` says why."""
