"""Checked by mypy (in .ci/lint), never run: the types a caller of the public API sees.

Each ``assert_type`` fails the type check when an overload or a Literal stops giving the
type written here. pytest does not collect this file (no ``test_`` prefix).
"""

from __future__ import annotations

import array
from typing import Any

import ferromem
import numpy as np
import numpy.typing as npt
from ferromem import SearchResult
from typing_extensions import assert_type


class _HasArray:
    def __array__(self) -> np.ndarray:
        return np.ones(4, np.float32)


def search_result_types(store: ferromem.Store, anything: Any, embedding: npt.NDArray[np.float32]) -> None:
    # One vector: one SearchResult, no cast.
    assert_type(store.search([1.0, 0.0]), SearchResult)
    assert_type(store.search((1, 0)), SearchResult)
    assert_type(store.search(array.array("f", [1.0, 0.0])), SearchResult)
    # (numpy arrays through variables: mypy infers a call written inside the argument list
    # in the context of the first overload, which can change numpy's own overload.)
    vector = np.zeros(4, np.float32)
    assert_type(store.search(vector), SearchResult)
    assert_type(store.search(memoryview(b"")), SearchResult)  # a Sequence[int] to the checker
    assert_type(store.search([1.0, 0.0], k=3, scope="/a").records(), list[ferromem.Record | None])

    # A matrix: one SearchResult per row.
    assert_type(store.search([[1.0, 0.0], [0.0, 1.0]]), list[SearchResult])
    rows = [np.zeros(4, np.float32), np.ones(4, np.float32)]
    assert_type(store.search(rows), list[SearchResult])
    matrix = np.zeros((2, 4), np.float32)
    assert_type(store.search(matrix), list[SearchResult])

    # The shape is not in the type: either may come back.
    assert_type(store.search(_HasArray()), SearchResult | list[SearchResult])
    assert_type(store.search(anything), Any)
    # numpy.typing.NDArray says nothing of the shape either, but mypy takes the first
    # overload for it (the Any inside the alias does not count as ambiguous): one vector.
    # A batch typed NDArray needs a cast, or a 2-D shape type.
    assert_type(store.search(embedding), SearchResult)


def option_types() -> None:
    ferromem.open(durability="full", engine="reference", index="hnsw", precision="f32")
    ferromem.open(durability="fast")  # type: ignore[arg-type]
    ferromem.open(index="flat")  # type: ignore[arg-type]
    ferromem.open(precision="f64")  # type: ignore[arg-type]
    ferromem.open(engine="gpu")  # type: ignore[arg-type]
    with ferromem.open() as store:
        store.set_index("exact")
        store.set_index("graph")  # type: ignore[arg-type]
