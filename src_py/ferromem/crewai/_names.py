"""Where the adapters' stores live: their file names, and their names in a PostgreSQL
database. Shared by the CrewAI 1.x and 0.x modules (so it imports nothing from CrewAI)."""

from __future__ import annotations

import hashlib
import os
from typing import Any, cast

from .._location import MAX_STORE_NAME, DatabaseLocation, store_path
from ..exceptions import InvalidInputError

__all__ = [
    "STORE_SUFFIX",
    "collection_file_name",
    "database_store_name",
    "location_argument",
    "open_at",
    "path_argument",
]

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


def location_argument(value: Any, name: str = "path") -> str | DatabaseLocation:
    """Where an adapter keeps its stores: a local path (str; ``sqlite:PATH`` gives PATH),
    or a :class:`DatabaseLocation` for a ``postgresql://`` URL. The location grammar is
    ferromem.open's, so a mistyped URL or an unknown ``scheme://`` raises a typed error
    instead of becoming a directory named after it; ``memory:`` is refused, since an
    adapter reopens its stores and an in-memory one would come back empty. A
    DatabaseLocation is returned as it is."""
    if isinstance(value, DatabaseLocation):
        return value
    text = path_argument(value, name)
    if not isinstance(value, str):
        return text  # an os.PathLike is always a path
    location = store_path(text)
    if location is None:
        raise InvalidInputError(
            f"{name}={text!r} names an in-memory store, which this adapter could not reopen: "
            "give a directory, a .ferro file or a 'postgresql://' URL (MemoryStorage also "
            "takes store=ferromem.open() for an in-memory store)"
        )
    return cast("str | DatabaseLocation", location)


# A store name shortened with a digest: "~" and the SHA-256 in hex.
_DIGEST_CHARS = 1 + 64


def database_store_name(name: str, prefix: str | None = None) -> str:
    """The name in the database of the store called ``name`` (a collection), under
    ``prefix`` (``<prefix>/<name>``) when given.

    The name is kept as it is when the whole is shorter than the core's 200 characters and
    holds no NUL or lone surrogate (which a database name cannot); otherwise it is cut,
    NUL and surrogates escaped, and ends in ``~`` and the SHA-256 of the name, padded to
    exactly 200 characters. A name kept as it is never reaches 200 characters, so the two
    kinds never meet, and distinct names stay distinct stores."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"collection_name must be a non-empty str, got {name!r}")
    head = "" if prefix is None else prefix + "/"
    whole = head + name
    if len(whole) < MAX_STORE_NAME and "\0" not in name and _encodable(name):
        return whole
    raw = name.encode("utf-8", "surrogatepass")
    readable = name.encode("utf-8", "backslashreplace").decode("utf-8").replace("\0", "\\x00")
    room = MAX_STORE_NAME - len(head) - _DIGEST_CHARS
    if room < 0:
        raise InvalidInputError(f"the store name prefix {prefix!r} leaves no room for collection names")
    return head + readable[:room].ljust(room, "_") + "~" + hashlib.sha256(raw).hexdigest()


def open_at(location: str | DatabaseLocation, **options: Any) -> Any:
    """:func:`ferromem.open` of a location made by :func:`location_argument` (the URL,
    password included, goes to the engine only)."""
    from .. import store as _store

    return _store.open(location.url if isinstance(location, DatabaseLocation) else location, **options)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
