"""The device path end to end through a real store: ``ferromem.gpu.DeviceSearch`` on the
NumPy backend (the same code CuPy runs on a GPU) attached to the native engine, whose
planner routes searches to it; its candidates, proved on the host, must give exactly the
CPU's results (ids and scores) on real MiniLM embeddings and random vectors, with and
without filters, single queries and batches, across writes (the mirror follows them
incrementally). The CuPy run of the same test is marked ``gpu``."""

from __future__ import annotations

import ferromem
import numpy as np
import pytest
from _helpers import load_minilm

gpu = pytest.importorskip("ferromem.gpu")


def _attach(store: ferromem.Store, backend) -> None:
    # Costs that make the planner choose the device for every exact search ("auto").
    costs = {"call": 0.0, "query_value": 0.0, "value": 0.0, "sync_value": 0.0}
    store._engine.attach_device(gpu.DeviceSearch(backend, precision="f16"), costs)


def _same(a: ferromem.SearchResult, b: ferromem.SearchResult) -> None:
    assert list(a.ids) == list(b.ids)
    assert np.array_equal(a.scores, b.scores)  # bit for bit: the host re-scores


def _compare(dev: ferromem.Store, cpu: ferromem.Store, queries: np.ndarray, filters, ks=(1, 10, 100)) -> None:
    for flt in filters:
        for k in ks:
            got = dev.search(queries, k, device="gpu", **flt)
            batch = cpu.search(queries, k, device="cpu", **flt)
            for i, (g, b) in enumerate(zip(got, batch)):
                # The CPU's batch kernel sums in another order (last bit of a score); the
                # device's answers are re-scored as the single-query scan scores.
                assert list(g.ids) == list(b.ids)
                np.testing.assert_allclose(g.scores, b.scores, rtol=0, atol=1e-6)
                _same(g, cpu.search(queries[i], k, device="cpu", **flt))
            _same(dev.search(queries[0], k, **flt), cpu.search(queries[0], k, device="cpu", **flt))
    how = dev.explain(queries, 10)
    assert how["path"] == "gpu-exact" and how["device"] == "numpy", how


def _backends() -> list:
    return [pytest.param("numpy", id="numpy"), pytest.param("cupy", id="cupy", marks=pytest.mark.gpu)]


def _backend(name: str):
    if name == "numpy":
        return gpu.numpy_backend()
    try:
        return gpu.cupy_backend()
    except gpu.DeviceUnavailableError as e:
        pytest.skip(f"no CUDA device: {e}")


@pytest.mark.parametrize("backend_name", _backends())
@pytest.mark.parametrize("precision", ["f32", "f16"])
def test_device_results_equal_the_cpu_on_random_vectors_across_writes(backend_name, precision, tmp_path):
    rng = np.random.default_rng(1)
    n, dim = 6000, 96
    data = rng.standard_normal((n, dim), dtype=np.float32)
    ids = [f"r{i:05d}" for i in range(n)]
    scopes = [f"/s{i % 9}" for i in range(n)]
    stores = []
    for name in ("dev", "cpu"):
        s = ferromem.open(tmp_path / f"{name}.db", precision=precision, cache_size=0)
        s.add(ids, data, scopes=scopes)
        stores.append(s)
    dev, cpu = stores
    _attach(dev, _backend(backend_name))
    queries = rng.standard_normal((12, dim), dtype=np.float32)
    filters = [{}, {"scope": "/s4"}, {"ids": ids[::50]}]
    _compare(dev, cpu, queries, filters)
    sent = dev.stats()["device"]["rows_sent"]
    assert sent == n
    # Writes: inserts, a vector update, deletes. Only what changed travels.
    more = rng.standard_normal((30, dim), dtype=np.float32)
    for s in stores:
        s.add([f"x{i}" for i in range(30)], more, scopes="/s4")
        s.update("r00007", vector=queries[0] * 2)
        s.delete(ids[100:110])
    _compare(dev, cpu, queries, filters, ks=(10,))
    stats = dev.stats()["device"]
    assert stats["rows_sent"] == n + 31, stats
    assert stats["uploads"] == 1 and stats["last_error"] is None, stats
    assert dev.search(queries[0], 1, device="gpu").ids[0] == "r00007"
    for s in stores:
        s.close()


