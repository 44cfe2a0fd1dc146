"""The native async API (``ferromem.open_async``, ``ferromem.AsyncStore``).

Its awaits are served by the Rust runtime's bounded blocking pool and resolved on the
caller's event loop: 1,000 concurrent tasks get the sync store's answers without a thread
per task; a cancelled await, at any point, leaves the store consistent and reaches no
exception handler; errors keep their types through the await; two loops in two threads
share one store; a forked child opens and uses its own.

Parametrised over the embedded store (in memory, on disk) and PostgreSQL
(``FERROMEM_TEST_POSTGRES_DSN``; skipped, with the reason, without a server or a build
that has the backend); the API tests also run on the reference engine, whose async path
is ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import ferromem
import ferromem.postgres
import numpy as np
import pytest
from ferromem.exceptions import (
    DimensionMismatchError,
    DuplicateIdError,
    InvalidInputError,
    InvalidVectorError,
    NotFoundError,
    StorageError,
    StoreClosedError,
    UnsupportedStoreError,
)

_core = ferromem.store._core
native_only = pytest.mark.skipif(_core is None, reason="the native engine is not built")

DIM = 32


@pytest.fixture(
    params=["memory", "disk", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def location(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str | None]:
    """Where a test's store lives: None (memory), a file, or a fresh PostgreSQL store
    (dropped afterwards)."""
    if request.param == "memory":
        yield None
        return
    if request.param == "disk":
        yield str(tmp_path / "store.ferro")
        return
    if "engine_name" in request.fixturenames and request.getfixturevalue("engine_name") == "reference":
        pytest.skip("the reference engine opens SQLite files only")
    dsn = os.environ.get("FERROMEM_TEST_POSTGRES_DSN")
    if not dsn:
        pytest.skip("FERROMEM_TEST_POSTGRES_DSN is not set: no PostgreSQL server to test against")
    url = f"{dsn}{'&' if '?' in dsn else '?'}store=async_{uuid.uuid4().hex[:16]}"
    try:
        ferromem.open(url, engine="native").close()
    except UnsupportedStoreError as exc:
        pytest.skip(f"this build has no PostgreSQL backend yet: {exc}")
    except StorageError as exc:
        pytest.skip(f"the PostgreSQL server of FERROMEM_TEST_POSTGRES_DSN is unreachable: {exc}")
    yield url
    ferromem.postgres.drop_store(url)


@pytest.fixture(params=["native", "reference"])
def engine_name(request: pytest.FixtureRequest) -> str:
    if request.param == "native" and _core is None:
        pytest.skip("the native engine is not built")
    return str(request.param)


def _vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)


def _contents(store: ferromem.Store) -> dict[str, tuple[Any, ...]]:
    """Every record of a store, comparable across stores."""
    return {
        r.id: (r.content, r.scope, r.categories, r.metadata, r.created_at, r.vector.tobytes())
        for r in store.list()
    }


# ------------------------------------------------------------------------------ the API


def test_open_async_takes_the_arguments_of_open() -> None:
    assert inspect.signature(ferromem.open_async).parameters == inspect.signature(ferromem.open).parameters


def test_every_operation_answers_as_the_sync_store(
    engine_name: str, location: str | None, tmp_path: Any
) -> None:
    """The same calls on an AsyncStore and on a Store give the same answers and contents."""
    twin_path = None if location is None or "://" in location else str(tmp_path / "twin.ferro")
    vectors = _vectors(40, 1)
    ids = [f"r{i}" for i in range(40)]
    fields: dict[str, Any] = {
        "contents": [f"text {i}" for i in range(40)],
        "scopes": [f"/team{i % 3}/agent{i % 2}" for i in range(40)],
        "categories": [["even"] if i % 2 == 0 else ["odd", "x"] for i in range(40)],
        "metadata": [{"n": i, "kind": "k" + str(i % 4)} for i in range(40)],
        "created_at": [1_700_000_000.0 + i for i in range(40)],
    }
    query = vectors[3] + 0.1

    def sync_answers(store: ferromem.Store) -> list[Any]:
        out: list[Any] = [store.add(ids[:30], vectors[:30], **{k: v[:30] for k, v in fields.items()})]
        out.append(store.upsert(ids[25:], vectors[25:] * 2, **{k: v[25:] for k, v in fields.items()}))
        out.append(store.update("r1", content="changed", metadata={"n": -1}, created_at=1_700_000_100.0))
        out.append(store.touch(["r2", "missing"], at=1_800_000_000.0))
        out.append(store.delete(["r4", "r5"]))
        out.append(store.delete(scope="/team2/agent0"))
        hits = store.search(query, k=7, scope="/team0", categories=["even", "x"])
        out.append((list(hits.ids), hits.scores.tolist()))
        batch = store.search(vectors[:3], k=4, where={"kind": "k1"})
        out.append([(list(h.ids), h.scores.tolist()) for h in batch])
        out.append(store.get("r1"))
        out.append(store.get_many(["r3", "nope", "r1"]))
        out.append(store.list(scope="/team1", offset=1, limit=5))
        out.append(store.count(categories=["odd"]))
        out.append(store.child_scopes("/team0"))
        out.append(store.category_counts(scope="/team1"))
        out.append(store.scope_info("/team0"))
        explained = store.explain(query, k=3)
        out.append((list(explained["results"].ids), explained["results"].scores.tolist()))
        out.append(store.stats()["records"])
        out.append(store.clear())
        out.append(store.count())
        return out

    async def async_answers(store: ferromem.AsyncStore) -> list[Any]:
        out: list[Any] = [await store.add(ids[:30], vectors[:30], **{k: v[:30] for k, v in fields.items()})]
        out.append(await store.upsert(ids[25:], vectors[25:] * 2, **{k: v[25:] for k, v in fields.items()}))
        out.append(
            await store.update("r1", content="changed", metadata={"n": -1}, created_at=1_700_000_100.0)
        )
        out.append(await store.touch(["r2", "missing"], at=1_800_000_000.0))
        out.append(await store.delete(["r4", "r5"]))
        out.append(await store.delete(scope="/team2/agent0"))
        hits = await store.search(query, k=7, scope="/team0", categories=["even", "x"])
        out.append((list(hits.ids), hits.scores.tolist()))
        batch = await store.search(vectors[:3], k=4, where={"kind": "k1"})
        out.append([(list(h.ids), h.scores.tolist()) for h in batch])
        out.append(await store.get("r1"))
        out.append(await store.get_many(["r3", "nope", "r1"]))
        out.append(await store.list(scope="/team1", offset=1, limit=5))
        out.append(await store.count(categories=["odd"]))
        out.append(await store.child_scopes("/team0"))
        out.append(await store.category_counts(scope="/team1"))
        out.append(await store.scope_info("/team0"))
        explained = await store.explain(query, k=3)
        out.append((list(explained["results"].ids), explained["results"].scores.tolist()))
        out.append((await store.stats())["records"])
        out.append(await store.clear())
        out.append(await store.count())
        return out

    async def main() -> tuple[list[Any], dict[str, Any]]:
        async with await ferromem.open_async(location, engine=engine_name) as store:
            assert store.engine == engine_name
            answers = await async_answers(store)
            stats = await store.stats()
        assert store.closed
        return answers, stats

    got, stats = asyncio.run(main())
    with ferromem.open(twin_path, engine=engine_name) as twin:
        expected = sync_answers(twin)
    assert got == expected
    assert stats["engine"] == engine_name and stats["records"] == 0


def test_a_store_and_its_async_face_share_the_engine(engine_name: str) -> None:
    store = ferromem.open(None, engine=engine_name)
    face = ferromem.AsyncStore(store)
    assert face.sync is store

    async def main() -> None:
        await face.add("a", _vectors(1, 2)[0])
        assert store.get("a") is not None  # written through the async face, read at once
        store.add("b", _vectors(1, 3)[0])
        assert await face.count() == 2
        await face.close()

    asyncio.run(main())
    assert store.closed
    with pytest.raises(StoreClosedError):
        store.count()


def test_typed_errors_come_through_the_await(engine_name: str, location: str | None) -> None:
    async def main() -> None:
        store = await ferromem.open_async(location, engine=engine_name)
        await store.add(["a", "b"], _vectors(2, 4))
        with pytest.raises(InvalidVectorError):  # refused by the checks, before the engine
            await store.add("c", [float("nan")] * DIM)
        with pytest.raises(DimensionMismatchError):  # refused by the engine, through the future
            await store.add("c", _vectors(1, 5, dim=DIM + 1)[0])
        with pytest.raises(DimensionMismatchError):
            await store.search(_vectors(1, 5, dim=DIM - 1)[0])
        with pytest.raises(DuplicateIdError):
            await store.add("a", _vectors(1, 6)[0])
        with pytest.raises(NotFoundError):
            await store.update("nobody", content="x")
        with pytest.raises(InvalidInputError):
            await store.search(_vectors(1, 7)[0], k=-1)
        with pytest.raises(InvalidInputError):
            await store.delete()
        with pytest.raises(TypeError, match="unexpected keyword argument 'scopes'"):
            await store.count(scopes="/a")
        assert await store.count() == 2  # nothing was written by a refused call
        await store.close()
        await store.close()  # twice is harmless
        for call in (store.count(), store.search(_vectors(1, 8)[0]), store.add("z", _vectors(1, 9)[0])):
            with pytest.raises(StoreClosedError):
                await call

    asyncio.run(main())


@native_only
def test_a_closed_engine_raises_through_the_future() -> None:
    """StoreClosedError from the engine itself (not the facade's check) reaches the await."""
    store = ferromem.open(None, engine="native")
    engine = _core.AsyncEngine(store._engine)

    async def main() -> None:
        await engine.close()
        with pytest.raises(StoreClosedError):
            await engine.count()

    asyncio.run(main())


@native_only
def test_outside_a_running_loop_is_a_runtime_error() -> None:
    store = ferromem.open(None, engine="native")
    with pytest.raises(RuntimeError, match="no running event loop"):
        _core.AsyncEngine(store._engine).count()
    store.close()


def test_bad_open_arguments_raise_before_anything_is_opened(tmp_path: Any) -> None:
    path = tmp_path / "never" / "store.ferro"

    async def main() -> None:
        with pytest.raises(InvalidInputError):
            await ferromem.open_async(str(path), durability="sometimes")
        with pytest.raises(InvalidInputError):
            await ferromem.open_async(str(path), device="abacus")

    asyncio.run(main())
    assert not path.parent.exists()


# ------------------------------------------------------------------------------ load


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


@native_only
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the thread count from /proc")
def test_a_thousand_tasks_search_and_save_without_a_thread_each(location: str | None) -> None:
    """1,000 concurrent tasks, half searching, half saving, on one AsyncStore: no error,
    every search answers as the sync store does, every save is stored, and the process's
    threads stay bounded by the runtime's pool (far under 1,000)."""
    n_base, tasks = 2000, 1000
    base = _vectors(n_base, 10)
    queries = _vectors(tasks // 2, 11)
    saved = _vectors(tasks // 2, 12)

    async def main() -> tuple[list[Any], list[Any], int, int, int]:
        store = await ferromem.open_async(location, engine="native", index="exact")
        await store.add([f"b{i}" for i in range(n_base)], base, scopes="/base")
        # The sync store's answers (the searches filter to /base, which the saves never touch).
        expected = [
            (list(h.ids), h.scores.tobytes())
            for h in (store.sync.search(q, k=10, scope="/base") for q in queries)
        ]
        await store.search(queries[0], k=10)  # the runtime and its pool are up
        threads_before = threading.active_count()
        baseline = _thread_count()
        peak = baseline
        running = True

        async def sample() -> None:
            nonlocal peak
            while running:
                peak = max(peak, _thread_count())
                await asyncio.sleep(0.001)

        async def search(i: int) -> tuple[list[str], bytes]:
            hits = await store.search(queries[i], k=10, scope="/base")
            return list(hits.ids), hits.scores.tobytes()

        async def save(i: int) -> list[str]:
            return await store.upsert(f"s{i}", saved[i], scopes="/saved", contents=f"saved {i}")

        sampler = asyncio.ensure_future(sample())
        calls = [search(i // 2) if i % 2 == 0 else save(i // 2) for i in range(tasks)]
        answers = await asyncio.gather(*calls)
        running = False
        await sampler
        assert threading.active_count() == threads_before
        got_searches, got_saves = answers[0::2], answers[1::2]
        assert got_saves == [[f"s{i}"] for i in range(tasks // 2)]
        stored = await store.get_many([f"s{i}" for i in range(tasks // 2)])
        assert all(
            r is not None and r.content == f"saved {i}" and np.array_equal(r.vector, saved[i])
            for i, r in enumerate(stored)
        )
        count = await store.count()
        await store.close()
        return got_searches, expected, count, baseline, peak

    got, expected, count, baseline, peak = asyncio.run(main())
    assert got == expected
    assert count == n_base + tasks // 2
    # Threads a call may add: the pool's bound, the runtime's I/O workers (2), and the
    # scan threads of the engine (rayon's, per core), all of them shared by every task.
    assert peak - baseline <= _core.MAX_BLOCKING_THREADS + 2 + (os.cpu_count() or 1), (baseline, peak)
    assert peak < 200


# ------------------------------------------------------------------------------ cancellation


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cancelling_at_random_points_keeps_the_store_whole(
    engine_name: str, location: str | None, seed: int
) -> None:
    """Saves (batches of 3) and searches cancelled at random points: nothing reaches the
    loop's exception handler, every batch is whole or absent, every save not cancelled is
    stored, every search not cancelled answers right, and the store stays usable."""
    rng = random.Random(seed)
    n_saves, n_searches = 120, 120
    vectors = _vectors(n_saves * 3, 20 + seed)
    queries = _vectors(n_searches, 40 + seed)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handled: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: handled.append(context))
        store = await ferromem.open_async(location, engine=engine_name, durability="full")
        await store.add([f"base{i}" for i in range(50)], _vectors(50, 60), scopes="/base")
        expected = {i: list(store.sync.search(queries[i], k=5, scope="/base").ids) for i in range(n_searches)}

        async def save(i: int) -> None:
            ids = [f"s{i}-{j}" for j in range(3)]
            await store.upsert(ids, vectors[3 * i : 3 * i + 3], scopes=f"/saved/{i}")

        async def search(i: int) -> list[str]:
            return list((await store.search(queries[i], k=5, scope="/base")).ids)

        saves = [asyncio.ensure_future(save(i)) for i in range(n_saves)]
        searches = [asyncio.ensure_future(search(i)) for i in range(n_searches)]
        everything = saves + searches
        # Cancel half of them, each after a random number of loop iterations (0: before it
        # started at all; more: while its operation waits for a thread, runs, or is answered).
        doomed = rng.sample(range(len(everything)), len(everything) // 2)
        for _ in range(40):
            for k in [k for k in doomed if rng.random() < 0.15]:
                everything[k].cancel()
                doomed.remove(k)
            await asyncio.sleep(0 if rng.random() < 0.7 else 0.001)
        for k in doomed:
            everything[k].cancel()
        outcomes = await asyncio.gather(*everything, return_exceptions=True)
        assert all(o is None or isinstance(o, (list, asyncio.CancelledError)) for o in outcomes), outcomes
        for i, task in enumerate(searches):
            if not task.cancelled():
                assert task.result() == expected[i]
        # A cancelled save that had started still finishes; wait until nothing changes.
        last, still = -1, 0
        deadline = time.monotonic() + 10
        while still < 5 and time.monotonic() < deadline:
            now = await store.count()
            still, last = (still + 1, last) if now == last else (0, now)
            await asyncio.sleep(0.02)
        for i, task in enumerate(saves):
            present = [r is not None for r in await store.get_many([f"s{i}-{j}" for j in range(3)])]
            assert present in ([True] * 3, [False] * 3), (i, present)
            if not task.cancelled():
                assert present == [True] * 3
        # Still usable, and nothing went to the loop's exception handler.
        await store.upsert("after", vectors[0] * 3)
        assert list((await store.search(vectors[0], k=1)).ids) == ["after"]
        await store.close()
        await asyncio.sleep(0.05)  # answers of cancelled calls still on their way
        assert handled == []

    asyncio.run(main())


# ------------------------------------------------------------------------------ loops, fork


def test_two_loops_in_two_threads_share_one_store(engine_name: str, location: str | None) -> None:
    store = ferromem.open(location, engine=engine_name)
    face = ferromem.AsyncStore(store)
    errors: list[BaseException] = []

    def run(tag: str, seed: int) -> None:
        vectors = _vectors(100, seed)

        async def main() -> None:
            for i in range(100):
                await face.add(f"{tag}{i}", vectors[i], scopes=f"/{tag}")
                hits = await face.search(vectors[i], k=1, scope=f"/{tag}")
                assert list(hits.ids) == [f"{tag}{i}"]

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(tag, seed)) for tag, seed in (("a", 70), ("b", 71))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count(scope="/a") == 100 and store.count(scope="/b") == 100
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_opens_and_uses_its_own_async_store(engine_name: str, tmp_path: Any) -> None:
    parent_path = str(tmp_path / "parent.ferro")
    child_path = str(tmp_path / "child.ferro")

    async def parent_work() -> ferromem.AsyncStore:
        store = await ferromem.open_async(parent_path, engine=engine_name)
        await store.add(["p1", "p2"], _vectors(2, 80))
        await store.search(_vectors(1, 81)[0], k=1)  # the runtime's threads exist now
        return store

    inherited = asyncio.run(parent_work())

    async def child_work() -> int:
        # The parent's store is refused in the child; a store of its own works.
        try:
            await inherited.count()
            return 10
        except StoreClosedError:
            pass
        async with await ferromem.open_async(child_path, engine=engine_name) as own:
            vectors = _vectors(20, 82)
            await asyncio.gather(*(own.add(f"c{i}", vectors[i]) for i in range(20)))
            hits = await own.search(vectors[7], k=1)
            return 0 if list(hits.ids) == ["c7"] and await own.count() == 20 else 11

    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 12
        try:
            code = asyncio.run(asyncio.wait_for(child_work(), 20))
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    with ferromem.open(child_path, engine=engine_name) as own:
        assert own.count() == 20
    assert asyncio.run(inherited.count()) == 2  # the parent's store is unaffected
    asyncio.run(inherited.close())
