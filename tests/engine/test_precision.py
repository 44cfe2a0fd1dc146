"""precision="f16" and "int8": a third and a sixth of the vector memory, recall@10 >= 0.995
against the exact f32 search, exact vectors back from get/list, and every write path
keeping them exact; int8's re-ranked scores are the f32 store's, bit for bit."""

from __future__ import annotations

import ferromem
import numpy as np
import pytest
from _helpers import shared_data_dir
from ferromem.exceptions import InvalidInputError

pytestmark = pytest.mark.skipif(
    getattr(ferromem.store, "_core", None) is None, reason="the native engine is not built"
)


def _recall(exact_store, half_store, queries, k=10, **filters) -> float:
    same = 0
    for q in queries:
        want = set(exact_store.search(q, k=k, **filters).ids)
        got = half_store.search(q, k=k, **filters)
        assert len(got) == len(want)
        same += len(want & set(got.ids))
    return same / (k * len(queries))


# Bytes a value the replica saves against the f32 store's: the f32 rows and their half
# copy are 6 bytes a value; f16 keeps 2, int8 1 (plus a 4-byte factor a record).
_SAVED_PER_VALUE = {"f16": 4, "int8": 5}


@pytest.fixture(params=["f16", "int8"])
def random_pair(tmp_path, request):
    rng = np.random.default_rng(5)
    n, dim = 5000, 384
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    path = tmp_path / "p.ferro"
    full = ferromem.open(path, index="exact", cache_size=0)
    full.add([f"r{i}" for i in range(n)], vectors, scopes=[f"/s{i % 5}" for i in range(n)])
    half = ferromem.open(path, precision=request.param, index="exact", cache_size=0)
    yield full, half, vectors, rng.standard_normal((100, dim), dtype=np.float32)
    half.close()
    full.close()


def test_recall_memory_and_scores_on_random_vectors(random_pair):
    full, half, vectors, queries = random_pair
    precision = half.stats()["precision"]
    assert precision in ("f16", "int8") and full.stats()["precision"] == "f32"
    saved = full.stats()["memory_bytes"] - half.stats()["memory_bytes"]
    values = vectors.size
    n = len(vectors)
    assert values * _SAVED_PER_VALUE[precision] - 8 * n <= saved <= values * _SAVED_PER_VALUE[precision]
    assert _recall(full, half, queries) >= 0.995
    assert _recall(full, half, queries[:30], scope="/s3") >= 0.995
    for q in queries[:20]:
        exact = dict(full.search(q, k=10))
        for rid, score in half.search(q, k=10):
            if rid in exact:
                if precision == "int8":  # re-ranked with the exact vectors
                    assert score == exact[rid]
                else:
                    assert abs(score - exact[rid]) <= 1e-3


def test_exact_vectors_survive_every_write_path(random_pair):
    full, half, vectors, queries = random_pair
    np.testing.assert_array_equal(half.get("r17").vector, vectors[17])
    listed = half.list(scope="/s2", limit=5)
    for rec in listed:
        np.testing.assert_array_equal(rec.vector, vectors[int(rec.id[1:])])
    half.update("r17", content="edited", metadata={"k": 1})
    half.touch(["r17", "r18"])
    for store in (full, half):
        rec = store.get("r17")
        assert rec.content == "edited" and rec.metadata == {"k": 1}
        np.testing.assert_array_equal(rec.vector, vectors[17])
    half.update("r18", vector=queries[0])
    np.testing.assert_array_equal(full.get("r18").vector, queries[0])
    assert half.search(queries[0], k=1).ids[0] == "r18"
    full.add("fresh", queries[1])
    assert half.search(queries[1], k=1).ids[0] == "fresh"
    np.testing.assert_array_equal(half.get("fresh").vector, queries[1])


