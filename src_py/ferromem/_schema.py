"""The shapes that cross between the facade and an engine, defined once.

``Store`` builds these and hands them to an engine; the native engine
(``ferromem._core``, src_rust/ferromem-py) reads them by attribute name with
``#[derive(FromPyObject)]`` structs of the same fields, and returns its records as
``_core.RecordRow``, a class with exactly the fields of :class:`RecordRow` below. The
reference engine (``ferromem._reference``) takes and returns the classes of this module
itself, so it works when ``_core`` cannot load. ``tests/engine/test_schema.py`` holds the
native classes to these fields: a field added here and not there (or the reverse) fails it.

* :class:`RecordRow`: one stored record (``get``, ``list``).
* :class:`RecordBatch`: records to save (``upsert``), one column per field of
  :class:`RecordRow`, named as the field; ``vector`` is one float32 (n, dim) matrix, so a
  batch crosses as a handful of lists and one buffer, never a record object per row.
* :class:`Patch`: the fields an ``update`` changes; the others are :data:`UNCHANGED`.
* :class:`Filter`: the criteria of a search, list, count, delete (docs/architecture.md,
  "Filter").

Values are already checked and coerced (``ferromem._validate``, ``ferromem._buffers``):
these classes hold them, they do not check them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import numpy as np

__all__ = [
    "RecordRow",
    "RecordBatch",
    "Patch",
    "Filter",
    "UNCHANGED",
    "Scalar",
    "record_field_names",
]

# A metadata value a where-criterion compares with (equality; docs/architecture.md).
Scalar: TypeAlias = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class RecordRow:
    """One stored record as an engine returns it. ``vector`` is a read-only float32 array."""

    id: str
    content: str
    scope: str
    categories: list[str]
    metadata_json: str  # a JSON object text, as saved
    importance: float
    created_at: float  # unix seconds
    last_accessed: float
    source: str | None
    private: bool
    vector: np.ndarray


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """n records to save: each field of :class:`RecordRow` as a column of n values, and the
    vectors as one float32 C-contiguous (n, dim) matrix (``ferromem._buffers.as_matrix``)."""

    id: list[str]
    content: list[str]
    scope: list[str]
    categories: list[list[str]]
    metadata_json: list[str]
    importance: list[float]
    created_at: list[float]
    last_accessed: list[float]
    source: list[str | None]
    private: list[bool]
    vector: np.ndarray


class _Unchanged:
    """The type of :data:`UNCHANGED` (one instance)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"


# The value of a Patch field that the update leaves as it is. None cannot say that:
# ``source=None`` clears a record's source.
UNCHANGED: Final = _Unchanged()


@dataclass(frozen=True, slots=True)
class Patch:
    """The fields of one record that an update changes: each field of :class:`RecordRow`
    but the id, :data:`UNCHANGED` unless given. ``vector`` is one float32 vector (dim,)."""

    content: str | _Unchanged = UNCHANGED
    scope: str | _Unchanged = UNCHANGED
    categories: list[str] | _Unchanged = UNCHANGED
    metadata_json: str | _Unchanged = UNCHANGED
    importance: float | _Unchanged = UNCHANGED
    created_at: float | _Unchanged = UNCHANGED
    last_accessed: float | _Unchanged = UNCHANGED
    source: str | _Unchanged | None = UNCHANGED
    private: bool | _Unchanged = UNCHANGED
    vector: np.ndarray | _Unchanged = UNCHANGED

    def changes(self) -> dict[str, Any]:
        """The fields given, by name."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if getattr(self, field.name) is not UNCHANGED
        }


@dataclass(frozen=True, slots=True)
class Filter:
    """The criteria records must all meet (AND); the defaults restrict nothing.

    ``scope``: a path prefix at a boundary ('/' matches everything). ``categories``: any
    of them. ``where``: (metadata key, scalar) equality pairs. ``source``: equal to it.
    ``include_private=False`` leaves private records out, except, with ``visible_to``,
    those whose source equals it. ``older_than``: created_at strictly before it. ``ids``:
    the id is one of them.
    """

    scope: str | None = None
    categories: list[str] | None = None
    where: tuple[tuple[str, Scalar], ...] = ()
    source: str | None = None
    include_private: bool = True
    visible_to: str | None = None
    older_than: float | None = None
    ids: list[str] | None = None

    def restricts(self) -> bool:
        """True when some record could fail it (a scope of '/' matches every record)."""
        return (
            self.scope not in (None, "", "/")
            or self.categories is not None
            or bool(self.where)
            or self.source is not None
            or not self.include_private
            or self.older_than is not None
            or self.ids is not None
        )


def record_field_names() -> tuple[str, ...]:
    """The fields of a record, in order: those of :class:`RecordRow`."""
    return tuple(field.name for field in dataclasses.fields(RecordRow))
