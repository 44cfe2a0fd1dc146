"""The static types of the public API's arguments, defined once for the facade, the CrewAI
integration and the stubs.

* The string options as ``Literal`` types, so that a type checker (and an IDE) catches a
  misspelt option before it runs. ``ferromem._validate`` still checks every value at run
  time, with the same sets of values (tests/typecheck/test_option_literals.py keeps the two equal).
* The shapes a query may take. ``Store.search`` returns one ``SearchResult`` for a single
  vector and a list of them for a matrix, decided at run time by the number of dimensions;
  its overloads use ``Vector`` and ``Matrix`` so that a caller whose type says which it
  holds gets the precise result type, with no cast. An array whose number of dimensions
  the type does not say gives ``Any`` (a bare ``numpy.ndarray``), or, for
  ``numpy.typing.NDArray``, one ``SearchResult`` (mypy takes the first overload there):
  a batch typed that way needs a 2-D shape type or a cast.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from typing import Any, Literal, Protocol, TypeAlias, TypedDict

import numpy as np

__all__ = [
    "Durability",
    "EngineChoice",
    "EngineName",
    "IndexMode",
    "Precision",
    "DevicePolicy",
    "Number",
    "Vector",
    "Matrix",
    "ArrayLike",
    "RecordFields",
    "DeleteCriteria",
    "Filters",
    "SearchOptions",
    "ListOptions",
]

# ferromem.open(durability=...): "full" adds one fsync per write.
Durability: TypeAlias = Literal["normal", "full"]
# ferromem.open(engine=...): "auto" is the native engine when it loads.
EngineChoice: TypeAlias = Literal["auto", "native", "reference"]
# Store.engine: the engine that open() chose.
EngineName: TypeAlias = Literal["native", "reference"]
# ferromem.open(index=...) and Store.set_index(index): the search index mode.
IndexMode: TypeAlias = Literal["auto", "exact", "hnsw"]
# ferromem.open(precision=...): the vectors held in memory.
Precision: TypeAlias = Literal["f32", "f16", "int8"]
# Which device searches may use (open(device=...), search(device=...)).
DevicePolicy: TypeAlias = Literal["auto", "cpu", "gpu"]

# One value of a vector given as a list: an int or a float (bool is refused at run time),
# or a NumPy integer or floating scalar.
Number: TypeAlias = float | np.floating[Any] | np.integer[Any]

# One vector: a flat sequence of numbers, an array.array, or a 1-D NumPy array.
Vector: TypeAlias = Sequence[Number] | array.array | np.ndarray[tuple[int], np.dtype[Any]]

# A matrix of vectors (one per row): a sequence of rows, or a 2-D NumPy array.
Matrix: TypeAlias = (
    Sequence[Sequence[Number]]
    | Sequence[array.array]
    | Sequence[np.ndarray[tuple[int], np.dtype[Any]]]
    | np.ndarray[tuple[int, int], np.dtype[Any]]
)


class _SupportsArray(Protocol):
    def __array__(self) -> Any: ...


# Anything else the data plane reads as vectors (an object with ``__array__``: a tensor of
# another library), one vector or a matrix depending on its number of dimensions. (A
# memoryview is a Sequence to the type checker, so it types as one Vector.)
ArrayLike: TypeAlias = _SupportsArray


# The keyword arguments shared by several Store methods, each shape written once: the
# methods take them as ``**kwargs: Unpack[...]`` (PEP 692), so a type checker still checks
# every keyword's name for callers, and ``Store`` rejects any other name at run time with
# the TypeError Python gives for an unexpected keyword. The values are checked at run time
# by ``ferromem._validate``; a key left out takes the default given in its comment.


class RecordFields(TypedDict, total=False):
    """Store.add and Store.upsert: the per-record fields (each one value for all records
    or one per record; all default to None, i.e. the field's default)."""

    contents: Any
    scopes: Any
    categories: Any
    metadata: Any
    importance: Any
    created_at: Any
    last_accessed: Any
    sources: Any
    private: Any


class _Criteria(TypedDict, total=False):
    # Every filter: all default to None (no criterion).
    scope: Any
    categories: Any
    where: Any
    source: Any


class DeleteCriteria(_Criteria, total=False):
    """Store.delete: the criteria (besides ids) a deleted record matches."""

    older_than: Any  # None


class Filters(_Criteria, total=False):
    """Store.list, count and category_counts (and search): the records' filter."""

    include_private: Any  # True
    visible_to: Any  # None
    ids: Any  # None


class SearchOptions(Filters, total=False):
    """Store.search: the filter, the score threshold and the device policy."""

    min_score: Any  # None
    device: Any  # None


class ListOptions(Filters, total=False):
    """Store.list: the filter and the page."""

    offset: Any  # 0
    limit: Any  # None
