"""Store locations: the one parser of the Python side, the twin of the core's
``storage::Location`` (src_rust/ferromem-core/src/storage/location.rs), with the same
grammar and the same messages.

=============================== =========================================
text                            location
=============================== =========================================
``memory:``                     in memory, nothing persisted
``sqlite:PATH``, ``sqlite:///abs`` the SQLite file at PATH (or /abs)
``postgresql://...``            reserved: this build has no such backend
anything else                   a path of a SQLite file (the default)
=============================== =========================================

Schemes are matched without regard to case. Text whose prefix is not a known scheme is a
path (``notes:v2.db`` stays a file name); only an unknown ``scheme://`` is refused. An
``os.PathLike`` is always a path and None is in memory.
"""

from __future__ import annotations

import re
from typing import Any

from .exceptions import InvalidInputError, UnsupportedStoreError

__all__ = ["store_path"]

# RFC 3986's scheme, of two characters at least: one letter is a Windows drive (C:\x).
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+):")
_SCHEMES = "a path, 'sqlite:PATH', 'sqlite:///ABSOLUTE/PATH' or 'memory:'"


def store_path(location: Any) -> Any:
    """The path of the SQLite file ``location`` names, or None for an in-memory store.
    Anything but a str is returned as it is (a path, None, or a wrong type that the path
    check refuses)."""
    if not isinstance(location, str):
        return location
    found = _SCHEME.match(location)
    if found is None:
        return location
    scheme, rest = found.group(1).lower(), location[found.end() :]
    if scheme == "memory":
        if rest in ("", "//"):
            return None
        raise InvalidInputError(
            f"the location '{location}' has text after 'memory:'; an in-memory store is just 'memory:'"
        )
    if scheme == "sqlite":
        path = rest
        if rest.startswith("//"):
            path = rest[2:]
            if path and not path.startswith("/"):
                raise InvalidInputError(
                    f"the location '{location}' names a host; a SQLite store is a local file: "
                    "'sqlite:PATH' or 'sqlite:///ABSOLUTE/PATH'"
                )
        if not path:
            raise InvalidInputError(
                f"the location '{location}' names no file: 'sqlite:PATH' or 'sqlite:///ABSOLUTE/PATH'"
            )
        return path
    if scheme in ("postgresql", "postgres"):
        # The URL is not repeated: it may hold a password.
        raise UnsupportedStoreError(
            "this build of ferromem has no PostgreSQL backend: a 'postgresql://' store cannot "
            f"be opened; use {_SCHEMES}"
        )
    if rest.startswith("//"):
        raise UnsupportedStoreError(
            f"unknown store location scheme '{found.group(1)}': a store location is {_SCHEMES}"
        )
    return location
