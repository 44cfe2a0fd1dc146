"""The native engine's result cache: repeated single-query searches are answered from it,
and no answer is ever stale. Checked against a second engine on the same file with the
cache off, after every kind of write, from this engine and from another one."""

from __future__ import annotations

import random

import ferromem
import numpy as np
import pytest
from conftest import NATIVE_AVAILABLE, NATIVE_SKIP_REASON

pytestmark = pytest.mark.skipif(not NATIVE_AVAILABLE, reason=NATIVE_SKIP_REASON)

DIM = 16


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_repeated_search_hits_and_stats_report_it(tmp_path):
    rng = np.random.default_rng(1)
    with ferromem.open(tmp_path / "s.ferro") as store:
        store.add([f"r{i}" for i in range(50)], _unit(rng, 50))
        q = _unit(rng, 1)[0]
        first = store.search(q, 5)
        for _ in range(9):
            again = store.search(q, 5)
            assert list(again.ids) == list(first.ids) and np.array_equal(again.scores, first.scores)
        cache = store.stats()["cache"]
        assert (cache["capacity"], cache["hits"], cache["misses"], cache["entries"]) == (256, 9, 1, 1)
        assert cache["hit_rate"] == pytest.approx(0.9)
        store.search(_unit(rng, 2), 5)  # batches bypass the cache
        assert store.stats()["cache"]["misses"] == 1


def test_never_stale_under_random_writes_from_two_engines(tmp_path):
    path = tmp_path / "s.ferro"
    rng = np.random.default_rng(2)
    pick = random.Random(2)
    cached = ferromem.open(path)
    writer = ferromem.open(path)  # another engine: its writes reach `cached` by catch-up
    truth = ferromem.open(path, cache_size=0)
    ids = [f"r{i}" for i in range(60)]
    cached.add(
        ids,
        _unit(rng, 60),
        scopes=[f"/s{i % 3}" for i in range(60)],
        categories=[["a"] if i % 2 else ["b"] for i in range(60)],
        metadata={"v": 1},
    )
    queries = _unit(rng, 4)
    filters = [{}, {"scope": "/s1"}, {"categories": ["a"]}, {"where": {"v": 2}}]
    for step in range(150):
        engine = pick.choice([cached, writer])
        rid = pick.choice(ids)
        op = pick.randrange(7)
        if op == 0:
            engine.touch([rid])
        elif op == 1 and engine.get(rid):
            engine.update(rid, content=f"text {step}", importance=pick.random())
        elif op == 2 and engine.get(rid):
            engine.update(rid, scope=f"/s{pick.randrange(3)}", metadata={"v": pick.randrange(3)})
        elif op == 3 and engine.get(rid):
            engine.update(rid, vector=_unit(rng, 1)[0])
        elif op == 4:
            engine.delete([rid])
        elif op == 5:
            engine.upsert(rid, _unit(rng, 1)[0], scopes=f"/s{pick.randrange(3)}", categories=["a"])
        elif op == 6 and step % 50 == 49:
            engine.clear()
        for q in queries:
            for flt in filters:
                got = cached.search(q, 5, **flt)
                want = truth.search(q, 5, **flt)
                assert list(got.ids) == list(want.ids), (step, op, flt)
                assert np.array_equal(got.scores, want.scores)
    stats = cached.stats()["cache"]
    assert stats["hits"] > 0 and stats["misses"] > 0 and stats["entries"] <= 256
    for s in (cached, writer, truth):
        s.close()


def test_capacity_bounds_entries_and_zero_turns_it_off(tmp_path):
    rng = np.random.default_rng(3)
    with ferromem.open(None, cache_size=3) as store:
        store.add([f"r{i}" for i in range(10)], _unit(rng, 10))
        for q in _unit(rng, 5):
            store.search(q, 2)
        assert store.stats()["cache"]["entries"] == 3
    with ferromem.open(None, cache_size=0) as store:
        store.add("a", _unit(rng, 1)[0])
        q = _unit(rng, 1)[0]
        store.search(q, 1)
        store.search(q, 1)
        assert store.stats()["cache"] == {
            "capacity": 0,
            "entries": 0,
            "hits": 0,
            "misses": 0,
            "hit_rate": 0.0,
        }
    for bad in (-1, 1.5, True, None, "10"):
        with pytest.raises(ferromem.InvalidInputError, match="cache_size"):
            ferromem.open(None, cache_size=bad)
