"""Real os.fork() while a store builds its graph in the background, and multiprocessing's
"fork" start method: a child never hangs.

A store opened before the fork raises StoreClosedError in the child (telling the user to
reopen it); a store opened in the child works, parallel scans included (rayon's global
pool has no threads in a forked child: scans run on the calling thread there). Every
child runs under a deadline the parent enforces; a child past it is killed and the test
fails.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time

import ferromem
import numpy as np
import pytest
from conftest import NATIVE_AVAILABLE, NATIVE_SKIP_REASON

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")

DIM = 128
# 8,192 x 128 = 2^20 multiply-adds a query: a scan the native engine splits over its
# thread pool, and a graph build that lasts long enough to fork in the middle of it.
RECORDS = 8_192
CHILD_DEADLINE_S = 60.0
# Exit codes of the child.
OK, WRONG = 0, 3


def _rows(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, DIM)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _wait_child(pid: int) -> int:
    """The child's exit code; kills it and fails the test past the deadline."""
    deadline = time.monotonic() + CHILD_DEADLINE_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child hung (killed after {CHILD_DEADLINE_S:.0f} s)")


def _child_body(store: ferromem.Store, path: str, queries: np.ndarray) -> int:
    """Runs in the child; returns its exit code."""
    for call in (
        store.count,
        lambda: store.add("child", queries[0]),
        lambda: store.search(queries[0], k=3),
        lambda: store.wait_for_index(1),
    ):
        try:
            call()
        except ferromem.StoreClosedError as exc:
            if "fork" not in str(exc):
                return WRONG
        else:
            return WRONG
    if not store.closed:
        return WRONG
    store.close()  # harmless: leaves the parent's engine alone
    with ferromem.open(path, engine=store.engine) as mine:
        n = mine.count()
        if n < RECORDS:
            return WRONG
        mine.add(f"child-{os.getpid()}", queries[1])
        hits = mine.search(queries[:8], k=5)  # a batch: a parallel scan in the parent
        # q1's own record and the child's copy of its vector tie at 1.0: either is first.
        if hits[0].ids[0] != "q0" or hits[1].ids[0] not in ("q1", f"child-{os.getpid()}"):
            return WRONG
        if mine.search(queries[2], k=1).ids[0] != "q2":
            return WRONG
        if mine.count() != n + 1:
            return WRONG
    with ferromem.open(None, engine=store.engine) as fresh:  # a new store: its own threads
        fresh.add(["x", "y"], queries[:2])
        if fresh.search(queries[1], k=1).ids[0] != "y":
            return WRONG
    return OK


@pytest.mark.parametrize("engine", ["native", "reference"])
def test_fork_while_building_never_hangs(engine, tmp_path):
    if engine == "native" and not NATIVE_AVAILABLE:
        pytest.skip(NATIVE_SKIP_REASON)
    repetitions = 12 if engine == "native" else 3
    for rep in range(repetitions):
        path = str(tmp_path / f"s{rep}.ferro")
        rows = _rows(rep, RECORDS)
        queries = rows[:16]
        store = ferromem.open(path, engine=engine, index="hnsw")
        store.add([f"q{i}" for i in range(16)] + [f"r{i}" for i in range(16, RECORDS)], rows)
        store.search(queries[:8], k=5)  # the parent's scan threads are running now
        # Fork at a different point of the background build each time.
        time.sleep(0.002 * rep)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = WRONG
            try:
                code = _child_body(store, path, queries)
            finally:
                os._exit(code)
        assert _wait_child(pid) == OK, f"repetition {rep}: the child saw a wrong answer"
        # The parent's store is untouched by the child's refusals.
        assert store.wait_for_index(120)
        assert store.count() >= RECORDS
        assert store.search(queries[3], k=1).ids[0] == "q3"
        store.close()


def _pool_worker(path: str) -> tuple[int, str]:
    with ferromem.open(path) as store:
        q = _rows(0, 16)
        return store.count(), store.search(q[5], k=1).ids[0]


def _inherited_worker(_: int) -> str:
    try:
        _INHERITED.count()
    except ferromem.StoreClosedError:
        return "refused"
    return "used"


_INHERITED: ferromem.Store | None = None


@pytest.mark.skipif(not NATIVE_AVAILABLE, reason=NATIVE_SKIP_REASON)
def test_multiprocessing_fork_pool(tmp_path):
    global _INHERITED
    path = str(tmp_path / "s.ferro")
    rows = _rows(0, RECORDS)
    store = ferromem.open(path, index="hnsw")
    store.add([f"q{i}" for i in range(16)] + [f"r{i}" for i in range(16, RECORDS)], rows)
    store.search(rows[:8], k=5)
    _INHERITED = store
    try:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool:
            opened = pool.map_async(_pool_worker, [path] * 6)
            inherited = pool.map_async(_inherited_worker, range(4))
            assert opened.get(timeout=CHILD_DEADLINE_S) == [(RECORDS, "q5")] * 6
            assert inherited.get(timeout=CHILD_DEADLINE_S) == ["refused"] * 4
    finally:
        _INHERITED = None
        store.close()


@pytest.mark.skipif(not NATIVE_AVAILABLE, reason=NATIVE_SKIP_REASON)
def test_a_child_opens_a_store_from_its_image(tmp_path):
    # Opening from an image verifies its checksums on all cores: in a forked child (after
    # the parent's parallel scans started rayon's pool) that must run on the calling thread.
    path = str(tmp_path / "img.ferro")
    rows = _rows(11, RECORDS)
    with ferromem.open(path, fast_open=True, index="exact") as store:
        store.add([f"q{i}" for i in range(RECORDS)], rows)
        store.search(rows[:8], k=3)  # a parallel batch scan: the pool is running
    with ferromem.open(path, fast_open=True, index="exact") as store:
        assert store.stats()["fast_open"]["opened_from_image"]
        store.search(rows[:8], k=3)
        for _ in range(3):
            pid = os.fork()
            if pid == 0:  # the child: exits without running the parent's cleanup
                code = WRONG
                try:
                    with ferromem.open(path, fast_open=True, index="exact") as mine:
                        ok = (
                            mine.stats()["fast_open"]["opened_from_image"]
                            and mine.search(rows[5], k=1).ids[0] == "q5"
                        )
                        code = OK if ok else WRONG
                finally:
                    os._exit(code)
            assert _wait_child(pid) == OK
