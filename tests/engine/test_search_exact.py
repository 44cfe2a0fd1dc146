"""Search is exact: every engine returns what a plain float64 brute force returns.

For random stores (several seeds and sizes, dimensions 3 to 384, scopes from a tree
built to catch prefix-boundary mistakes, categories, metadata of every scalar type,
private records and sources) each filter kind alone and combined, with and without
``min_score``, must give the exact top ``k`` of the matching records: the same ids in the
same order (any order only inside a near tie), scores within 1e-5 of the exact cosine,
and exactly ``min(k, matches)`` results when there is no ``min_score``.

Every engine test runs in memory and again on PostgreSQL (the ``storage_kind`` fixture of
tests/_postgres_fixtures.py; skipped with the reason when no server is reachable): the
replica a PostgreSQL store searches is loaded from, and kept up to date by, the database.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _helpers import Oracle, Rec, engine_params, hypothesis_settings, open_store, store_records
from _postgres_fixtures import location_of
from hypothesis import given
from hypothesis import strategies as st

# A scope tree built for boundary mistakes: '/a' must not reach '/ab', '/share' must not
# reach '/share\docs', while '/share\' (ends in a non-alphanumeric) must.
SCOPES = [
    "/",
    "/a",
    "/a/b",
    "/a/b/c",
    "/ab",
    "/abc",
    "/a-b",
    "/share\\",
    "/share\\docs",
    "/share\\docs\\x",
    "/sharepoint",
    "/share",
    "/ünï",
    "/ünï/cødé",
    "/ünïx",
    "/日本",
    "/日本/東京",
    "/x-y",
    "/x-y/z",
]
FILTER_SCOPES = [
    None,
    "/",
    "/a",
    "/ab",
    "/a/b",
    "/a-",
    "/share\\",
    "/share",
    "/share\\docs",
    "/ünï",
    "/日本",
    "/x-",
    "/x-y",
    "/nowhere",
]
CATEGORIES = ["fact", "preference", "episode", "tool", "ünïcode", "two words"]
SOURCES = [None, "agent-1", "agent-2", "user", "ßource"]
META_KEYS = ["kind", "n", "flag", "nested", "ü"]
# 1 and 1.0 and True are deliberately all here: numbers compare numerically, booleans are
# not numbers. Containers are stored but never match a where.
META_VALUES = ["x", "y", "", 0, 1, 1.0, 2, 2.5, -1, True, False, None, [1], {"n": 1}]
WHERE_VALUES = ["x", "y", "", 0, 1, 1.0, 2.5, True, False, None, "missing"]

# (seed, n, dim): sizes 0..2000, dimensions 3 to 384 (odd ones catch SIMD tail bugs).
CONFIGS = [
    (0, 0, 17),
    (1, 1, 3),
    (2, 7, 3),
    (3, 60, 17),
    (4, 300, 64),
    (5, 2000, 3),
    (6, 2000, 17),
    (7, 1000, 64),
    (8, 500, 384),
    (9, 2000, 384),
]


def make_records(seed: int, n: int, dim: int) -> list[Rec]:
    """Random records; some share a vector bit for bit (exact ties) or a doubled one."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    for i in range(1, n):
        roll = rng.random()
        if roll < 0.03:
            vectors[i] = vectors[rng.integers(0, i)]  # identical: must tie, lower id first
        elif roll < 0.05:
            vectors[i] = vectors[rng.integers(0, i)] * np.float32(2.0)  # same direction
    vectors[np.all(vectors == 0, axis=1), 0] = 1.0
    id_alphabet = ["id", "ÿ", "日", "a", "Z", "_"]
    recs = []
    for i in range(n):
        metadata = {}
        for key in META_KEYS:
            if rng.random() < 0.6:
                metadata[key] = META_VALUES[rng.integers(len(META_VALUES))]
        n_categories = int(rng.integers(0, 3))
        recs.append(
            Rec(
                id=f"{id_alphabet[i % len(id_alphabet)]}{rng.integers(0, 10**6):06d}-{i}",
                vector=vectors[i],
                content=f"record {i}",
                scope=SCOPES[rng.integers(len(SCOPES))],
                categories=tuple(rng.choice(CATEGORIES, size=n_categories, replace=False)),
                metadata=metadata,
                importance=float(rng.random()),
                created_at=1_700_000_000.0 + float(rng.integers(0, 1000)),
                source=SOURCES[rng.integers(len(SOURCES))],
                private=bool(rng.random() < 0.3),
            )
        )
    return recs


