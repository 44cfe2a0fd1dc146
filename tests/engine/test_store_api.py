"""The public Store API, on every engine and storage (see conftest.py)."""

from __future__ import annotations

import array
import datetime as dt
import threading
import time
import warnings

import ferromem
import numpy as np
import pytest
from _helpers import HOSTILE
from conftest import snapshot, unit_rows
from ferromem import _buffers
from ferromem import store as store_module

DIM = 8


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def axis(i: int, dim: int = DIM, scale: float = 1.0) -> np.ndarray:
    vector = np.zeros(dim, dtype=np.float32)
    vector[i] = scale
    return vector


# ----------------------------------------------------------------------------- open


def test_new_store_is_empty(store, engine_name, store_path):
    assert store.engine == engine_name
    assert store.dim is None
    assert len(store) == 0
    assert store.count() == 0
    if store_path is not None and store_path.startswith("postgresql://"):
        # A database store has no file; its location is the URL (no password in it here).
        assert store.path is None and store.location == store_path
    else:
        assert store.path == store_path and store.location == store_path
    assert store.list() == []
    assert store.child_scopes() == []
    assert store.category_counts() == {}


def test_open_creates_parent_directories(engine_name, tmp_path):
    path = tmp_path / "a" / "b" / "mem.ferro"
    with ferromem.open(path, engine=engine_name) as store:
        store.add("x", [1.0, 2.0])
    assert path.is_file()


def test_dim_given_at_open_is_enforced(open_store):
    store = open_store(dim=4)
    assert store.dim == 4
    with pytest.raises(ferromem.DimensionMismatchError):
        store.add("x", [1.0, 2.0, 3.0])
    assert len(store) == 0
    store.add("x", [1.0, 2.0, 3.0, 4.0])
    assert store.dim == 4


# ----------------------------------------------------------------------------- add / get


def test_add_single_record_with_every_field(store):
    vector = np.arange(1, DIM + 1, dtype=np.float32)
    returned = store.add(
        "mem-1",
        vector,
        contents="the sky is blue",
        scopes="/crew/agent",
        categories=["fact", "colour"],
        metadata={"n": 1, "nested": {"list": [1, "two", None, True]}, "ü": "é"},
        importance=0.9,
        created_at=1000.0,
        last_accessed=2000.0,
        sources="agent-7",
        private=True,
    )
    assert returned == ["mem-1"]
    record = store.get("mem-1")
    assert record == ferromem.Record(
        id="mem-1",
        content="the sky is blue",
        scope="/crew/agent",
        categories=("fact", "colour"),
        metadata={"n": 1, "nested": {"list": [1, "two", None, True]}, "ü": "é"},
        importance=0.9,
        created_at=1000.0,
        last_accessed=2000.0,
        source="agent-7",
        private=True,
        vector=vector,
    )
    assert record.vector.dtype == np.float32
    assert not record.vector.flags.writeable
    assert store.dim == DIM
    assert len(store) == 1


def test_defaults(store):
    before = time.time()
    store.add("x", axis(0))
    after = time.time()
    record = store.get("x")
    assert record.content == ""
    assert record.scope == "/"
    assert record.categories == ()
    assert record.metadata == {}
    assert record.importance == 0.5
    assert before - 1e-3 <= record.created_at <= after + 1e-3
    assert record.last_accessed == record.created_at
    assert record.source is None
    assert record.private is False


def test_generated_ids_single_and_batch(store):
    [single] = store.add(None, axis(0))
    batch = store.add(None, np.stack([axis(1), axis(2)]))
    for generated in [single, *batch]:
        assert isinstance(generated, str) and len(generated) == 32
        int(generated, 16)
    assert len({single, *batch}) == 3
    assert len(store) == 3
    assert np.array_equal(store.get(batch[1]).vector, axis(2))


def test_batch_fields_broadcast_and_per_record(store):
    vectors = np.stack([axis(0), axis(1), axis(2)])
    ids = store.add(
        ["a", "b", "c"],
        vectors,
        contents=["A", "B", "C"],
        scopes="/shared",
        categories=["x", "y"],  # one category list for all records
        metadata=[{"i": 0}, {"i": 1}, {"i": 2}],
        importance=np.array([0.1, 0.2, 0.3]),
        created_at=[10.0, 20.0, 30.0],
        sources=["s0", None, "s2"],
        private=[False, True, False],
    )
    assert ids == ["a", "b", "c"]
    records = store.get_many(ids)
    assert [r.content for r in records] == ["A", "B", "C"]
    assert [r.scope for r in records] == ["/shared"] * 3
    assert [r.categories for r in records] == [("x", "y")] * 3
    assert [r.metadata for r in records] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [r.importance for r in records] == pytest.approx([0.1, 0.2, 0.3])
    assert [r.created_at for r in records] == [10.0, 20.0, 30.0]
    assert [r.last_accessed for r in records] == [10.0, 20.0, 30.0]
    assert [r.source for r in records] == ["s0", None, "s2"]
    assert [r.private for r in records] == [False, True, False]


