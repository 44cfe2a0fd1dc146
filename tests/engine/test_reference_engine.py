"""The reference engine (the test oracle) against plain NumPy brute force, its scope
rule, and its SQLite files (the schema shared with the native engine)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import ferromem
import numpy as np
import pytest
from conftest import NATIVE_AVAILABLE, NATIVE_SKIP_REASON, snapshot, unit_rows
from ferromem import _storefile
from ferromem._reference import ReferenceEngine, child_of, scope_matches
from ferromem._schema import Filter, Patch, RecordBatch, record_field_names

DIM = 6


def _add(
    engine,
    ids,
    vectors,
    *,
    scopes=None,
    categories=None,
    metadata=None,
    created_at=None,
    sources=None,
    private=None,
    mode="upsert",
):
    n = len(ids)
    _upsert_columns(
        engine,
        list(ids),
        np.ascontiguousarray(vectors, dtype=np.float32),
        [f"content of {i}" for i in ids],
        scopes or ["/"] * n,
        categories or [[] for _ in range(n)],
        [json.dumps(m) for m in (metadata or [{}] * n)],
        [0.5] * n,
        created_at or [float(i) for i in range(n)],
        created_at or [float(i) for i in range(n)],
        sources or [None] * n,
        private or [False] * n,
        mode,
    )


def _upsert_columns(engine, ids, vectors, *columns_and_mode):
    """engine.upsert of the columns in the schema's order (after id and vector), then the mode."""
    *columns, mode = columns_and_mode
    names = [name for name in record_field_names() if name not in ("id", "vector")]
    batch = RecordBatch(id=ids, vector=vectors, **dict(zip(names, columns, strict=True)))
    engine.upsert(batch, mode)


def _as_filter(flt):
    """The engine's Filter of a criteria dict of these tests."""
    return Filter(**{**flt, "where": tuple(flt.get("where", ()))})


def _fields(row):
    """A record row's fields as a tuple, in the schema's order."""
    return tuple(getattr(row, name) for name in record_field_names())


# ----------------------------------------------------------------------------- scope rule


@pytest.mark.parametrize(
    ("prefix", "scope", "expected"),
    [
        ("/a", "/a", True),
        ("/a", "/a/x", True),
        ("/a", "/a/x/y", True),
        ("/a", "/ab", False),
        ("/a", "/b", False),
        ("/a", "/", False),
        ("/a/", "/a/x", True),
        ("/a/", "/a", False),
        ("/share\\", "/share\\docs", True),
        ("/share\\docs", "/share\\docsx", False),
        ("/", "/anything/at/all", True),
        ("/", "/", True),
        (None, "/x", True),
        ("", "/x", True),
        ("/é", "/é/x", True),
        ("/é", "/éa", False),
        ("/日本", "/日本語", False),
        ("/日本", "/日本/語", True),
        ("/a-", "/a-b", True),
        ("/a%", "/ab", False),
        ("/a_", "/ab", False),
        ("/a%", "/a%b", True),
        ("/a_", "/a_b", True),
        ("/it's", "/it's/x", True),
        ('/say "hi"', '/say "hi" there', True),
        ("/a*", "/abc", False),
        ("/A", "/a", False),
    ],
)
def test_scope_rule(prefix, scope, expected):
    assert scope_matches(prefix, scope) is expected


@pytest.mark.parametrize(
    ("parent", "scope", "expected"),
    [
        ("/a", "/a/b/c", "/a/b"),
        ("/a", "/a", None),
        ("/a", "/ab/c", None),
        ("/", "/a/b", "/a"),
        ("/", "/", None),
        ("", "/a", "/a"),
        ("/é", "/é/ü/x", "/é/ü"),
    ],
)
def test_child_of(parent, scope, expected):
    assert child_of(parent, scope) == expected


# Characters that break naive SQL (LIKE wildcards, quotes) or encodings must be data.
AWKWARD = [
    "it's",
    'say "hi"',
    "100%",
    "a_b",
    "back\\slash",
    "tab\there",
    "日本語",
    "emoji🚀",
    "nul\x00byte",
    "semi;colon--",
    "' OR 1=1 --",
]


@pytest.fixture(params=["memory", "disk"])
def reference_store(request, tmp_path):
    path = None if request.param == "memory" else tmp_path / "ref.ferro"
    with ferromem.open(path, engine="reference") as store:
        yield store


