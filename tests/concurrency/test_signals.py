"""Ctrl-C (a real SIGINT sent with os.kill) interrupts wait_for_index() promptly.

A subprocess opens a store whose graph build lasts many seconds, and waits for it; the
test sends SIGINT once the wait has begun. The child must get KeyboardInterrupt while
the build is still running (before, the wait ignored signals until the build ended,
26-43 s later), close its store, and the store must reopen consistent.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import ferromem
import numpy as np
import pytest
from conftest import NATIVE_AVAILABLE, NATIVE_SKIP_REASON

pytestmark = [
    pytest.mark.skipif(not NATIVE_AVAILABLE, reason=NATIVE_SKIP_REASON),
    pytest.mark.skipif(sys.platform == "win32", reason="SIGINT by os.kill is POSIX"),
]

RECORDS, DIM = 30_000, 64  # a graph build of several seconds here
DEADLINE_S = 120.0  # the child is killed past this (a hang), and the test fails

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import ferromem

    path, n, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rows = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    store = ferromem.open(path, index="hnsw")
    store.add([f"r{i}" for i in range(n)], rows)
    print("waiting", flush=True)
    try:
        store.wait_for_index()
    except KeyboardInterrupt:
        index = store.stats()["index"]
        # Interrupted while the build still had work: the wait did not run to its end.
        cut_short = index["building"] or index["pending"] > 0 or index["graph_nodes"] < n
        print("interrupted", "cut-short" if cut_short else "after-the-build", flush=True)
        store.close()
        sys.exit(0)
    print("finished", flush=True)
    store.close()
    sys.exit(0)
    """
)


def _read_line(proc: subprocess.Popen, deadline: float) -> str:
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            return proc.stdout.readline().strip()
        if proc.poll() is not None:
            return proc.stdout.readline().strip()
    proc.kill()
    proc.wait()
    pytest.fail("the child did not answer before the deadline (a hang)")


def test_sigint_interrupts_wait_for_index(tmp_path):
    path = str(tmp_path / "s.ferro")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, path, str(RECORDS), str(DIM)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        assert _read_line(proc, deadline) == "waiting"
        time.sleep(0.3)  # inside wait_for_index by now (not a timing assert: see below)
        os.kill(proc.pid, signal.SIGINT)
        answer = _read_line(proc, deadline)
        assert answer.startswith("interrupted"), (answer, proc.stderr.read())
        assert answer == "interrupted cut-short", "KeyboardInterrupt came only after the build had finished"
        assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with ferromem.open(path, index="hnsw") as store:
        assert store.count() == RECORDS
        assert store.get("r7") is not None
        assert store.wait_for_index(DEADLINE_S)
        assert store.search(store.get("r7").vector, k=1).ids[0] == "r7"


SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import ferromem

    store = ferromem.open(sys.argv[1])
    print("saving", flush=True)
    try:
        store.add("blocked", np.ones(8, dtype=np.float32))
    except KeyboardInterrupt:
        print("interrupted", store.get("blocked") is None, store.count(), flush=True)
        store.close()
        sys.exit(0)
    print("saved", flush=True)
    store.close()
    """
)


def test_sigint_interrupts_a_wait_for_another_process_write_lock(tmp_path):
    """Another process holds SQLite's write lock (a writer waits up to 600 s for it):
    SIGINT ends the wait with KeyboardInterrupt, and nothing is written."""
    import sqlite3

    path = str(tmp_path / "s.ferro")
    with ferromem.open(path) as store:
        store.add("a", np.ones(8, dtype=np.float32))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held until the rollback below
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVER, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60.0
        assert _read_line(proc, deadline) == "saving"
        time.sleep(0.5)  # waiting for the lock by now
        os.kill(proc.pid, signal.SIGINT)
        answer = _read_line(proc, deadline)
        assert answer == "interrupted True 1", (answer, proc.stderr.read())
        assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        holder.execute("ROLLBACK")
        holder.close()
    with ferromem.open(path) as store:
        assert store.count() == 1 and store.get("blocked") is None
        store.add("b", np.ones(8, dtype=np.float32))  # the lock is free again
        assert store.count() == 2