def test_int8_score_floor_applies_to_exact_scores(tmp_path):
    rng = np.random.default_rng(8)
    vectors = rng.standard_normal((2000, 64), dtype=np.float32)
    path = tmp_path / "floor.ferro"
    with ferromem.open(path, cache_size=0) as full:
        full.add([f"r{i}" for i in range(len(vectors))], vectors)
        with ferromem.open(path, precision="int8", cache_size=0) as small:
            for q in rng.standard_normal((20, 64), dtype=np.float32):
                want = full.search(q, k=50)
                floor = want.scores[6]
                got = small.search(q, k=10, min_score=floor)
                assert list(got.ids) == list(full.search(q, k=10, min_score=floor).ids)
                assert all(s >= floor for s in got.scores) and len(got) == 7


def _minilm_store(tmp_path, queries: int):
    """An exact f32 store of the first 10,000 real MiniLM passages, its path, and the
    first `queries` real queries (skips without the shared data set)."""
    folder = shared_data_dir()
    if folder is None or not (folder / "docs-minilm384.npz").is_file():
        pytest.skip("real embeddings absent (FERROMEM_SHARED_DATA or <repo>/../shared/data)")
    with np.load(folder / "docs-minilm384.npz") as arrays:
        passages = arrays["passages"][:10_000].astype(np.float32)
        chosen = arrays["queries"][:queries].astype(np.float32)
    path = tmp_path / "m.ferro"
    full = ferromem.open(path, index="exact", cache_size=0)
    full.add([f"p{i}" for i in range(len(passages))], passages)
    return full, path, chosen


def test_int8_on_real_embeddings_exact_and_graph(tmp_path):
    full, path, queries = _minilm_store(tmp_path, 200)
    small = ferromem.open(path, precision="int8", index="exact", cache_size=0)
    assert _recall(full, small, queries) >= 0.995
    small.set_index("hnsw")
    assert small.wait_for_index(timeout=300)
    assert small.stats()["index"]["active"] == "hnsw"
    assert _recall(full, small, queries) >= 0.95
    small.close()
    full.close()


def test_f16_with_the_graph_on_real_embeddings(tmp_path):
    full, path, queries = _minilm_store(tmp_path, 100)
    half = ferromem.open(path, precision="f16", index="hnsw", cache_size=0)
    assert half.wait_for_index(timeout=300)
    assert half.stats()["index"]["active"] == "hnsw"
    assert _recall(full, half, queries) >= 0.95
    half.close()
    full.close()


@pytest.mark.parametrize("precision", ["f8", "F16", None, 16, "bf16"])
def test_bad_precisions_are_typed_errors(tmp_path, precision):
    with pytest.raises(InvalidInputError):
        ferromem.open(tmp_path / "x.ferro", precision=precision)


@pytest.mark.parametrize("precision", ["f16", "int8"])
def test_reduced_precisions_need_a_file(precision):
    with pytest.raises(InvalidInputError, match="in-memory"):
        ferromem.open(None, precision=precision)


def test_int8_store_image_opens_to_the_same_answers(tmp_path):
    """fast_open with int8: the image holds the quantised rows, so a store opened from it
    answers exactly as one read from the file, and as the f32 store (exact re-ranking)."""
    path = tmp_path / "i.ferro"
    rng = np.random.default_rng(21)
    vectors = rng.standard_normal((5000, 96)).astype(np.float32)
    ids = [f"m{i}" for i in range(len(vectors))]
    with ferromem.open(path, precision="int8", fast_open=True) as store:
        store.add(ids, vectors, scopes=[f"/crew/a{i % 4}" for i in range(len(ids))])
        assert not store.stats()["fast_open"]["opened_from_image"]
    assert (tmp_path / "i.ferro.image").exists()
    queries = rng.standard_normal((20, 96)).astype(np.float32)
    with (
        ferromem.open(path, precision="int8", fast_open=True, cache_size=0) as fast,
        ferromem.open(path, precision="int8", cache_size=0) as plain,
        ferromem.open(path, cache_size=0) as full,
    ):
        assert fast.stats()["fast_open"] == {"enabled": True, "opened_from_image": True, "rejected": None}
        assert fast.stats()["precision"] == "int8"
        for q in queries:
            for filters in ({}, {"scope": "/crew/a2"}):
                got = list(fast.search(q, 10, **filters))
                assert got == list(plain.search(q, 10, **filters))
                assert got == list(full.search(q, 10, **filters))
        assert np.array_equal(fast.get("m7").vector, vectors[7])
