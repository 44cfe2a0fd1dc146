"""A float32 C-contiguous query (one vector or a batch) and a float32 batch of vectors to
save reach the Rust engine without a copy: the engine reads the caller's own memory."""

import ferromem
import numpy as np
import pytest
from ferromem import store as store_module

_core = pytest.importorskip("ferromem._core", reason="the native engine is not built")
_buffers = pytest.importorskip("ferromem._buffers", reason="the Cython data plane is not built")


class RecordingEngine:
    """Forwards to the real native engine and records, for every vector argument, the
    address at which the engine itself (``_core.buffer_address``) reads it."""

    def __init__(self, inner):
        self._inner = inner
        self.seen = []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def search(self, queries, *args, **kwargs):
        self.seen.append(_core.buffer_address(queries))
        return self._inner.search(queries, *args, **kwargs)

    def upsert(self, batch, *args, **kwargs):
        self.seen.append(_core.buffer_address(batch.vector))
        return self._inner.upsert(batch, *args, **kwargs)


@pytest.fixture
def store():
    s = ferromem.open(engine="native")
    assert store_module._data_plane is _buffers
    s._engine = RecordingEngine(s._engine)
    yield s
    s.close()


def test_batch_save_is_zero_copy(store):
    vectors = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
    store.add([f"v{i}" for i in range(64)], vectors)
    address, rows, dim = store._engine.seen[-1]
    assert (address, rows, dim) == (vectors.ctypes.data, 64, 48)
    np.testing.assert_array_equal(store.get("v7").vector, vectors[7])


def test_single_query_and_batch_are_zero_copy(store):
    rng = np.random.default_rng(1)
    store.add([f"v{i}" for i in range(32)], rng.standard_normal((32, 16)).astype(np.float32))
    q = rng.standard_normal(16).astype(np.float32)
    store.search(q, 5)
    assert store._engine.seen[-1] == (q.ctypes.data, 1, 16)
    batch = rng.standard_normal((8, 16)).astype(np.float32)
    results = store.search(batch, 5)
    assert store._engine.seen[-1] == (batch.ctypes.data, 8, 16)
    assert len(results) == 8


def test_other_layouts_are_converted_once(store):
    rng = np.random.default_rng(2)
    store.add([f"v{i}" for i in range(4)], rng.standard_normal((4, 8)).astype(np.float32))
    q64 = rng.standard_normal(8)  # float64: one conversion, a different buffer
    store.search(q64, 2)
    assert store._engine.seen[-1][0] != q64.ctypes.data
    strided = rng.standard_normal((8, 16)).astype(np.float32)[:, ::2]
    store.search(strided, 2)
    assert store._engine.seen[-1][0] != strided.ctypes.data


def test_buffer_address_sees_the_callers_memory():
    a = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    assert _core.buffer_address(a) == (a.ctypes.data, 3, 4)
    m = _buffers.as_matrix(a)
    assert _core.buffer_address(m)[0] == a.ctypes.data
    v = _buffers.as_vector(a[1])
    assert _core.buffer_address(v)[0] == a[1].ctypes.data