def test_awkward_ids_and_scopes_round_trip(reference_store, rng):
    store = reference_store
    ids = [f"id:{text}" for text in AWKWARD]
    scopes = [f"/t/{text}" for text in AWKWARD]
    vectors = unit_rows(rng, len(ids), DIM)
    store.add(
        ids,
        vectors,
        scopes=scopes,
        contents=AWKWARD,
        sources=AWKWARD,
        metadata=[{text: text} for text in AWKWARD],
        categories=[[t] for t in AWKWARD],
    )
    for i, record_id in enumerate(ids):
        record = store.get(record_id)
        assert (record.id, record.scope, record.content, record.source) == (
            record_id,
            scopes[i],
            AWKWARD[i],
            AWKWARD[i],
        )
        assert record.metadata == {AWKWARD[i]: AWKWARD[i]}
        assert store.count(scope=scopes[i]) == 1
        assert store.count(source=AWKWARD[i]) == 1
        assert store.count(where={AWKWARD[i]: AWKWARD[i]}) == 1
        assert store.count(categories=[AWKWARD[i]]) == 1
        assert store.search(vectors[i], k=1).ids.tolist() == [record_id]
    assert store.child_scopes("/t") == sorted(scopes)
    # "%" and "_" are LIKE wildcards in SQL: here they only match themselves.
    assert store.count(scope="/t/a%") == 0  # LIKE '/t/a%' would match '/t/a_b'
    assert store.count(scope="/t/1_0") == 0  # LIKE '/t/1_0%' would match '/t/100%'
    assert store.count(scope="/t/a_") == 1  # '_' is not alphanumeric: '/t/a_b' is below it
    assert store.count(scope="/t/100") == 0  # '0' is: '/t/100%' is not below '/t/100'
    assert store.delete(scope="/t/a_b") == 1
    assert store.get("id:a_b") is None and len(store) == len(ids) - 1


def test_awkward_scopes_survive_reopen(tmp_path, rng):
    path = tmp_path / "awkward.ferro"
    with ferromem.open(path, engine="reference") as store:
        store.add(
            [f"id:{t}" for t in AWKWARD],
            unit_rows(rng, len(AWKWARD), DIM),
            scopes=[f"/t/{t}" for t in AWKWARD],
        )
        before = snapshot(store)
    with ferromem.open(path, engine="reference") as store:
        assert snapshot(store) == before


def test_scope_boundaries_through_the_store(reference_store):
    store = reference_store
    scopes = ["/a", "/a/x", "/ab", "/share\\docs", "/share\\", "/shared", "/é/1", "/éa"]
    store.add([f"s{i}" for i in range(len(scopes))], np.eye(len(scopes), dtype=np.float32), scopes=scopes)

    def scopes_matching(prefix):
        return sorted(r.scope for r in store.list(scope=prefix))

    assert scopes_matching("/a") == ["/a", "/a/x"]
    assert scopes_matching("/ab") == ["/ab"]
    assert scopes_matching("/share\\") == ["/share\\", "/share\\docs"]
    assert scopes_matching("/share") == []
    assert scopes_matching("/é") == ["/é/1"]


# ----------------------------------------------------------------------------- brute force


def _oracle_scope(prefix, scope):
    if prefix in (None, "/"):
        return True
    return (
        scope == prefix
        or scope.startswith(prefix + "/")
        or (scope.startswith(prefix) and not prefix[-1].isalnum())
    )


def _oracle_matches(row, flt):
    if "scope" in flt and not _oracle_scope(flt["scope"], row["scope"]):
        return False
    if "categories" in flt and not set(flt["categories"]) & set(row["categories"]):
        return False
    for key, wanted in flt.get("where", []):
        if key not in row["metadata"]:
            return False
        have = row["metadata"][key]
        if isinstance(have, (list, dict)):
            return False
        if isinstance(have, bool) or isinstance(wanted, bool) or have is None or wanted is None:
            if not (type(have) is type(wanted) and have == wanted):
                return False
        elif isinstance(have, str) or isinstance(wanted, str):
            if have != wanted:
                return False
        elif float(have) != float(wanted):
            return False
    if "source" in flt and row["source"] != flt["source"]:
        return False
    if not flt.get("include_private", True) and row["private"]:
        if flt.get("visible_to") is None or row["source"] != flt["visible_to"]:
            return False
    if "older_than" in flt and not row["created_at"] < flt["older_than"]:
        return False
    return True