def test_batch_categories_per_record(store):
    store.add(["a", "b"], np.stack([axis(0), axis(1)]), categories=[["x"], ["y", "z"]])
    assert store.get("a").categories == ("x",)
    assert store.get("b").categories == ("y", "z")


def test_duplicate_categories_are_stored_once(store):
    store.add("a", axis(0), categories=["x", "x", "y"])
    assert store.get("a").categories == ("x", "y")
    assert store.category_counts() == {"x": 1, "y": 1}


def test_datetime_timestamps(store):
    created = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    store.add("a", axis(0), created_at=created, last_accessed=created + dt.timedelta(hours=1))
    record = store.get("a")
    assert record.created_at == created.timestamp()
    assert record.last_accessed == created.timestamp() + 3600


@pytest.mark.parametrize(
    "make",
    [
        lambda v: v.tolist(),
        lambda v: v.astype(np.float64),
        lambda v: v.astype(np.float16),
        lambda v: memoryview(v),
        lambda v: array.array("f", v.tolist()),
        lambda v: array.array("d", v.tolist()),
        lambda v: np.repeat(v, 2)[::2],  # non-contiguous
        lambda v: v.reshape(1, -1),  # one row of a matrix
        lambda v: tuple(v.tolist()),
    ],
    ids=["list", "float64", "float16", "memoryview", "array-f", "array-d", "strided", "row", "tuple"],
)
def test_vector_input_forms(store, make):
    vector = np.array([1.0, -2.0, 0.5, 4.0], dtype=np.float32)
    store.add("v", make(vector))
    assert np.array_equal(store.get("v").vector, vector)
    result = store.search(make(vector), k=1)
    if isinstance(result, list):  # a (1, d) matrix is a batch of one query
        [result] = result
    assert result.ids.tolist() == ["v"]


def test_integer_vectors_are_converted(store):
    store.add("i", [1, 2, 3])
    assert store.get("i").vector.tolist() == [1.0, 2.0, 3.0]


def test_batch_of_lists(store):
    store.add(["a", "b"], [[1.0, 0.0], [0.0, 1.0]])
    assert store.search([1.0, 0.1], k=1).ids.tolist() == ["a"]


def test_empty_batch_writes_nothing(store):
    assert store.add([], []) == []
    assert store.add([], np.zeros((0, 4), dtype=np.float32)) == []
    assert len(store) == 0


def test_metadata_numpy_scalars_and_unicode_round_trip(store):
    metadata = {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "名前": "値 🚀"}
    store.add("m", axis(0), metadata=metadata)
    assert store.get("m").metadata == {"i": 3, "f": 0.5, "b": True, "名前": "値 🚀"}


def test_get_missing_and_get_many_order(store):
    store.add(["a", "b"], np.stack([axis(0), axis(1)]))
    assert store.get("zzz") is None
    records = store.get_many(["b", "missing", "a", "b"])
    assert [r.id if r else None for r in records] == ["b", None, "a", "b"]
    assert store.get_many([]) == []


def test_add_existing_id_raises_and_writes_nothing(store):
    store.add("a", axis(0), contents="original")
    before = snapshot(store)
    with pytest.raises(ferromem.DuplicateIdError):
        store.add(["new", "a"], np.stack([axis(1), axis(2)]))
    assert snapshot(store) == before
    assert store.get("new") is None


def test_upsert_replaces_the_whole_record(store):
    store.add("a", axis(0), contents="old", categories=["c"], metadata={"k": 1}, private=True)
    assert store.upsert("a", axis(1), contents="new") == ["a"]
    record = store.get("a")
    assert record.content == "new"
    assert record.categories == ()
    assert record.metadata == {}
    assert record.private is False
    assert np.array_equal(record.vector, axis(1))
    assert len(store) == 1
    assert store.search(axis(1), k=1).ids.tolist() == ["a"]


def test_upsert_batch_mixes_new_and_existing(store):
    store.add("a", axis(0))
    store.upsert(["a", "b"], np.stack([axis(2), axis(3)]), contents=["A2", "B"])
    assert len(store) == 2
    assert store.get("a").content == "A2"
    assert np.array_equal(store.get("a").vector, axis(2))


def test_upsert_after_delete(store):
    store.add("a", axis(0))
    store.delete("a")
    store.upsert("a", axis(1))
    assert np.array_equal(store.get("a").vector, axis(1))
    assert len(store) == 1


# ----------------------------------------------------------------------------- search


