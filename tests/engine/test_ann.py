"""The HNSW graph index through the public API (index="hnsw").

Recall is measured on real text embeddings (the first 20,000 MiniLM passages of the shared
data set and 200 real queries) against a NumPy brute force; scores must be the exact
cosine of the ids returned; selective filters must be exact; deletes and changed vectors
must never be returned stale; a second engine on the same file must see the first one's
writes; bad index options are typed errors. The graph is built in a background thread,
so tests call wait_for_index() where they need it built.
"""

from __future__ import annotations

import ferromem
import numpy as np
import pytest
from _helpers import shared_data_dir
from ferromem.exceptions import InvalidInputError

N_PASSAGES = 20_000
N_QUERIES = 200
NPZ = "docs-minilm384.npz"

pytestmark = pytest.mark.skipif(
    getattr(ferromem.store, "_core", None) is None, reason="the native engine is not built"
)


@pytest.fixture(scope="module")
def minilm():
    folder = shared_data_dir()
    if folder is None or not (folder / NPZ).is_file():
        pytest.skip(
            f"real embeddings absent: {NPZ} not found (set FERROMEM_SHARED_DATA to its "
            "folder, or place it at <repo>/../shared/data)"
        )
    with np.load(folder / NPZ) as arrays:
        passages = arrays["passages"][:N_PASSAGES].astype(np.float32)
        queries = arrays["queries"][:: 1000 // N_QUERIES][:N_QUERIES].astype(np.float32)
    unit = passages / np.linalg.norm(passages, axis=1, keepdims=True)
    q_unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return passages, queries, q_unit @ unit.T


def _scopes(n: int) -> list[str]:
    return [f"/team{i % 4}/agent{i % 40}" for i in range(n)]


@pytest.fixture(scope="module")
def graph_store(minilm):
    passages, _, _ = minilm
    store = ferromem.open(None, index="hnsw", cache_size=0)
    n = len(passages)
    scopes = _scopes(n)
    for start in range(0, n, 5000):
        idx = range(start, min(n, start + 5000))
        store.add(
            [f"p{i}" for i in idx],
            passages[start : start + 5000],
            scopes=scopes[start : start + 5000],
            categories=[["even" if i % 2 == 0 else "odd"] for i in idx],
        )
    assert store.wait_for_index(timeout=600)
    yield store
    store.close()


def _recall(store, queries, truth, k=10, **filters) -> float:
    hits = 0
    for qi, q in enumerate(queries):
        got = store.search(q, k=k, **filters)
        cut = np.sort(truth[qi])[-k] - 1e-4  # a tie at rank k may go either way
        hits += sum(truth[qi, int(i[1:])] >= cut for i in got.ids)
    return hits / (k * len(queries))


def test_recall_on_real_embeddings_and_exact_scores(graph_store, minilm):
    passages, queries, truth = minilm
    index = graph_store.stats()["index"]
    assert index["mode"] == "hnsw" and index["active"] == "hnsw"
    assert index["graph_nodes"] == N_PASSAGES and index["pending"] == 0
    assert _recall(graph_store, queries, truth) >= 0.97
    # The scores returned are the exact cosine of the ids returned, best first.
    for qi in range(0, N_QUERIES, 10):
        got = graph_store.search(queries[qi], k=10)
        expected = truth[qi, [int(i[1:]) for i in got.ids]]
        np.testing.assert_allclose(got.scores, expected, atol=1e-5)
        assert list(got.scores) == sorted(got.scores, reverse=True)


def test_a_wider_search_is_closer_to_exact(minilm, graph_store):
    _, queries, truth = minilm
    narrow = _recall(graph_store, queries[:60], truth[:60])
    graph_store._engine.set_index("hnsw", 400)
    try:
        wide = _recall(graph_store, queries[:60], truth[:60])
    finally:
        graph_store._engine.set_index("hnsw", 96)
    assert wide >= narrow and wide >= 0.99


def test_filters_under_the_graph(graph_store, minilm):
    _, queries, truth = minilm
    scopes = np.array(_scopes(N_PASSAGES))
    # Selective (one agent in forty): answered by an exact scan of its candidates.
    agent = "/team1/agent5"
    members = np.flatnonzero(scopes == agent)
    for qi in range(20):
        got = graph_store.search(queries[qi], k=10, scope=agent)
        order = members[np.argsort(-truth[qi, members], kind="stable")][:10]
        assert [int(i[1:]) for i in got.ids] == order.tolist()
    # Broad (half the store): walks the graph, admits only matches, keeps recall.
    for qi in range(20):
        got = graph_store.search(queries[qi], k=10, categories=["even"])
        assert len(got) == 10 and all(int(i[1:]) % 2 == 0 for i in got.ids)
    even = np.where(np.arange(N_PASSAGES) % 2 == 0, truth, -2.0)
    assert _recall(graph_store, queries[:50], even[:50], categories=["even"]) >= 0.95


def test_deleted_and_changed_records_are_never_stale(minilm):
    passages, queries, _ = minilm
    n = 6000
    store = ferromem.open(None, index="hnsw", cache_size=0)
    store.add([f"p{i}" for i in range(n)], passages[:n])
    assert store.wait_for_index(timeout=300)
    gone = [f"p{i}" for i in range(0, n, 7)]
    assert store.delete(gone) == len(gone)
    for q in queries[:30]:
        assert not set(store.search(q, k=40).ids) & set(gone)
    # A record moved onto a query is its top hit at once (scanned beside the graph)...
    store.update("p1", vector=queries[0])
    assert store.stats()["index"]["pending"] == 1
    top = store.search(queries[0], k=1)
    assert top.ids[0] == "p1" and top.scores[0] == pytest.approx(1.0, abs=1e-6)
    # ... and after the next build, from the graph.
    assert store.wait_for_index(timeout=60)
    assert store.stats()["index"]["pending"] == 0
    assert store.search(queries[0], k=1).ids[0] == "p1"
    # Batches equal their single queries.
    batch = store.search(queries[:8], k=10)
    for q, got in zip(queries[:8], batch):
        single = store.search(q, k=10)
        assert list(got.ids) == list(single.ids)
        np.testing.assert_array_equal(got.scores, single.scores)
    store.close()


def test_a_second_engine_sees_writes_before_its_graph_covers_them(tmp_path, minilm):
    passages, queries, _ = minilm
    path = tmp_path / "shared.ferro"
    reader = ferromem.open(path, index="hnsw", cache_size=0)
    writer = ferromem.open(path, index="hnsw")
    writer.add([f"p{i}" for i in range(3000)], passages[:3000])
    assert reader.wait_for_index(timeout=300)
    writer.add(["new"], queries[3].reshape(1, -1))
    assert reader.search(queries[3], k=1).ids[0] == "new"
    writer.close()
    reader.close()


def test_auto_keeps_small_stores_exact_and_the_reference_engine_reports_exact(minilm):
    passages, _, _ = minilm
    store = ferromem.open(None)
    store.add([f"p{i}" for i in range(500)], passages[:500])
    assert store.wait_for_index(timeout=10)
    index = store.stats()["index"]
    assert (index["mode"], index["active"], index["graph_nodes"]) == ("auto", "exact", 0)
    store.close()
    ref = ferromem.open(None, engine="reference", index="hnsw")
    assert ref.wait_for_index() is True
    assert ref.stats()["index"]["active"] == "exact"
    ref.close()


def test_set_index_changes_an_open_store(graph_store, minilm):
    _, queries, truth = minilm
    graph_store.set_index(ef_search=400)
    try:
        index = graph_store.stats()["index"]
        assert (index["mode"], index["ef_search"], index["m"], index["ef_construction"]) == (
            "hnsw",
            400,
            16,
            128,
        )
        assert _recall(graph_store, queries[:40], truth[:40]) >= 0.99
        graph_store.set_index("exact")
        assert graph_store.stats()["index"]["active"] == "exact"
        assert _recall(graph_store, queries[:40], truth[:40]) == 1.0
        with pytest.raises(InvalidInputError):
            graph_store.set_index("fast")
        with pytest.raises(InvalidInputError):
            graph_store.set_index(ef_search=0)
        assert graph_store.stats()["index"]["mode"] == "exact"  # a refused change changes nothing
    finally:
        graph_store.set_index("hnsw", ef_search=96)
    assert graph_store.stats()["index"]["active"] == "hnsw"
    ref = ferromem.open(None, engine="reference")
    ref.set_index("hnsw", ef_search=10)
    assert ref.stats()["index"]["mode"] == "hnsw" and ref.stats()["index"]["active"] == "exact"
    ref.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"index": "fast"},
        {"index": None},
        {"index": "HNSW"},
        {"ef_search": 0},
        {"ef_search": True},
        {"ef_search": "64"},
        {"ef_search": 10**9},
    ],
)
def test_bad_index_options_are_typed_errors(kwargs):
    with pytest.raises(InvalidInputError):
        ferromem.open(None, **kwargs)


# inf is no limit, like 1e300 (tests/engine/test_bad_input.py, saturation).
@pytest.mark.parametrize("timeout", [-1, float("nan"), "1", True])
def test_bad_wait_timeouts_are_typed_errors(timeout):
    store = ferromem.open(None)
    with pytest.raises(InvalidInputError):
        store.wait_for_index(timeout=timeout)
    store.close()


def test_the_graph_is_saved_on_close_and_reopens_without_a_build(tmp_path, minilm):
    passages, queries, _ = minilm
    path = tmp_path / "saved.ferro"
    store = ferromem.open(path, index="hnsw", cache_size=0)
    store.add([f"p{i}" for i in range(4000)], passages[:4000])
    assert store.wait_for_index(timeout=300)
    before = [list(store.search(q, k=10).ids) for q in queries[:20]]
    store.close()
    assert (tmp_path / "saved.ferro.hnsw").is_file()
    again = ferromem.open(path, index="hnsw", cache_size=0)
    index = again.stats()["index"]
    assert (index["active"], index["graph_nodes"], index["builds"]) == ("hnsw", 4000, 0)
    assert [list(again.search(q, k=10).ids) for q in queries[:20]] == before
    again.close()