def _oracle_search(rows, vectors, query, k, flt, min_score):
    scored = []
    for row, vector in zip(rows, vectors):
        if not _oracle_matches(row, flt):
            continue
        v = vector.astype(np.float64)
        q = query.astype(np.float64)
        score = np.float32(v @ q / (np.linalg.norm(v) * np.linalg.norm(q)))
        if min_score is not None and float(score) < min_score:
            continue
        scored.append((-float(score), row["id"], score))
    scored.sort()
    return [s[1] for s in scored[:k]], np.array([s[2] for s in scored[:k]], dtype=np.float32)


def _random_rows(rng, n):
    scope_pool = ["/", "/a", "/a/b", "/a/b/c", "/ab", "/b", "/b/a", "/é", "/éa"]
    category_pool = ["x", "y", "z", "w"]
    source_pool = [None, "alice", "bob"]
    value_pool = [0, 1, 1.0, 2.5, True, False, None, "1", "x", [1], {"n": 1}]
    rows = []
    for i in range(n):
        metadata = {}
        for key in ("p", "q"):
            if rng.random() < 0.7:
                metadata[key] = value_pool[rng.integers(len(value_pool))]
        rows.append(
            {
                "id": f"r{rng.integers(10**6)}-{i}",
                "scope": scope_pool[rng.integers(len(scope_pool))],
                "categories": sorted(set(rng.choice(category_pool, size=rng.integers(0, 3)).tolist())),
                "metadata": metadata,
                "source": source_pool[rng.integers(len(source_pool))],
                "private": bool(rng.random() < 0.3),
                "created_at": float(rng.integers(0, 50)),
            }
        )
    return rows


def _random_filter(rng):
    flt = {}
    if rng.random() < 0.5:
        flt["scope"] = ["/", "/a", "/a/b", "/ab", "/a/", "/b", "/é"][rng.integers(7)]
    if rng.random() < 0.3:
        flt["categories"] = sorted(set(rng.choice(["x", "y", "z", "w"], size=2).tolist()))
    if rng.random() < 0.4:
        flt["where"] = [("p", [0, 1, 1.0, True, None, "1", 2.5][rng.integers(7)])]
    if rng.random() < 0.2:
        flt["source"] = ["alice", "bob"][rng.integers(2)]
    if rng.random() < 0.3:
        flt["include_private"] = False
        if rng.random() < 0.5:
            flt["visible_to"] = ["alice", "bob"][rng.integers(2)]
    if rng.random() < 0.2:
        flt["older_than"] = float(rng.integers(0, 50))
    return flt


@pytest.mark.parametrize("seed", range(6))
def test_search_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 300
    rows = _random_rows(rng, n)
    # Few distinct directions, so that many scores tie exactly and ids must break them.
    vectors = rng.integers(-2, 3, size=(n, DIM)).astype(np.float32)
    vectors[~vectors.any(axis=1), 0] = 1.0
    engine = ReferenceEngine(None, None, "normal")
    _upsert_columns(
        engine,
        [r["id"] for r in rows],
        vectors,
        ["" for _ in rows],
        [r["scope"] for r in rows],
        [r["categories"] for r in rows],
        [json.dumps(r["metadata"]) for r in rows],
        [0.5] * n,
        [r["created_at"] for r in rows],
        [r["created_at"] for r in rows],
        [r["source"] for r in rows],
        [r["private"] for r in rows],
        "insert",
    )
    queries = rng.integers(-2, 3, size=(8, DIM)).astype(np.float32)
    queries[~queries.any(axis=1), 1] = 1.0
    for _ in range(25):
        flt = _random_filter(rng)
        k = int(rng.integers(1, 40))
        min_score = None if rng.random() < 0.6 else float(rng.uniform(-0.5, 0.8))
        ids, scores, offsets = engine.search(queries, k, _as_filter(flt), min_score)
        assert ids.dtype == object and scores.dtype == np.float32 and offsets.dtype == np.int64
        assert offsets.shape == (len(queries) + 1,) and offsets[0] == 0
        assert offsets[-1] == len(ids) == len(scores)
        for qi, query in enumerate(queries):
            got_ids = ids[offsets[qi] : offsets[qi + 1]].tolist()
            want_ids, want_scores = _oracle_search(rows, vectors, query, k, flt, min_score)
            assert got_ids == want_ids, (flt, k, min_score)
            np.testing.assert_array_equal(scores[offsets[qi] : offsets[qi + 1]], want_scores)
        matching = sorted(r["id"] for r in rows if _oracle_matches(r, flt))
        assert engine.count(_as_filter(flt)) == len(matching)
        listed = [_fields(row) for row in engine.list(_as_filter(flt), 0, None)]
        assert sorted(t[0] for t in listed) == matching
        assert [(-t[6], t[0]) for t in listed] == sorted((-t[6], t[0]) for t in listed)