def test_search_ranks_by_cosine(store, rng):
    vectors = rng.standard_normal((50, DIM)).astype(np.float32)
    ids = [f"id-{i:02d}" for i in range(50)]
    store.add(ids, vectors)
    query = rng.standard_normal(DIM).astype(np.float32)
    result = store.search(query, k=7)
    expected_scores = np.array([cosine(v, query) for v in vectors])
    expected_order = sorted(range(50), key=lambda i: (-expected_scores[i], ids[i]))[:7]
    assert isinstance(result, ferromem.SearchResult)
    assert result.ids.dtype == object
    assert result.scores.dtype == np.float32
    assert result.ids.tolist() == [ids[i] for i in expected_order]
    np.testing.assert_allclose(result.scores, expected_scores[expected_order], atol=1e-5)
    assert np.all(np.diff(result.scores) <= 0)


def test_search_result_behaviour(store):
    store.add(["a", "b", "c"], np.stack([axis(0), axis(0) + axis(1), axis(2)]))
    result = store.search(axis(0), k=3)
    assert len(result) == 3
    assert bool(result)
    pairs = list(result)
    assert [p[0] for p in pairs] == ["a", "b", "c"]
    assert all(isinstance(i, str) and isinstance(s, float) for i, s in pairs)
    assert result[0] == ("a", pytest.approx(1.0))
    assert result[1][0] == "b" and result[1][1] == pytest.approx(1 / np.sqrt(2), abs=1e-6)
    assert result[-1] == ("c", pytest.approx(0.0, abs=1e-7))
    top_two = result[:2]
    assert isinstance(top_two, ferromem.SearchResult) and top_two.ids.tolist() == ["a", "b"]
    records = result.records()
    assert [r.id for r in records] == ["a", "b", "c"]
    assert records[0] == store.get("a")
    assert "SearchResult" in repr(result)


def test_search_records_of_deleted_hit_is_none(store):
    store.add(["a", "b"], np.stack([axis(0), axis(1)]))
    result = store.search(axis(0), k=2)
    store.delete("a")
    assert [r.id if r else None for r in result.records()] == [None, "b"]


def test_search_batch_matches_single_queries(store, rng):
    vectors = unit_rows(rng, 40, DIM)
    store.add([f"r{i}" for i in range(40)], vectors)
    queries = unit_rows(rng, 5, DIM)
    batch = store.search(queries, k=4)
    assert isinstance(batch, list) and len(batch) == 5
    for query, result in zip(queries, batch):
        single = store.search(query, k=4)
        assert result.ids.tolist() == single.ids.tolist()
        np.testing.assert_allclose(result.scores, single.scores, atol=1e-6)
    one_row = store.search(queries[:1], k=2)
    assert isinstance(one_row, list) and len(one_row) == 1


def test_search_empty_store_and_large_k(store):
    assert len(store.search([1.0, 2.0], k=5)) == 0
    assert not store.search([1.0, 2.0], k=5)
    store.add(["a", "b"], [[1.0, 0.0], [0.0, 1.0]])
    assert len(store.search([1.0, 1.0], k=1000)) == 2
    assert len(store.search([1.0, 1.0], k=10**12)) == 2


def test_search_ties_are_ordered_by_id(store):
    ids = ["m", "b", "z", "a", "é", "B"]
    store.add(ids, np.tile(axis(0), (len(ids), 1)))
    assert store.search(axis(0), k=6).ids.tolist() == sorted(ids)
    assert store.search(axis(0), k=2).ids.tolist() == sorted(ids)[:2]


def test_search_reports_negative_scores_and_min_score(store):
    store.add(["same", "orth", "opp"], np.stack([axis(0), axis(1), -axis(0)]))
    result = store.search(axis(0), k=3)
    assert result.ids.tolist() == ["same", "orth", "opp"]
    np.testing.assert_allclose(result.scores, [1.0, 0.0, -1.0], atol=1e-6)
    assert store.search(axis(0), k=3, min_score=0.0).ids.tolist() == ["same", "orth"]
    assert store.search(axis(0), k=3, min_score=-1.0).ids.tolist() == ["same", "orth", "opp"]
    assert len(store.search(axis(0), k=3, min_score=1.5)) == 0
    assert store.search(axis(0), k=3, min_score=0.5).ids.tolist() == ["same"]


def test_search_scale_invariance(store):
    store.add(["a", "b"], np.stack([axis(0, scale=1000.0), axis(0) + axis(1)]))
    result = store.search(axis(0, scale=1e-3), k=2)
    assert result.ids.tolist() == ["a", "b"]
    assert result.scores[0] == pytest.approx(1.0, abs=1e-6)