_BUILT: dict[tuple, tuple] = {}


def built(engine: str, seed: int, n: int, dim: int, storage_kind: str = "memory"):
    """One store per configuration and storage, shared by every test that reads it."""
    key = (engine, seed, n, dim, storage_kind)
    if key not in _BUILT:
        recs = make_records(seed, n, dim)
        store = open_store(engine, location_of(storage_kind, f"exact-{engine}-{seed}-{n}-{dim}"), dim=dim)
        for start in range(0, n, 700):  # several batches: the arena grows across calls
            store_records(store, recs[start : start + 700])
        _BUILT[key] = store, Oracle(recs), recs
    return _BUILT[key]


@pytest.fixture(scope="module", autouse=True)
def _close_built_stores():
    """The shared stores live as long as this module's tests (a PostgreSQL store holds
    server connections)."""
    yield
    for store, _, _ in _BUILT.values():
        store.close()
    _BUILT.clear()


def queries_for(recs: list[Rec], seed: int, dim: int, count: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 1000)
    queries = [rng.standard_normal(dim).astype(np.float32) for _ in range(count)]
    if recs:
        queries.append(recs[len(recs) // 2].vector.copy())  # exact hit: score 1
        queries.append(-recs[0].vector)  # every score flips sign: negatives reported as is
    return queries


def filter_combinations() -> list[dict]:
    """Each filter kind alone, then pairwise and all together."""
    singles = [
        {"scope": "/a"},
        {"scope": "/ab"},
        {"scope": "/share\\"},
        {"scope": "/share"},
        {"scope": "/x-"},
        {"scope": "/ünï"},
        {"scope": "/"},
        {"categories": ["fact"]},
        {"categories": ["tool", "ünïcode"]},
        {"categories": ["no-such-category"]},
        {"where": {"kind": "x"}},
        {"where": {"n": 1}},  # matches 1 and 1.0, never True
        {"where": {"n": 1.0}},
        {"where": {"flag": True}},  # never matches 1
        {"where": {"flag": None}},  # stored null only, not a missing key
        {"where": {"nested": 1}},  # containers never match
        {"where": {"kind": "x", "n": 2.5}},
        {"where": {"ü": ""}},
        {"source": "agent-1"},
        {"source": "ßource"},
        {"include_private": False},
        {"include_private": False, "visible_to": "agent-2"},
    ]
    combined = [
        {"scope": "/a", "categories": ["fact", "episode"]},
        {"scope": "/a/b", "where": {"kind": "y"}, "include_private": False},
        {"scope": "/share\\", "source": "user"},
        {"categories": ["preference"], "where": {"flag": False}, "source": "agent-1"},
        {"scope": "/日本", "include_private": False, "visible_to": "ßource"},
        {
            "scope": "/a",
            "categories": ["fact", "tool", "preference"],
            "where": {"n": 1},
            "source": "agent-2",
            "include_private": False,
            "visible_to": "agent-2",
        },
    ]
    return singles + combined


def check_search(store, oracle, query, k, filters, min_score=None, context=""):
    result = store.search(query, k, min_score=min_score, **filters)
    assert isinstance(result.ids, np.ndarray) and result.ids.dtype == object
    assert result.scores.dtype == np.float32
    assert len(result) == len(result.ids)
    oracle.check(result, query, k, min_score=min_score, context=context, **filters)
    return result


@pytest.mark.parametrize("config", CONFIGS, ids=[f"seed{s}-n{n}-d{d}" for s, n, d in CONFIGS])
@pytest.mark.parametrize("engine", engine_params())
def test_every_filter_kind_is_exact(engine, storage_kind, config):
    seed, n, dim = config
    store, oracle, recs = built(engine, seed, n, dim, storage_kind)
    assert store.count() == n
    filters_list = [{}] + filter_combinations()
    for filters in filters_list:
        mask = oracle.mask(**filters)
        assert store.count(**filters) == int(mask.sum()), f"count{filters}"
        for qi, query in enumerate(queries_for(recs, seed, dim)):
            for k in sorted({1, 3, 10, max(1, n), n + 5}):
                ctx = f"{engine} seed={seed} n={n} dim={dim} q={qi} k={k} filters={filters}"
                result = store.search(query, k, **filters)
                oracle.check(result, query, k, mask=mask, context=ctx)
            for min_score in (-1.0, 0.0, 0.2, 0.999):
                ctx = f"{engine} n={n} dim={dim} q={qi} min_score={min_score} filters={filters}"
                result = store.search(query, 25, min_score=min_score, **filters)
                oracle.check(result, query, 25, mask=mask, min_score=min_score, context=ctx)


@pytest.mark.parametrize("config", CONFIGS[1:], ids=[f"seed{s}-n{n}-d{d}" for s, n, d in CONFIGS[1:]])
@pytest.mark.parametrize("engine", engine_params())
def test_batch_search_equals_single_searches(engine, storage_kind, config):
    seed, n, dim = config
    store, oracle, recs = built(engine, seed, n, dim, storage_kind)
    queries = np.stack(queries_for(recs, seed, dim, count=6))
    for filters in [{}, {"scope": "/a"}, {"categories": ["fact"], "include_private": False}]:
        for min_score in (None, 0.1):
            batch = store.search(queries, 7, min_score=min_score, **filters)
            assert isinstance(batch, list) and len(batch) == len(queries)
            for qi, (query, from_batch) in enumerate(zip(queries, batch)):
                single = store.search(query, 7, min_score=min_score, **filters)
                ctx = f"{engine} n={n} dim={dim} q={qi} filters={filters} min_score={min_score}"
                assert list(from_batch.ids) == list(single.ids), ctx
                np.testing.assert_allclose(from_batch.scores, single.scores, atol=1e-6, err_msg=ctx)
                oracle.check(from_batch, query, 7, min_score=min_score, context=ctx, **filters)


@pytest.mark.parametrize("engine", engine_params())
def test_a_single_query_matrix_row_gives_a_list(engine, storage_kind):
    store, oracle, recs = built(engine, 3, 60, 17, storage_kind)
    query = queries_for(recs, 3, 17)[0]
    batch = store.search(query[None, :], 4)
    assert isinstance(batch, list) and len(batch) == 1
    assert list(batch[0].ids) == list(store.search(query, 4).ids)


@pytest.mark.parametrize("engine", engine_params())
def test_search_result_accessors_agree(engine, storage_kind):
    store, oracle, recs = built(engine, 4, 300, 64, storage_kind)
    query = queries_for(recs, 4, 64)[0]
    result = store.search(query, 5, scope="/a")
    assert bool(result) == (len(result) > 0)
    pairs = list(result)
    assert [p[0] for p in pairs] == list(result.ids)
    for i, (rid, score) in enumerate(pairs):
        assert result[i][0] == rid and result[i][1] == score
    by_id = oracle.by_id
    for record, rid in zip(result.records(), result.ids):
        assert record.id == rid
        assert np.array_equal(record.vector, by_id[rid].vector)


@pytest.mark.parametrize("engine", engine_params())
def test_query_direction_not_length_decides(engine, storage_kind):
    """Cosine ignores the query's length: a scaled query ranks identically."""
    store, oracle, recs = built(engine, 6, 2000, 17, storage_kind)
    query = queries_for(recs, 6, 17)[0]
    small = store.search(query * np.float32(1e-3), 10)
    large = store.search(query * np.float32(1e3), 10)
    oracle.check(small, query, 10)
    oracle.check(large, query, 10)


@pytest.mark.parametrize("engine", engine_params())
def test_search_is_exact_after_reopening_from_disk(engine, storage_kind, tmp_path):
    """Vectors loaded back from the durable layer (a file, or PostgreSQL) give the same
    exact answers."""
    seed, n, dim = 11, 800, 64
    recs = make_records(seed, n, dim)
    path = tmp_path / "exact.ferro" if storage_kind == "memory" else location_of(storage_kind, "reopened")
    with open_store(engine, path) as store:
        for start in range(0, n, 300):
            store_records(store, recs[start : start + 300])
    oracle = Oracle(recs)
    with open_store(engine, path) as store:
        assert store.count() == n and store.dim == dim
        for filters in [{}, {"scope": "/a"}, {"where": {"n": 1}, "include_private": False}]:
            for qi, query in enumerate(queries_for(recs, seed, dim)):
                ctx = f"{engine} reopened q={qi} filters={filters}"
                oracle.check(store.search(query, 10, **filters), query, 10, context=ctx, **filters)


@pytest.mark.parametrize("engine", engine_params())
def test_search_tracks_deletes_and_upserts(engine, storage_kind):
    """Exactness holds after the arena changed: deletes leave no ghost, upserts move."""
    seed, n, dim = 12, 400, 17
    recs = make_records(seed, n, dim)
    store = open_store(engine, location_of(storage_kind, f"tracks-{engine}"), dim=dim)
    store_records(store, recs)
    rng = np.random.default_rng(seed)
    doomed = {recs[i].id for i in rng.choice(n, size=120, replace=False)}
    assert store.delete(sorted(doomed)) == len(doomed)
    survivors = [r for r in recs if r.id not in doomed]
    moved = []
    for rec in survivors[:50]:
        moved.append(rec.copy(vector=rng.standard_normal(dim).astype(np.float32), scope="/a/b"))
    store_records(store, moved, mode="upsert")
    final = {r.id: r for r in survivors}
    final.update({r.id: r for r in moved})
    oracle = Oracle(list(final.values()))
    for filters in [{}, {"scope": "/a/b"}, {"categories": ["tool"]}]:
        for qi, query in enumerate(queries_for(list(final.values()), seed, dim)):
            ctx = f"{engine} after delete/upsert q={qi} filters={filters}"
            oracle.check(store.search(query, 15, **filters), query, 15, context=ctx, **filters)


# Hypothesis: random filter combinations over the prebuilt stores.


def _visibility_consistent(filters: dict) -> dict:
    # visible_to only means something with include_private=False (the facade rejects it
    # otherwise), so it is drawn only together with that.
    if "visible_to" in filters:
        filters["include_private"] = False
    return filters


filter_strategy = st.fixed_dictionaries(
    {},
    optional={
        "scope": st.sampled_from(FILTER_SCOPES),
        "categories": st.lists(
            st.sampled_from(CATEGORIES + ["none-such"]), min_size=1, max_size=3, unique=True
        ),
        "where": st.dictionaries(
            st.sampled_from(META_KEYS + ["absent"]), st.sampled_from(WHERE_VALUES), min_size=1, max_size=2
        ),
        "source": st.sampled_from([s for s in SOURCES if s is not None] + ["nobody"]),
        "include_private": st.booleans(),
        "visible_to": st.sampled_from(["agent-1", "agent-2", "ßource"]),
    },
).map(_visibility_consistent)


@pytest.mark.parametrize("engine", engine_params())
@hypothesis_settings(max_examples=150)
@given(
    config=st.sampled_from(CONFIGS),
    filters=filter_strategy,
    k=st.integers(1, 60),
    min_score=st.none() | st.floats(-1.0, 1.0),
    query_seed=st.integers(0, 2**32 - 1),
)
def test_random_filters_are_exact(engine, storage_kind, config, filters, k, min_score, query_seed):
    seed, n, dim = config
    store, oracle, recs = built(engine, seed, n, dim, storage_kind)
    rng = np.random.default_rng(query_seed)
    query = rng.standard_normal(dim).astype(np.float32)
    if recs and query_seed % 3 == 0:  # sometimes near a stored vector: a crowded top
        query = recs[query_seed % n].vector + np.float32(0.01) * query
    ctx = f"{engine} config={config} filters={filters} k={k} min_score={min_score}"
    check_search(store, oracle, query, k, filters, min_score=min_score, context=ctx)
    assert store.count(**filters) == int(oracle.mask(**filters).sum())


def test_oracle_scope_rule_matches_the_documented_examples():
    """The oracle itself is right about the boundary rule it enforces."""
    from _helpers import scope_matches

    assert scope_matches("/a", "/a") and scope_matches("/a/x", "/a")
    assert not scope_matches("/ab", "/a")
    assert scope_matches("/share\\docs", "/share\\")
    assert not scope_matches("/share\\docs", "/share")
    assert scope_matches("/x-y", "/x-") and scope_matches("/anything", "/")
    assert scope_matches("/anything", None)


def test_oracle_checker_can_fail():
    """The exactness checker rejects a wrong order, a missing record and a bad score."""
    from _helpers import assert_exact_ranking

    candidates = {"a": 0.9, "b": 0.5, "c": 0.1}
    assert_exact_ranking(["a", "b"], np.array([0.9, 0.5]), candidates, 2)
    for ids, scores in [
        (["b", "a"], [0.5, 0.9]),
        (["a", "c"], [0.9, 0.1]),
        (["a", "b"], [0.9, 0.49]),
        (["a"], [0.9]),
        (["a", "x"], [0.9, 0.5]),
    ]:
        with pytest.raises(AssertionError):
            assert_exact_ranking(ids, np.array(scores), candidates, 2)
    # identical vectors: lower id first, never dropped for the higher one
    twins = {"a": 0.7, "b": 0.7}
    keys = {"a": b"v", "b": b"v"}
    assert_exact_ranking(["a"], np.array([0.7]), twins, 1, vector_keys=keys)
    with pytest.raises(AssertionError):
        assert_exact_ranking(["b"], np.array([0.7]), twins, 1, vector_keys=keys)


def test_filter_combinations_cover_every_kind():
    kinds = set(itertools.chain.from_iterable(f.keys() for f in filter_combinations()))
    assert kinds == {"scope", "categories", "where", "source", "include_private", "visible_to"}


def _native_isas() -> list[str]:
    from _helpers import native_import_error

    if native_import_error() is not None:
        return []
    from ferromem import _core

    return list(_core.supported_isas()) if hasattr(_core, "supported_isas") else []


@pytest.mark.parametrize(
    "isa",
    _native_isas()
    or [
        pytest.param(
            "none",
            marks=pytest.mark.skip(reason="native engine unavailable (or it cannot force a SIMD path)"),
        )
    ],
)
def test_every_simd_path_is_exact(isa):
    """Each SIMD kernel the machine supports, forced in turn, gives the exact answer
    (dimensions 3, 17 and 384 exercise the lane tails)."""
    from ferromem import _core

    _core.force_isa(isa)
    try:
        assert _core.simd_isa() == isa
        for config in [(2, 7, 3), (6, 2000, 17), (8, 500, 384)]:
            seed, n, dim = config
            store, oracle, recs = built("native", seed, n, dim)
            for filters in [{}, {"scope": "/a"}, {"categories": ["fact"], "include_private": False}]:
                for qi, query in enumerate(queries_for(recs, seed, dim)):
                    ctx = f"isa={isa} n={n} dim={dim} q={qi} filters={filters}"
                    oracle.check(store.search(query, 10, **filters), query, 10, context=ctx, **filters)
            batch = store.search(np.stack(queries_for(recs, seed, dim)), 10)
            for query, result in zip(queries_for(recs, seed, dim), batch):
                oracle.check(result, query, 10, context=f"isa={isa} batch n={n} dim={dim}")
    finally:
        _core.force_isa(None)