def test_search_on_real_valued_random_data(rng):
    vectors = rng.standard_normal((500, 32)).astype(np.float32)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    ids = [f"{i:04d}" for i in range(500)]
    engine = ReferenceEngine(None, None, "normal")
    _add(engine, ids, vectors)
    got_ids, got_scores, offsets = engine.search(queries, 10, Filter(), None)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    for qi, query in enumerate(queries):
        exact = (
            vectors.astype(np.float64)
            @ query.astype(np.float64)
            / (norms * np.linalg.norm(query.astype(np.float64)))
        )
        order = np.argsort(-exact, kind="stable")[:10]
        assert got_ids[offsets[qi] : offsets[qi + 1]].tolist() == [ids[i] for i in order]
        np.testing.assert_allclose(got_scores[offsets[qi] : offsets[qi + 1]], exact[order], rtol=0, atol=1e-6)


def test_engine_rechecks_what_would_corrupt_state():
    engine = ReferenceEngine(None, None, "normal")
    _add(engine, ["a"], np.ones((1, DIM)))
    with pytest.raises(ferromem.DimensionMismatchError):
        _add(engine, ["b"], np.ones((1, DIM + 1)))
    with pytest.raises(ferromem.InvalidVectorError):
        _add(engine, ["b"], np.full((1, DIM), np.nan))
    with pytest.raises(ferromem.InvalidVectorError):
        _add(engine, ["b"], np.zeros((1, DIM)))
    with pytest.raises(ferromem.InvalidInputError):
        _add(engine, ["b", "b"], np.ones((2, DIM)))
    with pytest.raises(ferromem.DuplicateIdError):
        _add(engine, ["c", "a"], np.ones((2, DIM)), mode="insert")
    with pytest.raises(ferromem.InvalidMetadataError):
        _upsert_columns(
            engine,
            ["d"],
            np.ones((1, DIM), np.float32),
            [""],
            ["/"],
            [[]],
            ["[1, 2]"],
            [0.5],
            [0.0],
            [0.0],
            [None],
            [False],
            "upsert",
        )
    assert engine.count(Filter()) == 1 and engine.get(["c"]) == [None]


def test_engine_search_empty_and_without_matches():
    engine = ReferenceEngine(None, None, "normal")
    ids, scores, offsets = engine.search(np.ones((3, 4), np.float32), 5, Filter(), None)
    assert len(ids) == 0 and len(scores) == 0 and offsets.tolist() == [0, 0, 0, 0]
    _add(engine, ["a"], np.ones((1, 4)), scopes=["/x"])
    ids, scores, offsets = engine.search(np.ones((2, 4), np.float32), 5, Filter(scope="/y"), None)
    assert offsets.tolist() == [0, 0, 0]


def test_engine_stats_and_close():
    engine = ReferenceEngine(None, 3, "normal")
    assert engine.dim == 3
    _add(engine, ["a"], np.ones((1, 3)))
    engine.search(np.ones((1, 3), np.float32), 1, Filter(), None)
    stats = engine.stats()
    assert stats["upsert"]["count"] == 1 and stats["search"]["count"] == 1
    assert stats["search"]["max_us"] >= stats["search"]["p50_us"] > 0
    engine.close()
    engine.close()
    for call in (lambda: engine.count(Filter()), lambda: engine.dim, engine.stats, engine.reset):
        with pytest.raises(ferromem.StoreClosedError):
            call()


# ----------------------------------------------------------------------------- SQLite files


def _schema(path):
    with sqlite3.connect(path) as conn:
        tables = {
            name: [c[1] for c in conn.execute(f"PRAGMA table_info({name})")]
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        indexes = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='index' AND name NOT LIKE 'sqlite_%'"
            )
        }
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    return tables, indexes, meta, mode