def _filter_fixture(store):
    """Six records on one direction with different attributes (scores all tie)."""
    store.add(
        ["r0", "r1", "r2", "r3", "r4", "r5"],
        np.tile(axis(0), (6, 1)),
        scopes=["/a", "/a/x", "/ab", "/b", "/a/x/y", "/"],
        categories=[["p"], ["q"], ["p", "q"], [], ["r"], ["p"]],
        metadata=[
            {"n": 1, "flag": True, "s": "x"},
            {"n": 1.0, "flag": False, "s": None},
            {"n": 2, "flag": 1},
            {"n": "1", "s": "x", "list": [1]},
            {"nested": {"n": 1}, "s": None},
            {},
        ],
        sources=["alice", "bob", "alice", None, "bob", "alice"],
        private=[False, True, True, False, False, True],
        created_at=[100.0, 200.0, 300.0, 400.0, 500.0, 600.0],
    )


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["r0", "r1", "r2", "r3", "r4", "r5"]),
        ({"scope": "/"}, ["r0", "r1", "r2", "r3", "r4", "r5"]),
        ({"scope": "/a"}, ["r0", "r1", "r4"]),
        ({"scope": "/a/x"}, ["r1", "r4"]),
        ({"scope": "/a/"}, ["r1", "r4"]),
        ({"scope": "/ab"}, ["r2"]),
        ({"scope": "/c"}, []),
        ({"categories": ["p"]}, ["r0", "r2", "r5"]),
        ({"categories": ["q", "r"]}, ["r1", "r2", "r4"]),
        ({"categories": []}, []),
        ({"where": {"n": 1}}, ["r0", "r1"]),
        ({"where": {"n": 1.0}}, ["r0", "r1"]),
        ({"where": {"n": "1"}}, ["r3"]),
        ({"where": {"flag": True}}, ["r0"]),
        ({"where": {"flag": 1}}, ["r2"]),
        ({"where": {"s": None}}, ["r1", "r4"]),
        ({"where": {"s": "x", "n": 1}}, ["r0"]),
        ({"where": {"list": 1}}, []),
        ({"where": {"nested": 1}}, []),
        ({"where": {}}, ["r0", "r1", "r2", "r3", "r4", "r5"]),
        ({"source": "alice"}, ["r0", "r2", "r5"]),
        ({"include_private": False}, ["r0", "r3", "r4"]),
        ({"include_private": False, "visible_to": "alice"}, ["r0", "r2", "r3", "r4", "r5"]),
        ({"include_private": False, "visible_to": "bob"}, ["r0", "r1", "r3", "r4"]),
        ({"scope": "/a", "categories": ["q", "r"], "source": "bob"}, ["r1", "r4"]),
        ({"scope": "/a", "include_private": False}, ["r0", "r4"]),
    ],
)
def test_filters_in_search_count_list_and_category_counts(store, filters, expected):
    _filter_fixture(store)
    found = store.search(axis(0), k=10, **filters)
    assert found.ids.tolist() == expected  # all scores tie: id order
    assert store.count(**filters) == len(expected)
    listed = store.list(**filters)
    assert [r.id for r in listed] == sorted(expected, key=lambda i: -int(i[1]))
    counts: dict[str, int] = {}
    for record in listed:
        for category in record.categories:
            counts[category] = counts.get(category, 0) + 1
    assert store.category_counts(**filters) == counts


def test_filters_apply_before_ranking(store, rng):
    vectors = unit_rows(rng, 200, DIM)
    scopes = ["/rare" if i % 50 == 0 else "/common" for i in range(200)]
    store.add([f"r{i:03d}" for i in range(200)], vectors, scopes=scopes)
    result = store.search(vectors[1], k=10, scope="/rare")
    assert sorted(result.ids.tolist()) == ["r000", "r050", "r100", "r150"]


# ----------------------------------------------------------------------------- update / touch


def test_update_changes_only_given_fields(store):
    store.add(
        "a",
        axis(0),
        contents="c",
        scopes="/s",
        categories=["x"],
        metadata={"k": 1},
        importance=0.2,
        created_at=10.0,
        last_accessed=20.0,
        sources="src",
        private=True,
    )
    before = store.get("a")
    updated = store.update("a", content="new content", source=None)
    assert isinstance(updated, ferromem.Record)
    assert updated.content == "new content"
    assert updated.source is None
    assert (updated.scope, updated.categories, updated.metadata, updated.importance) == (
        before.scope,
        before.categories,
        before.metadata,
        before.importance,
    )
    assert (updated.created_at, updated.last_accessed, updated.private) == (10.0, 20.0, True)
    assert updated == store.get("a")


