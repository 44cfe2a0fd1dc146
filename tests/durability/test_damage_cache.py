"""Damaged caches beside a store: the store image (``<path>.image``, fast_open=True) and
the saved graph (``<path>.hnsw``). Every section of both carries a checksum; damage
anywhere is never served: the store answers from its file (or scans exactly while the
graph is rebuilt), warns with DamagedCacheWarning, and stats() says why. The Rust tests
(tests/image.rs, tests/ann.rs) flip every section; these flip real files written by real
stores and go through the Python API.
"""

from __future__ import annotations

import os
import struct
import warnings

import ferromem
import numpy as np
import pytest
from _helpers import require_engine
from ferromem import _core
from ferromem.exceptions import DamagedCacheWarning


@pytest.fixture(autouse=True)
def _native():
    require_engine("native")


def _header_field(path: str, at: int) -> int:
    with open(path, "rb") as f:
        f.seek(at)
        return struct.unpack("<Q", f.read(8))[0]


def _flip(path: str, at: int, bit: int = 0x10) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ bit]))


def _fill(path, n: int, dim: int, precision: str = "f32", **kw) -> np.ndarray:
    vectors = np.random.default_rng(5).standard_normal((n, dim), dtype=np.float32)
    with ferromem.open(path, precision=precision, fast_open=True, **kw) as store:
        store.add([f"r{i:05d}" for i in range(n)], vectors, contents=[f"c{i}" for i in range(n)])
        if kw.get("index") == "hnsw":
            assert store.wait_for_index(timeout=120)
    return vectors


# (precision, header field holding the damaged section's offset, what stats() names)
SECTIONS = [
    ("f32", 88, "f32 rows"),  # the exact vectors `get` returns
    ("f32", 96, "half-precision rows"),  # the rows searches scan
    ("f16", 96, "half-precision rows"),
    ("int8", 96, "int8 rows"),
    ("int8", 88, "int8 quantisation factors"),
]


@pytest.mark.parametrize("precision,offset_field,section", SECTIONS)
def test_a_flipped_bit_in_a_row_of_the_image_is_never_served(tmp_path, precision, offset_field, section):
    path = tmp_path / "s.ferro"
    image = os.fspath(path) + ".image"
    vectors = _fill(path, 300, 16, precision)
    assert _core.verify_image(image) == []
    # One bit of row 7 (of the f32 rows, the search rows or the int8 factors).
    row_bytes = {"f32 rows": 64, "int8 quantisation factors": 4}.get(
        section, 32 if precision != "int8" else 16
    )
    _flip(image, _header_field(image, offset_field) + 7 * row_bytes + 1)
    problems = _core.verify_image(image)
    assert problems and section in problems[0]
    with pytest.warns(DamagedCacheWarning, match="store image"):
        fast = ferromem.open(path, precision=precision, fast_open=True)
    with fast, ferromem.open(path, precision=precision) as plain:
        info = fast.stats()["fast_open"]
        assert not info["opened_from_image"]
        assert section in info["rejected"]
        got = fast.get("r00007")
        assert np.array_equal(got.vector, vectors[7])
        assert np.array_equal(got.vector, plain.get("r00007").vector)
        for q in vectors[:20]:
            a, b = fast.search(q, k=5), plain.search(q, k=5)
            assert list(a.ids) == list(b.ids) and np.array_equal(a.scores, b.scores)
        assert list(fast.search(vectors[7], k=1).ids) == ["r00007"]
    # Closing wrote a whole image again: the next open uses it, silently.
    assert _core.verify_image(image) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", DamagedCacheWarning)
        with ferromem.open(path, precision=precision, fast_open=True) as again:
            assert again.stats()["fast_open"] == {
                "enabled": True,
                "opened_from_image": True,
                "rejected": None,
            }
            assert np.array_equal(again.get("r00007").vector, vectors[7])


def test_a_truncated_image_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "t.ferro"
    image = os.fspath(path) + ".image"
    vectors = _fill(path, 200, 8)
    size = os.path.getsize(image)
    os.truncate(image, size - 1)
    assert "truncated" in _core.verify_image(image)[0]
    with pytest.warns(DamagedCacheWarning, match="truncated"):
        store = ferromem.open(path, fast_open=True)
    with store:
        assert "truncated" in store.stats()["fast_open"]["rejected"]
        assert store.count() == 200
        assert np.array_equal(store.get("r00199").vector, vectors[199])


def test_a_damaged_graph_file_is_rebuilt_and_reported(tmp_path):
    path = tmp_path / "g.ferro"
    graph = os.fspath(path) + ".hnsw"
    vectors = _fill(path, 1500, 16, index="hnsw")
    assert _core.verify_graph(graph) == []
    _flip(graph, os.path.getsize(graph) - 3)  # inside the links section
    assert "links section" in _core.verify_graph(graph)[0]
    with pytest.warns(DamagedCacheWarning, match="search graph"):
        store = ferromem.open(path, index="hnsw")
    with store:
        index = store.stats()["index"]
        assert "links section" in index["graph_file_rejected"]
        # Exact scans meanwhile, then the rebuilt graph.
        assert list(store.search(vectors[42], k=1).ids) == ["r00042"]
        assert store.wait_for_index(timeout=120)
        assert store.stats()["index"]["graph_nodes"] == 1500
        assert list(store.search(vectors[42], k=1).ids) == ["r00042"]
    assert _core.verify_graph(graph) == []


def test_verify_functions_on_absent_and_foreign_files(tmp_path):
    assert _core.verify_image(os.fspath(tmp_path / "none.ferro.image")) == []
    assert _core.verify_graph(os.fspath(tmp_path / "none.ferro.hnsw")) == []
    junk = tmp_path / "junk.image"
    junk.write_bytes(b"not an image at all" * 300)
    assert "magic" in _core.verify_image(os.fspath(junk))[0]
    junk_graph = tmp_path / "junk.hnsw"
    junk_graph.write_bytes(b"\0" * 100)
    assert "magic" in _core.verify_graph(os.fspath(junk_graph))[0]