def test_file_uses_the_shared_schema(tmp_path):
    path = str(tmp_path / "schema.ferro")
    engine = ReferenceEngine(path, None, "normal")
    tables, indexes, meta, mode = _schema(path)
    assert tables == {
        "meta": ["key", "value"],
        "records": [
            "id",
            "content",
            "scope",
            "categories",
            "metadata",
            "importance",
            "created_at",
            "last_accessed",
            "source",
            "private",
            "vector",
            "seq",
            "fields_crc",
            "vector_crc",
        ],
        "tombstones": ["id", "seq"],
    }
    assert indexes == {"records_seq", "tombstones_seq"}
    assert mode == "wal"
    assert meta["schema_version"] == "2" and meta["dim"] in ("", None) and meta["seq"] == "0"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == 0x4665526D
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert meta["epoch"] == "0"

    vector = np.array([1.5, -2.0, 0.25], dtype=np.float32)
    _add(
        engine,
        ["a", "b"],
        np.stack([vector, vector]),
        categories=[["x", "y"], []],
        metadata=[{"k": "ü"}, {}],
        sources=["s", None],
        private=[True, False],
    )
    with sqlite3.connect(path) as conn:
        row = conn.execute(
            "SELECT categories, metadata, source, private, vector, seq FROM records WHERE id = 'a'"
        ).fetchone()
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert json.loads(row[0]) == ["x", "y"] and json.loads(row[1]) == {"k": "ü"}
    assert row[2:4] == ("s", 1)
    assert row[4] == vector.astype("<f4").tobytes()
    assert row[5] == 1 and meta["seq"] == "1" and meta["dim"] == "3"

    engine.update("a", Patch(content="changed"))
    engine.delete(["b"], None)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT seq FROM records WHERE id = 'a'").fetchone() == (2,)
        assert conn.execute("SELECT id, seq FROM tombstones").fetchall() == [("b", 3)]
        assert dict(conn.execute("SELECT key, value FROM meta"))["seq"] == "3"
    _upsert_columns(
        engine,
        ["b"],
        np.ones((1, 3), np.float32),
        [""],
        ["/"],
        [[]],
        ["{}"],
        [0.5],
        [0.0],
        [0.0],
        [None],
        [False],
        "insert",
    )
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM tombstones").fetchone() == (0,)
    engine.reset()
    with sqlite3.connect(path) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        counts = [conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("records", "tombstones")]
    assert counts == [0, 0] and meta["dim"] == "" and meta["epoch"] == "1" and meta["seq"] == "5"
    engine.close()


def test_a_failed_write_leaves_the_file_unchanged(tmp_path):
    path = str(tmp_path / "atomic.ferro")
    engine = ReferenceEngine(path, None, "normal")
    _add(engine, ["a", "b"], np.eye(2, DIM))

    def dump():
        with sqlite3.connect(path) as conn:
            return (
                conn.execute("SELECT * FROM records ORDER BY id").fetchall(),
                conn.execute("SELECT * FROM meta ORDER BY key").fetchall(),
            )

    before = dump()
    with pytest.raises(ferromem.DuplicateIdError):
        _add(engine, ["c", "d", "a"], np.ones((3, DIM)), mode="insert")
    with pytest.raises(ferromem.DimensionMismatchError):
        engine.update("a", Patch(vector=np.ones(DIM + 2, np.float32)))
    assert dump() == before
    assert engine.count(Filter()) == 2
    engine.close()


def test_engine_reads_rows_written_by_another_writer(tmp_path):
    """Another connection writing by the schema's rules (as the native engine does from
    another process) is seen on the next call: rows, tombstones, reset."""
    path = str(tmp_path / "foreign.ferro")
    engine = ReferenceEngine(path, None, "normal")
    _add(engine, ["mine"], np.ones((1, 2)))
    writer = sqlite3.connect(path, isolation_level=None)

    def foreign_write(statements):
        writer.execute("BEGIN IMMEDIATE")
        seq = int(writer.execute("SELECT value FROM meta WHERE key='seq'").fetchone()[0]) + 1
        for sql, params in statements(seq):
            writer.execute(sql, params)
        writer.execute("UPDATE meta SET value=? WHERE key='seq'", (str(seq),))
        writer.execute("COMMIT")

    blob = np.array([0.0, 3.0], dtype="<f4").tobytes()
    fields = ("theirs", "hello", "/x", '["c"]', '{"k": 1}', 0.7, 5.0, 6.0, "them", 1)
    sums = (_storefile.fields_crc(*fields), _storefile.vector_crc(blob))
    foreign_write(
        lambda seq: [
            (
                "INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (*fields, blob, seq, *sums),
            )
        ]
    )
    assert _fields(engine.get(["theirs"])[0])[:10] == (
        "theirs",
        "hello",
        "/x",
        ["c"],
        '{"k": 1}',
        0.7,
        5.0,
        6.0,
        "them",
        True,
    )
    ids, _, _ = engine.search(np.array([[0.0, 1.0]], np.float32), 1, Filter(), None)
    assert ids.tolist() == ["theirs"]
    assert engine.count(Filter(where=(("k", 1),))) == 1

    foreign_write(
        lambda seq: [
            ("DELETE FROM records WHERE id='mine'", ()),
            ("INSERT INTO tombstones VALUES ('mine', ?)", (seq,)),
        ]
    )
    assert engine.get(["mine"]) == [None] and engine.count(Filter()) == 1

    foreign_write(
        lambda seq: [
            ("DELETE FROM records", ()),
            ("DELETE FROM tombstones", ()),
            ("UPDATE meta SET value='' WHERE key='dim'", ()),
            ("UPDATE meta SET value=CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key='epoch'", ()),
        ]
    )
    assert engine.count(Filter()) == 0 and engine.dim is None
    writer.close()
    engine.close()