@pytest.mark.parametrize("backend_name", _backends())
def test_device_results_equal_the_cpu_on_minilm(backend_name):
    passages, queries = load_minilm("passages", "queries")
    passages, queries = passages[:30000].astype(np.float32), queries[:64].astype(np.float32)
    ids = [f"p{i}" for i in range(len(passages))]
    dev = ferromem.open(cache_size=0, index="exact")
    cpu = ferromem.open(cache_size=0, index="exact")
    for s in (dev, cpu):
        s.add(ids, passages, scopes=[f"/t{i % 3}" for i in range(len(ids))])
    _attach(dev, _backend(backend_name))
    _compare(dev, cpu, queries, [{}, {"scope": "/t1"}], ks=(10, 100))
    stats = dev.stats()["device"]
    assert stats["proved"] > 0 and stats["last_error"] is None, stats
    for s in (dev, cpu):
        s.close()


def test_a_device_that_cannot_hold_the_store_falls_back_under_auto_and_fails_closed_under_gpu():
    class TinyBackend(gpu.NumpyBackend):  # reports almost no free memory
        def mem_info(self):
            return (1 << 20, 1 << 20)

    store = ferromem.open(cache_size=0)
    rng = np.random.default_rng(2)
    store.add([f"r{i}" for i in range(20000)], rng.standard_normal((20000, 64), dtype=np.float32))
    _attach(store, TinyBackend())
    q = rng.standard_normal((4, 64), dtype=np.float32)
    want = store.search(q, 10, device="cpu")
    how = store.explain(q, 10)
    assert how["path"] in ("cpu-one", "cpu-batch") and "DeviceMemoryError" in how["reason"], how
    assert [list(r.ids) for r in how["results"]] == [list(r.ids) for r in want]
    with pytest.raises(ferromem.DeviceError, match="DeviceMemoryError"):
        store.search(q, 10, device="gpu")
    store.close()


def test_the_device_replaces_the_graph_only_when_cheaper_or_asked():
    """index="auto" with a graph the recall guard trusts (MiniLM): the graph serves, unless
    the device's exact scan is predicted cheaper than the graph's measured time (then the
    answer is exact, and faster) or the policy is "gpu"."""
    passages, queries = load_minilm("passages", "queries")
    passages, queries = passages[:20000].astype(np.float32), queries[:8].astype(np.float32)
    store = ferromem.open(cache_size=0)
    store.add([f"p{i}" for i in range(len(passages))], passages)
    store.set_index("auto", graph_min_values=0)
    assert store.wait_for_index(timeout=300)
    assert store.explain(queries[0], 10)["path"] == "graph"
    exact = ferromem.open(cache_size=0, index="exact")
    exact.add([f"p{i}" for i in range(len(passages))], passages)

    # A device far dearer than the graph: the graph keeps serving, and says why.
    slow = {"call": 1e9, "query_value": 0.0, "value": 0.0, "sync_value": 0.0}
    store._engine.attach_device(gpu.DeviceSearch(gpu.numpy_backend()), slow)
    how = store.explain(queries, 10)
    assert how["path"] == "graph" and "recall guard lets the graph serve" in how["reason"], how
    # Policy "gpu": exact on the device instead of the graph.
    how = store.explain(queries, 10, device="gpu")
    assert how["path"] == "gpu-exact" and "instead of the graph" in how["reason"], how
    for got, want in zip(how["results"], exact.search(queries, 10)):
        assert list(got.ids) == list(want.ids)

    # A device predicted cheaper than the graph: it answers, exactly.
    _attach(store, gpu.numpy_backend())
    how = store.explain(queries, 10)
    assert how["path"] == "gpu-exact" and "cheaper" in how["reason"], how
    for i, got in enumerate(how["results"]):
        _same(got, exact.search(queries[i], 10))
    # The graph still serves under "cpu".
    assert store.explain(queries, 10, device="cpu")["path"] == "graph"
    store.close()
    exact.close()