def test_update_every_field(store):
    store.add(["a", "b"], np.stack([axis(0), axis(1)]))
    updated = store.update(
        "a",
        content="C",
        scope="/new",
        categories=["k"],
        metadata={"m": [1]},
        importance=1.5,
        created_at=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
        last_accessed=5.0,
        source="s",
        private=True,
        vector=axis(1) * 2,
    )
    assert updated.content == "C" and updated.scope == "/new"
    assert updated.categories == ("k",) and updated.metadata == {"m": [1]}
    assert updated.importance == 1.5 and updated.last_accessed == 5.0
    assert updated.created_at == dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc).timestamp()
    assert updated.source == "s" and updated.private is True
    assert np.array_equal(updated.vector, axis(1) * 2)
    # The new vector is searchable, the old one is gone: a and b now tie on axis 1.
    assert store.search(axis(1), k=2).ids.tolist() == ["a", "b"]
    assert store.search(axis(0), k=1).scores[0] == pytest.approx(0.0, abs=1e-6)
    assert store.count(scope="/new") == 1 and store.count(categories=["k"]) == 1


def test_update_without_fields_returns_record(store):
    store.add("a", axis(0))
    assert store.update("a") == store.get("a")


def test_update_missing_id(store):
    with pytest.raises(ferromem.NotFoundError) as info:
        store.update("nope", content="x")
    assert isinstance(info.value, KeyError)
    assert "nope" in str(info.value)
    with pytest.raises(ferromem.NotFoundError):
        store.update("nope")
    assert len(store) == 0


def test_touch(store):
    store.add(["a", "b"], np.stack([axis(0), axis(1)]), created_at=1.0)
    assert store.touch("a", at=50.0) == 1
    assert store.get("a").last_accessed == 50.0
    assert store.get("b").last_accessed == 1.0
    assert store.touch(["a", "b", "missing", "a"], at=dt.datetime.fromtimestamp(60.0)) == 2
    assert store.get("b").last_accessed == 60.0
    before = time.time()
    assert store.touch(["b"]) == 1
    assert store.get("b").last_accessed >= before - 1e-3
    assert store.get("b").created_at == 1.0
    assert store.touch([]) == 0
    assert store.touch("missing") == 0


# ----------------------------------------------------------------------------- delete


def test_delete_by_ids(store):
    store.add(["a", "b", "c"], np.stack([axis(0), axis(1), axis(2)]))
    assert store.delete("a") == 1
    assert store.delete(["b", "missing", "b"]) == 1
    assert store.delete("a") == 0
    assert store.delete([]) == 0
    assert [r.id for r in store.list()] == ["c"]
    assert store.search(axis(0), k=5).ids.tolist() == ["c"]


@pytest.mark.parametrize(
    ("criteria", "deleted"),
    [
        ({"scope": "/a"}, ["r0", "r1", "r4"]),
        ({"categories": ["p"]}, ["r0", "r2", "r5"]),
        ({"where": {"n": 1}}, ["r0", "r1"]),
        ({"source": "bob"}, ["r1", "r4"]),
        ({"scope": "/", "source": "bob"}, ["r1", "r4"]),
        ({"older_than": 300.0}, ["r0", "r1"]),
        ({"older_than": dt.datetime.fromtimestamp(301.0)}, ["r0", "r1", "r2"]),
        ({"ids": ["r0", "r2", "r3"], "scope": "/a"}, ["r0"]),
        ({"scope": "/a", "categories": ["r"]}, ["r4"]),
        ({"ids": "r5", "source": "bob"}, []),
    ],
)
def test_delete_by_criteria(store, criteria, deleted):
    _filter_fixture(store)
    assert store.delete(**criteria) == len(deleted)
    remaining = sorted(r.id for r in store.list())
    assert remaining == sorted({"r0", "r1", "r2", "r3", "r4", "r5"} - set(deleted))
    assert len(store.search(axis(0), k=10)) == len(remaining)


# ----------------------------------------------------------------------------- list / count


def test_list_order_offset_limit(store):
    created = {"a": 5.0, "b": 7.0, "c": 7.0, "d": 1.0, "e": 9.0}
    ids = list(created)
    store.add(ids, np.tile(axis(0), (5, 1)), created_at=[created[i] for i in ids])
    expected = ["e", "b", "c", "a", "d"]  # newest first, ties by id
    assert [r.id for r in store.list()] == expected
    assert [r.id for r in store.list(limit=2)] == expected[:2]
    assert [r.id for r in store.list(offset=2)] == expected[2:]
    assert [r.id for r in store.list(offset=1, limit=3)] == expected[1:4]
    assert store.list(offset=10) == []
    assert store.list(limit=0) == []


def test_count_and_len(store):
    _filter_fixture(store)
    assert len(store) == store.count() == 6
    assert store.count(scope="/a", source="bob") == 2


# ----------------------------------------------------------------------------- scopes