def test_durability_sets_synchronous(tmp_path):
    for durability, expected in (("normal", 1), ("full", 2)):
        engine = ReferenceEngine(str(tmp_path / f"{durability}.ferro"), None, durability)
        assert engine._conn.execute("PRAGMA synchronous").fetchone()[0] == expected
        assert engine._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 60000
        engine.close()


def test_write_waits_for_a_held_lock(tmp_path):
    path = str(tmp_path / "locked.ferro")
    engine = ReferenceEngine(path, None, "normal")
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release_soon():
        time.sleep(0.3)
        blocker.execute("ROLLBACK")
        released.set()

    thread = threading.Thread(target=release_soon)
    thread.start()
    _add(engine, ["a"], np.ones((1, 2)))  # must wait, not raise "database is locked"
    thread.join()
    assert released.is_set()
    assert engine.count(Filter()) == 1
    blocker.close()
    engine.close()


def test_incompatible_and_corrupt_files(tmp_path):
    newer = str(tmp_path / "newer.ferro")
    ReferenceEngine(newer, None, "normal").close()
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 3")
    with pytest.raises(ferromem.IncompatibleStoreError) as info:
        ReferenceEngine(newer, None, "normal")
    assert isinstance(info.value, OSError) and "upgrade" in str(info.value)

    garbage = tmp_path / "garbage.ferro"
    garbage.write_bytes(b"this is not a database, just text " * 200)
    with pytest.raises(ferromem.CorruptStoreError):
        ferromem.open(garbage, engine="reference")
    assert garbage.read_bytes().startswith(b"this is not a database")

    foreign = str(tmp_path / "foreign.sqlite")
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE customers(id INTEGER)")
    with pytest.raises(ferromem.CorruptStoreError, match="not a ferromem store"):
        ReferenceEngine(foreign, None, "normal")
    with sqlite3.connect(foreign) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    assert names == ["customers"]  # someone else's database is left alone


def test_dimension_given_at_open_persists(tmp_path):
    path = str(tmp_path / "dim.ferro")
    ReferenceEngine(path, 5, "normal").close()
    engine = ReferenceEngine(path, None, "normal")
    assert engine.dim == 5
    engine.close()
    with pytest.raises(ferromem.DimensionMismatchError):
        ReferenceEngine(path, 4, "normal")


@pytest.mark.skipif(not NATIVE_AVAILABLE, reason=NATIVE_SKIP_REASON)
@pytest.mark.parametrize(("writer", "reader"), [("reference", "native"), ("native", "reference")])
def test_engines_open_each_others_files(tmp_path, rng, writer, reader):
    path = tmp_path / f"{writer}.ferro"
    vectors = unit_rows(rng, 30, DIM)
    with ferromem.open(path, engine=writer) as store:
        store.add(
            [f"id{i}" for i in range(30)],
            vectors,
            scopes=["/a", "/a/b", "/ab"] * 10,
            categories=[["x"], [], ["x", "y"]] * 10,
            metadata=[{"i": i} for i in range(30)],
            sources=["s", None, "t"] * 10,
            private=[True, False] * 15,
            created_at=[float(i) for i in range(30)],
        )
        store.delete(["id3", "id4"])
        store.update("id5", content="updated")
        before = snapshot(store)
        expected = store.search(vectors[7], k=5, scope="/a").ids.tolist()
    with ferromem.open(path, engine=reader) as store:
        assert snapshot(store) == before
        assert store.search(vectors[7], k=5, scope="/a").ids.tolist() == expected
