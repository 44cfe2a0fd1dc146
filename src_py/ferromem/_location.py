"""Store locations: the one parser of the Python side, the twin of the core's
``storage::Location`` (src_rust/ferromem-core/src/storage/location.rs), with the same
grammar and the same messages.

=============================== =========================================
text                            location
=============================== =========================================
``memory:``                     in memory, nothing persisted
``sqlite:PATH``, ``sqlite:///abs`` the SQLite file at PATH (or /abs)
``postgresql://...``            a store in a PostgreSQL database (docs/postgres.md)
anything else                   a path of a SQLite file (the default)
=============================== =========================================

Schemes are matched without regard to case. Text whose prefix is not a known scheme is a
path (``notes:v2.db`` stays a file name); only an unknown ``scheme://`` is refused. An
``os.PathLike`` is always a path and None is in memory.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from .exceptions import InvalidInputError, UnsupportedStoreError

__all__ = ["DatabaseLocation", "store_path", "shown"]

# RFC 3986's scheme, of two characters at least: one letter is a Windows drive (C:\x).
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+):")
_SCHEMES = "a path, 'sqlite:PATH', 'sqlite:///ABSOLUTE/PATH', 'memory:' or 'postgresql://...'"


class DatabaseLocation:
    """A ``postgresql://`` URL. It may hold a password: ``url`` is given only to the
    native engine, and everything shown (``str``, ``repr``, messages) is ``shown``, the
    URL without its password and options other than the store and schema."""

    __slots__ = ("_url", "shown")

    def __init__(self, url: str):
        self._url = url
        self.shown = _redacted(url)

    @property
    def url(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"DatabaseLocation({self.shown!r})"

    __str__ = __repr__

    @property
    def store(self) -> str | None:
        """The URL's ``store`` option, decoded as the core decodes it (``%XX`` and ``+``),
        or None when the URL has none (the core then opens the store ``default``)."""
        values = [value for key, value in _query_pairs(self._url) if key == "store"]
        if not values:
            return None
        if len(values) > 1:
            raise InvalidInputError("the PostgreSQL URL gives the option store twice")
        return _decode_option(values[0], "store")

    def with_store(self, name: str) -> DatabaseLocation:
        """The same database, schema and options, naming the store ``name`` instead."""
        if not isinstance(name, str) or not name or len(name) > MAX_STORE_NAME or "\0" in name:
            raise InvalidInputError(
                f"store={name!r}: a store's name is 1 to {MAX_STORE_NAME} characters, without NUL"
            )
        try:
            encoded = urllib.parse.quote(name, safe="")
        except UnicodeEncodeError:
            raise InvalidInputError(f"store={name!r}: a store's name must be encodable as UTF-8") from None
        base, _, query = self._url.partition("?")
        pairs = [pair for pair in query.split("&") if pair and pair.partition("=")[0] != "store"]
        return DatabaseLocation(base + "?" + "&".join([*pairs, "store=" + encoded]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DatabaseLocation) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)


# The core's limit on a store's name (storage/postgres.rs), in characters.
MAX_STORE_NAME = 200
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _query_pairs(url: str) -> list[tuple[str, str]]:
    """The (key, raw value) pairs of the URL's query, split as the core splits them."""
    query = url.partition("?")[2]
    return [(key, value) for key, _, value in (pair.partition("=") for pair in query.split("&") if pair)]


def _decode_option(value: str, key: str) -> str:
    """An option's value decoded as the core does it: ``%XX`` bytes, ``+`` a space, UTF-8."""
    if _BAD_PERCENT.search(value):
        raise InvalidInputError(
            f"the PostgreSQL URL's {key} has a '%' that is not followed by two hex digits"
        )
    try:
        return urllib.parse.unquote_plus(value, errors="strict")
    except UnicodeDecodeError:
        raise InvalidInputError(f"the PostgreSQL URL's {key} is not UTF-8 once decoded") from None


def _redacted(url: str) -> str:
    """``url`` without its password, and with only its store and schema options."""
    scheme, _, rest = url.partition("://")
    base = rest.partition("?")[0]
    authority, slash, path = base.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    user = userinfo.partition(":")[0]
    shown = f"{scheme.lower()}://{user}{at}{hostport}{slash}{path}"
    kept = [f"{key}={value}" for key, value in _query_pairs(url) if key in ("store", "schema")]
    return shown + ("?" + "&".join(kept) if kept else "")


def shown(location: Any) -> str | None:
    """How a location is shown to people: a path as it is, a database URL redacted."""
    if isinstance(location, DatabaseLocation):
        return location.shown
    return None if location is None else str(location)


def store_path(location: Any) -> Any:
    """The path of the SQLite file ``location`` names, None for an in-memory store, or a
    :class:`DatabaseLocation` for a PostgreSQL URL. Anything but a str is returned as it
    is (a path, None, or a wrong type that the path check refuses)."""
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
        if not rest.startswith("//"):
            raise InvalidInputError(
                "a PostgreSQL location is a URL: 'postgresql://user@host:5432/dbname?store=NAME'"
            )
        return DatabaseLocation(location)
    if rest.startswith("//"):
        raise UnsupportedStoreError(
            f"unknown store location scheme '{found.group(1)}': a store location is {_SCHEMES}"
        )
    return location