def test_child_scopes(store):
    scopes = ["/a/x/deep", "/a/y", "/ab/z", "/b", "/a", "/", "/c/d/e/f"]
    store.add([f"s{i}" for i in range(len(scopes))], np.tile(axis(0), (len(scopes), 1)), scopes=scopes)
    assert store.child_scopes() == ["/a", "/ab", "/b", "/c"]
    assert store.child_scopes("/") == ["/a", "/ab", "/b", "/c"]
    assert store.child_scopes(None) == ["/a", "/ab", "/b", "/c"]
    assert store.child_scopes("/a") == ["/a/x", "/a/y"]
    assert store.child_scopes("/a/") == ["/a/x", "/a/y"]
    assert store.child_scopes("/a/x") == ["/a/x/deep"]
    assert store.child_scopes("/c") == ["/c/d"]
    assert store.child_scopes("/b") == []
    assert store.child_scopes("/zzz") == []
    store.delete(scope="/a/x")
    assert store.child_scopes("/a") == ["/a/y"]


def test_category_counts(store):
    store.add(
        ["a", "b", "c"],
        np.tile(axis(0), (3, 1)),
        categories=[["x", "y"], ["x"], []],
        scopes=["/p", "/p/q", "/r"],
    )
    assert store.category_counts() == {"x": 2, "y": 1}
    assert store.category_counts(scope="/p/q") == {"x": 1}
    assert store.category_counts(scope="/r") == {}
    assert store.category_counts(categories=["y"]) == {"x": 1, "y": 1}


def test_scope_info(store):
    store.add(
        ["a", "b", "c", "d"],
        np.tile(axis(0), (4, 1)),
        scopes=["/p", "/p/q", "/p/q/r", "/pq"],
        categories=[["z"], ["x", "y"], ["x"], ["w"]],
        created_at=[30.0, 10.0, 20.0, 5.0],
    )
    info = store.scope_info("/p")
    assert info == ferromem.ScopeInfo(
        path="/p",
        record_count=3,
        categories=("x", "y", "z"),
        oldest=10.0,
        newest=30.0,
        child_scopes=("/p/q",),
    )
    root = store.scope_info()
    assert root.record_count == 4 and root.oldest == 5.0 and root.newest == 30.0
    assert root.child_scopes == ("/p", "/pq")
    assert store.scope_info("/p/q/").path == "/p/q"
    empty = store.scope_info("/none")
    assert (empty.record_count, empty.categories, empty.oldest, empty.newest, empty.child_scopes) == (
        0,
        (),
        None,
        None,
        (),
    )


# ----------------------------------------------------------------------------- lifecycle


def test_reset_then_new_dimension(store):
    store.add(["a", "b"], np.stack([axis(0), axis(1)]))
    assert store.dim == DIM
    store.reset()
    assert store.dim is None
    assert len(store) == 0
    assert store.get("a") is None
    assert len(store.search(axis(0), k=3)) == 0
    store.add("a", [1.0, 2.0, 3.0])
    assert store.dim == 3
    assert store.search([1.0, 2.0, 3.0], k=1).ids.tolist() == ["a"]


def test_persistence_across_close_and_reopen(engine_name, tmp_path):
    path = tmp_path / "persist.ferro"
    with ferromem.open(path, engine=engine_name) as store:
        store.add(
            ["a", "b", "c"],
            np.stack([axis(0), axis(1), axis(2)]),
            contents=["A", "B", "C"],
            metadata=[{"i": 1}, {}, {"x": "ü"}],
            categories=[["k"], [], ["k", "l"]],
            sources=["s", None, "t"],
            private=[True, False, False],
            created_at=[1.0, 2.0, 3.0],
        )
        store.update("b", content="B2")
        store.delete("c")
        store.touch("a", at=99.0)
        before = snapshot(store)
    with ferromem.open(path, engine=engine_name) as reopened:
        assert reopened.dim == DIM
        assert snapshot(reopened) == before
        assert reopened.search(axis(1), k=1).ids.tolist() == ["b"]
        reopened.add("d", axis(3))
    with ferromem.open(path, engine=engine_name) as again:
        assert sorted(r.id for r in again.list()) == ["a", "b", "d"]
        with pytest.raises(ferromem.DimensionMismatchError):
            ferromem.open(path, engine=engine_name, dim=DIM + 1)


def test_reset_persists(engine_name, tmp_path):
    path = tmp_path / "reset.ferro"
    with ferromem.open(path, engine=engine_name) as store:
        store.add("a", axis(0))
        store.reset()
    with ferromem.open(path, engine=engine_name) as store:
        assert len(store) == 0 and store.dim is None
        store.add("b", [1.0, 2.0])
        assert store.dim == 2


