"""File names of the adapters' stores, shared by the CrewAI 1.x and 0.x modules (so it
imports nothing from CrewAI)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ..exceptions import InvalidInputError

__all__ = ["STORE_SUFFIX", "collection_file_name", "path_argument"]

STORE_SUFFIX = ".ferro"

# File names stay under 255 bytes with the store's companions ("-wal", "-shm", ".hnsw"
# and the graph's temporary ".hnsw.tmp<pid>").
_MAX_STEM = 200
_SAFE_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_-")


def collection_file_name(collection_name: str) -> str:
    """The store file name of a collection: the name percent-encoded to lower-case ASCII
    letters, digits, ``_`` and ``-`` (so distinct names stay distinct files on
    case-insensitive file systems and no name leaves the directory), cut and suffixed
    with ``~`` and its SHA-256 when too long for a file name (``~`` occurs nowhere else)."""
    if not isinstance(collection_name, str) or not collection_name:
        raise InvalidInputError(f"collection_name must be a non-empty str, got {collection_name!r}")
    # surrogatepass: a lone surrogate still maps to its own, distinct bytes.
    raw = collection_name.encode("utf-8", "surrogatepass")
    stem = "".join(chr(b) if b in _SAFE_BYTES else f"%{b:02X}" for b in raw)
    if len(stem) > _MAX_STEM:
        digest = hashlib.sha256(raw).hexdigest()
        stem = stem[: _MAX_STEM - len(digest) - 1] + "~" + digest
    return stem + STORE_SUFFIX


def path_argument(value: Any, name: str = "path") -> str:
    """A str or os.PathLike argument as str; InvalidInputError for anything else (bytes
    paths too), the same rule as ferromem.open's path."""
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if isinstance(text, str) and text:
            return text
    raise InvalidInputError(f"{name} must be a non-empty str or os.PathLike path, got {type(value).__name__}")
