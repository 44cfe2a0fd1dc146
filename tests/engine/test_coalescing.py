"""1,000 concurrent callers, as threads and as asyncio tasks, all served, each with exactly
the answer it gets alone.

Concurrent single-query scans of a large store are coalesced by the engine into batches
(one pass over the rows for the whole batch); the batch must not change a single bit of
any answer, whatever the interleaving. The store here is 3,000 x 512 (1.5M values),
above the size where scans are shared.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import ferromem
import numpy as np
import pytest

N, DIM, QUERIES, CALLERS = 3000, 512, 50, 1000

pytestmark = pytest.mark.skipif(
    getattr(ferromem.store, "_core", None) is None, reason="the native engine is not built"
)


@pytest.fixture(scope="module")
def loaded():
    rng = np.random.default_rng(11)
    store = ferromem.open(None, index="exact", cache_size=0)
    store.add(
        [f"r{i}" for i in range(N)],
        rng.standard_normal((N, DIM), dtype=np.float32),
        scopes=[f"/team{i % 2}" for i in range(N)],
    )
    queries = rng.standard_normal((QUERIES, DIM), dtype=np.float32)
    expected = [_answer(store, queries, i) for i in range(QUERIES)]
    yield store, queries, expected
    store.close()


def _answer(store, queries, i):
    # Half the callers filter (same filter: they share a batch group), half do not.
    scope = "/team1" if i % 2 else None
    got = store.search(queries[i], k=5 + i % 4, scope=scope)
    return list(got.ids), got.scores.tobytes()


def test_a_thousand_threads(loaded):
    store, queries, expected = loaded
    before = store.stats()["coalesced"]
    start = threading.Barrier(CALLERS)
    errors: list[BaseException] = []
    wrong: list[int] = []

    def caller(i: int) -> None:
        try:
            start.wait()
            if _answer(store, queries, i % QUERIES) != expected[i % QUERIES]:
                wrong.append(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    old_stack = threading.stack_size(512 * 1024)
    try:
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
    finally:
        threading.stack_size(old_stack)
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert errors == [] and wrong == []
    after = store.stats()["coalesced"]
    assert after["batches"] > before["batches"], "a thousand simultaneous callers formed no batch"
    assert after["searches"] - before["searches"] >= 2 * (after["batches"] - before["batches"])


def test_a_thousand_asyncio_tasks(loaded):
    store, queries, expected = loaded

    async def main():
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
            loop.set_default_executor(pool)
            return await asyncio.gather(
                *(asyncio.to_thread(_answer, store, queries, i % QUERIES) for i in range(CALLERS))
            )

    answers = asyncio.run(main())
    assert answers == [expected[i % QUERIES] for i in range(CALLERS)]


def test_writes_between_batched_searches_are_seen(loaded):
    """Searches that run in a batch after a write see it (read-your-writes holds)."""
    store, queries, _ = loaded
    errors: list[BaseException] = []

    def writer_then_reader(i: int) -> None:
        try:
            store.upsert(f"w{i}", queries[i] * 3.0)
            got = store.search(queries[i], k=1)
            assert got.ids[0] == f"w{i}"
            assert got.scores[0] == pytest.approx(1.0, abs=1e-6)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer_then_reader, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    store.delete([f"w{i}" for i in range(40)])