def test_two_handles_on_one_file_see_each_others_writes(engine_name, tmp_path):
    path = tmp_path / "shared.ferro"
    with ferromem.open(path, engine=engine_name) as first, ferromem.open(path, engine=engine_name) as second:
        first.add("a", axis(0), contents="from first")
        assert second.get("a").content == "from first"
        assert second.search(axis(0), k=1).ids.tolist() == ["a"]
        second.update("a", content="from second")
        second.add("b", axis(1))
        assert first.get("a").content == "from second"
        assert first.count() == 2
        with pytest.raises(ferromem.DuplicateIdError):
            first.add("b", axis(2))
        first.delete("a")
        assert second.get("a") is None
        second.reset()
        assert first.count() == 0 and first.dim is None
        first.add("c", [1.0, 2.0, 3.0])
        assert second.dim == 3


def test_context_manager_and_closed_store(store):
    store.add("a", axis(0))
    with store as same:
        assert same is store
    assert store.closed
    store.close()  # closing twice is harmless
    calls = [
        lambda: store.add("b", axis(1)),
        lambda: store.upsert("b", axis(1)),
        lambda: store.search(axis(0)),
        lambda: store.get("a"),
        lambda: store.get_many(["a"]),
        lambda: store.update("a", content="x"),
        lambda: store.touch("a"),
        lambda: store.delete("a"),
        lambda: store.list(),
        lambda: store.count(),
        lambda: len(store),
        lambda: store.child_scopes(),
        lambda: store.category_counts(),
        lambda: store.scope_info(),
        lambda: store.reset(),
        lambda: store.stats(),
        lambda: store.dim,
        lambda: store.__enter__(),
    ]
    for call in calls:
        with pytest.raises(ferromem.StoreClosedError) as info:
            call()
        assert isinstance(info.value, RuntimeError)
        assert "open it again" in str(info.value)
    assert "closed" in repr(store)


def test_stats(store):
    store.add(["a", "b"], np.stack([axis(0), axis(1)]))
    for _ in range(3):
        store.search(axis(0), k=1)
    stats = store.stats()
    assert stats["engine"] == store.engine
    assert stats["records"] == 2
    assert stats["dim"] == DIM
    search_stats = stats["operations"]["search"]
    assert search_stats["count"] >= 3
    assert set(search_stats) >= {"count", "p50_us", "p95_us", "p99_us", "max_us"}
    assert 0 <= search_stats["p50_us"] <= search_stats["p95_us"] <= search_stats["p99_us"]
    assert search_stats["p99_us"] <= search_stats["max_us"]
    assert stats["operations"]["add"]["count"] >= 1
    store.upsert("a", axis(2))
    assert store.stats()["operations"]["upsert"]["count"] >= 1


def test_concurrent_writers_and_readers(store):
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for i in range(25):
                store.add(f"w{worker}-{i}", axis((worker + i) % DIM) + 0.1)
                store.search(axis(worker % DIM), k=3)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store) == 100


# ----------------------------------------------------------------------------- engines


def test_auto_falls_back_with_exactly_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(store_module, "_core", None)
    monkeypatch.setattr(store_module, "_core_import_error", ImportError("no _core here"))
    monkeypatch.setattr(store_module, "_native_warning_issued", False)
    with pytest.warns(ferromem.NativeUnavailableWarning) as caught:
        first = ferromem.open()
    second = ferromem.open(tmp_path / "x.ferro")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "no _core here" in message and "Rust toolchain" in message
    assert caught[0].filename == __file__  # points at the caller's line
    assert first.engine == second.engine == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ferromem.open().close()  # no second warning in this process
    first.close()
    second.close()


def test_native_requested_but_unavailable(monkeypatch):
    cause = ImportError("no _core here")
    monkeypatch.setattr(store_module, "_core", None)
    monkeypatch.setattr(store_module, "_core_import_error", cause)
    with pytest.raises(ferromem.FerromemError) as info:
        ferromem.open(engine="native")
    assert info.value.__cause__ is cause
    assert "engine='reference'" in str(info.value)


def test_reference_engine_is_explicit_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ferromem.open(engine="reference") as store:
            assert store.engine == "reference"


def test_data_plane_choice():
    # The compiled data plane is the one intake of vectors (there is no NumPy twin).
    assert store_module._data_plane is _buffers


# ----------------------------------------------------------------------------- data plane


def test_convert_shares_memory_when_possible():
    matrix = np.ones((3, 4), dtype=np.float32)
    assert np.shares_memory(_buffers.as_matrix(matrix), matrix)
    vector = np.ones(4, dtype=np.float32)
    as_matrix = _buffers.as_matrix(vector)
    assert as_matrix.shape == (1, 4) and np.shares_memory(as_matrix, vector)
    assert np.shares_memory(_buffers.as_vector(vector), vector)
    buffer = array.array("f", [1.0, 2.0, 3.0])
    assert np.shares_memory(_buffers.as_vector(buffer), np.frombuffer(buffer, dtype=np.float32))
    converted = _buffers.as_matrix(matrix.astype(np.float64))
    assert converted.dtype == np.float32 and converted.flags.c_contiguous
    fortran = np.asfortranarray(np.arange(1, 13, dtype=np.float32).reshape(3, 4))
    result = _buffers.as_matrix(fortran)
    assert result.flags.c_contiguous and np.array_equal(result, fortran)


