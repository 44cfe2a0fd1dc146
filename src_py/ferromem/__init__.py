"""ferromem: fast, safe, embedded vector memory for AI agents.

import ferromem
with ferromem.open("memory.ferro") as store:
    store.add("note-1", embedding, contents="...", scopes="/project/agent")
    hits = store.search(query_embedding, k=5, scope="/project")
"""

__version__ = "0.1.0"

from .aio import AsyncStore, open_async
from .exceptions import (
    CorruptStoreError,
    DamagedCacheWarning,
    DamagedRecordsWarning,
    DeviceError,
    DeviceMemoryError,
    DeviceUnavailableError,
    DimensionMismatchError,
    DuplicateIdError,
    FerromemError,
    IncompatibleStoreError,
    InvalidFilterError,
    InvalidIdError,
    InvalidInputError,
    InvalidMetadataError,
    InvalidVectorError,
    NativeUnavailableWarning,
    NotAStoreError,
    NotFoundError,
    PoolTimeoutError,
    ReadOnlyStoreError,
    StorageError,
    StorageUnavailableError,
    StoreClosedError,
    UnsupportedStoreError,
)
from .records import Record, ScopeInfo
from .store import SearchResult, Store, open
from .store import check_store as check

__all__ = [
    "__version__",
    "open",
    "open_async",
    "check",
    "Store",
    "AsyncStore",
    "SearchResult",
    "Record",
    "ScopeInfo",
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
