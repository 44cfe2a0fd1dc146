"""Whose file it is, and damage on disk (issue: trust).

ferromem writes only to files it created or identified as its stores, refuses everything
else with NotAStoreError leaving it byte for byte as it was, and never serves a record
whose bytes fail their checksums. Both engines, which must agree on the format."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import warnings

import ferromem
import numpy as np
import pytest
from ferromem import _storefile


def _tree(directory) -> dict[str, str]:
    """Every file of ``directory`` with the hash of its bytes."""
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def _foreign_files(directory):
    """(name, path) of files a user may point ferromem at by mistake."""
    made = []

    def add(name, maker):
        sub = os.path.join(directory, name)
        os.mkdir(sub)
        path = os.path.join(sub, "app.db")
        maker(path)
        made.append((name, path))

    def sqlite_app(path):
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users(name) VALUES ('ada')")
        conn.commit()
        conn.close()

    def sqlite_app_wal(path):
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE embeddings(id TEXT, v BLOB)")
        conn.commit()
        conn.close()

    def chroma_like(path):  # an application_id of its own
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA application_id = 7")
        conn.execute("CREATE TABLE collections(id TEXT)")
        conn.commit()
        conn.close()

    def empty_sqlite(path):
        sqlite3.connect(path).execute("PRAGMA user_version = 0").fetchone()
        open(path, "ab").close()

    add("sqlite_app", sqlite_app)
    add("sqlite_app_wal", sqlite_app_wal)
    add("chroma_like", chroma_like)
    add("empty_file", lambda p: open(p, "wb").close())
    add("one_byte", lambda p: open(p, "wb").write(b"S"))
    add("text", lambda p: open(p, "w").write("name,score\nada,3\n" * 100))
    add("empty_sqlite", empty_sqlite)
    return made


def test_files_of_other_applications_are_refused_untouched(engine_name, tmp_path):
    for name, path in _foreign_files(str(tmp_path)):
        before = _tree(os.path.dirname(path))
        for read_only in (False, True):
            with pytest.raises(ferromem.NotAStoreError, match="not a ferromem store") as info:
                ferromem.open(path, engine=engine_name, read_only=read_only)
            assert isinstance(info.value, ferromem.CorruptStoreError)  # the class before
            assert _tree(os.path.dirname(path)) == before, name
        with pytest.raises(ferromem.NotAStoreError):
            ferromem.check(path)
        assert _tree(os.path.dirname(path)) == before, name


def test_a_truncated_store_is_refused_not_reborn(engine_name, tmp_path):
    path = str(tmp_path / "s.ferro")
    with ferromem.open(path, engine=engine_name) as store:
        store.add(["a", "b"], np.eye(2, 8, dtype=np.float32) + 0.5)
    for size in (100, 1, 0):  # shrinking: truncate() would pad a shorter file with zeros
        with open(path, "r+b") as f:
            f.truncate(size)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
        before = _tree(tmp_path)
        with pytest.raises(ferromem.NotAStoreError, match="backup"):
            ferromem.open(path, engine=engine_name)
        assert _tree(tmp_path) == before  # never silently a new store of another dimension


def test_new_stores_are_marked_and_no_temporary_file_is_left(engine_name, tmp_path):
    path = str(tmp_path / "new.ferro")
    ferromem.open(path, engine=engine_name).close()
    with open(path, "rb") as f:
        head = f.read(100)
    assert int.from_bytes(head[68:72], "big") == _storefile.APPLICATION_ID
    assert int.from_bytes(head[60:64], "big") == _storefile.SCHEMA_VERSION
    assert [n for n in os.listdir(tmp_path) if not n.endswith(("-wal", "-shm", ".reserve"))] == ["new.ferro"]


def test_read_only_writes_nothing(engine_name, tmp_path):
    path = str(tmp_path / "s.ferro")
    with pytest.raises(ferromem.NotAStoreError, match="does not exist"):
        ferromem.open(path, engine=engine_name, read_only=True)
    assert not os.path.exists(path)
    with ferromem.open(path, engine=engine_name) as store:
        store.add(["a", "b"], np.eye(2, 8, dtype=np.float32) + 0.5, scopes="/x")
    with open(path, "rb") as f:
        before = f.read()
    with ferromem.open(path, engine=engine_name, read_only=True) as store:
        assert store.count() == 2 and store.get("a") is not None
        assert store.stats()["read_only"] is True
        for write in (
            lambda: store.add("c", np.ones(8)),
            lambda: store.delete("a"),
            lambda: store.update("a", content="x"),
            lambda: store.touch("a"),
            lambda: store.reset(),
        ):
            with pytest.raises(ferromem.ReadOnlyStoreError):
                write()
    with open(path, "rb") as f:
        assert f.read() == before
    with pytest.raises(ferromem.InvalidInputError):
        ferromem.open(None, read_only=True)


def _flip_bit_of(path: str, needle: bytes, bit: int = 0) -> None:
    """Bit rot: flips one bit of the bytes ``needle`` in the file itself (not through
    SQLite)."""
    with open(path, "r+b") as f:
        data = f.read()
        at = data.find(needle)
        assert at >= 0 and data.find(needle, at + 1) < 0, "needle must occur once"
        f.seek(at + len(needle) // 2)
        byte = f.read(1)[0]
        f.seek(at + len(needle) // 2)
        f.write(bytes([byte ^ (1 << bit)]))


@pytest.mark.parametrize("what", ["vector", "content"])
def test_bit_rot_in_a_record_is_reported_never_served(engine_name, tmp_path, what):
    path = str(tmp_path / "s.ferro")
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((20, 16)).astype(np.float32)
    ids = [f"r{i}" for i in range(20)]
    contents = [f"the content of record number {i:02d}, long enough to find" for i in range(20)]
    with ferromem.open(path, engine=engine_name) as store:
        store.add(ids, vectors, contents=contents)
    assert ferromem.check(path) == []
    needle = vectors[7].astype("<f4").tobytes() if what == "vector" else contents[7].encode()
    _flip_bit_of(path, needle)
    problems = ferromem.check(path)
    assert len(problems) == 1 and "'r7'" in problems[0].replace('"', "'"), problems
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = ferromem.open(path, engine=engine_name)
    assert any(issubclass(w.category, ferromem.DamagedRecordsWarning) for w in caught)
    with store:
        assert store.count() == 19
        assert [d["id"] for d in store.stats()["damaged"]] == ["r7"]
        with pytest.raises(ferromem.CorruptStoreError, match="r7"):
            store.get("r7")
        hits = store.search(vectors[7], k=20)
        assert "r7" not in hits.ids.tolist() and len(hits) == 19
        assert np.all(np.isfinite(hits.scores))
        assert "r7" not in [r.id for r in store.list()]
        # Saving it again makes it whole; the other records never changed.
        store.upsert("r7", vectors[7], contents=contents[7])
        assert store.stats()["damaged"] == []
        assert store.get("r7").content == contents[7]
    assert ferromem.check(path) == []


def test_a_damaged_record_can_be_deleted_by_id(engine_name, tmp_path):
    path = str(tmp_path / "s.ferro")
    vectors = np.random.default_rng(4).standard_normal((5, 16)).astype(np.float32)
    with ferromem.open(path, engine=engine_name) as store:
        store.add([f"r{i}" for i in range(5)], vectors)
    _flip_bit_of(path, vectors[2].astype("<f4").tobytes(), bit=3)
    with pytest.warns(ferromem.DamagedRecordsWarning):
        store = ferromem.open(path, engine=engine_name)
    with store:
        assert store.delete(ids=["r2"]) == 1
        assert store.stats()["damaged"] == [] and store.count() == 4
    assert ferromem.check(path) == []


def test_the_engines_read_each_others_checksums(tmp_path):
    pytest.importorskip("ferromem._core")
    path = str(tmp_path / "s.ferro")
    vectors = np.random.default_rng(5).standard_normal((6, 8)).astype(np.float32)
    for writer, reader in (("native", "reference"), ("reference", "native")):
        with ferromem.open(path, engine=writer) as store:
            store.upsert(
                [f"{writer}{i}" for i in range(6)],
                vectors,
                contents=["ünïcode ✓", "", "x", "y", "z", "w"],
                metadata=[{"a": [1, 2]}, {}, {"b": None}, {}, {}, {"c": "d"}],
                categories=[["k"], [], ["l", "m"], [], [], []],
                sources=["s", None, "", None, None, None],
                private=[True] + [False] * 5,
                importance=[0.25, 1, 0, 0.5, 0.5, 0.5],
            )
            store.update(f"{writer}1", content="changed", scope="/moved")
            store.touch(f"{writer}2", at=123.5)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ferromem.DamagedRecordsWarning)
            with ferromem.open(path, engine=reader) as store:
                assert store.count() == 12 if writer == "reference" else store.count() == 6
                assert store.get(f"{writer}1").content == "changed"
        assert ferromem.check(path) == []


def test_a_version_1_store_is_upgraded_in_place(engine_name, tmp_path):
    path = str(tmp_path / "old.ferro")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in (
        "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE records(id TEXT PRIMARY KEY, content TEXT NOT NULL, scope TEXT NOT NULL,"
        " categories TEXT NOT NULL, metadata TEXT NOT NULL, importance REAL NOT NULL,"
        " created_at REAL NOT NULL, last_accessed REAL NOT NULL, source TEXT,"
        " private INTEGER NOT NULL, vector BLOB NOT NULL, seq INTEGER NOT NULL)",
        "CREATE INDEX records_seq ON records(seq)",
        "CREATE TABLE tombstones(id TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
        "CREATE INDEX tombstones_seq ON tombstones(seq)",
    ):
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("schema_version", "1"), ("dim", "2"), ("seq", "1"), ("epoch", "0")],
    )
    conn.execute(
        "INSERT INTO records VALUES ('a', 'hi', '/s', '[\"c\"]', '{}', 0.5, 1.0, 1.0, NULL, 0, ?, 1)",
        (np.array([1.0, 2.0], "<f4").tobytes(),),
    )
    conn.commit()
    conn.close()
    assert any("version 1" in p for p in ferromem.check(path))
    with ferromem.open(path, engine=engine_name) as store:
        assert store.get("a").vector.tolist() == [1.0, 2.0]
        store.add("b", [2.0, 1.0])
    assert ferromem.check(path) == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == _storefile.APPLICATION_ID