def test_convert_shapes():
    assert _buffers.as_matrix([[1, 2], [3, 4]]).shape == (2, 2)
    assert _buffers.as_vector([[1, 2]]).shape == (2,)
    assert _buffers.as_vector([1, 2], dim=2).shape == (2,)
    with pytest.raises(ferromem.InvalidVectorError):
        _buffers.as_vector([[1, 2], [3, 4]])
    with pytest.raises(ferromem.DimensionMismatchError) as info:
        _buffers.as_matrix([[1, 2, 3]], dim=2)
    assert (info.value.expected, info.value.got) == (2, 3)


def test_ids_filter_narrows_search_list_count_and_categories(store, rng):
    vectors = unit_rows(rng, 6, 8)
    store.add(
        [f"r{i}" for i in range(6)],
        vectors,
        scopes=["/a", "/a", "/b", "/b", "/a", "/b"],
        categories=[["x"], ["y"], ["x"], ["y"], ["x"], ["y"]],
    )
    wanted = ["r1", "r2", "r5", "missing"]
    hits = store.search(vectors[0], 10, ids=wanted)
    assert sorted(hits.ids) == ["r1", "r2", "r5"]
    scores = vectors[[1, 2, 5]] @ vectors[0]
    assert np.allclose(np.sort(hits.scores)[::-1], np.sort(scores)[::-1], atol=1e-6)
    assert sorted(store.search(vectors[0], 10, ids=wanted, scope="/b").ids) == ["r2", "r5"]
    assert store.count(ids=wanted) == 3 and store.count(ids=[]) == 0
    assert [r.id for r in store.list(ids=("r5", "r1"))] == ["r1", "r5"]  # same time: by id
    assert store.category_counts(ids=wanted) == {"x": 1, "y": 2}
    for bad in ("r1", [1], 3):
        with pytest.raises(ferromem.InvalidFilterError):
            store.count(ids=bad)


def test_clear_deletes_everything_and_keeps_the_dimension(store, rng):
    store.add(["a", "b", "c"], unit_rows(rng, 3, 8))
    assert store.clear() == 3
    assert store.count() == 0 and store.dim == 8
    with pytest.raises(ferromem.DimensionMismatchError):
        store.add("d", unit_rows(rng, 1, 4)[0])
    assert store.clear() == 0


def test_hostile_strings_round_trip_in_every_field_and_never_widen_a_filter(open_store):
    """Quotes, SQL LIKE wildcards, backslashes, NUL, control characters, non-BMP and
    right-to-left text, SQL: ids, contents, scopes, categories, metadata keys and values
    and sources come back byte for byte, from the store and from a second handle (a fresh
    replica on a durable storage), and a filter on one never matches its neighbours."""
    store = open_store()
    expected = {}
    for i, text in enumerate(HOSTILE):
        vector = np.zeros(len(HOSTILE) + 1, dtype=np.float32)
        vector[i] = 1.0
        vector[-1] = 0.5
        fields = {
            "contents": "content:" + text,
            "scopes": "/h/" + text + "/end",
            "categories": [text or "empty", "c:" + text],
            "metadata": {text: text, "k": text},
            "sources": text,
        }
        store.add("id:" + text, vector, **fields)
        expected["id:" + text] = fields
        # A neighbour that a LIKE pattern or a careless escape would also match.
        store.add(
            "id:" + text + "x",
            vector * np.float32(2.0),
            contents="neighbour",
            scopes="/h/" + text + "/endx",
            categories=[(text or "empty") + "x"],
            metadata={text: text + "x", "k": text + "x"},
            sources=text + "x",
        )
    handles = [store]
    if store.location is not None:
        handles.append(open_store())  # the same location, another replica
    for handle in handles:
        assert handle.count() == 2 * len(HOSTILE)
        for rid, fields in expected.items():
            record = handle.get(rid)
            assert (
                record.content,
                record.scope,
                list(record.categories),
                record.metadata,
                record.source,
            ) == (
                fields["contents"],
                fields["scopes"],
                fields["categories"],
                fields["metadata"],
                fields["sources"],
            ), rid
            query = record.vector
            narrow = [
                {"scope": fields["scopes"]},
                {"categories": [fields["categories"][0]]},
                {"where": {"k": fields["metadata"]["k"]}},
                {"source": fields["sources"]},
            ]
            for filters in narrow:
                assert list(handle.search(query, 5, **filters).ids) == [rid], (rid, filters)
                assert handle.count(**filters) == 1, (rid, filters)
