"""stats() is called by monitoring threads while other threads write and search: it must
never deadlock with a writer (a writer holds the write-transaction lock while it waits for
the in-memory state) and its figures must stay consistent."""

import threading
import time

import ferromem
import numpy as np
import pytest

pytest.importorskip("ferromem._core", reason="the native engine is not built")


@pytest.mark.timeout(120)
def test_stats_while_writing_and_searching(tmp_path):
    store = ferromem.open(tmp_path / "s.ferro", engine="native")
    dim = 16
    rng = np.random.default_rng(0)
    store.add([f"seed{i}" for i in range(50)], rng.standard_normal((50, dim)).astype(np.float32))
    stop = time.monotonic() + 3.0
    errors: list[BaseException] = []
    written = [0] * 3

    def writer(w: int) -> None:
        local = np.random.default_rng(w)
        try:
            while time.monotonic() < stop:
                store.add(f"w{w}-{written[w]}", local.standard_normal(dim).astype(np.float32))
                written[w] += 1
        except BaseException as e:  # reported below
            errors.append(e)

    def monitor() -> None:
        try:
            while time.monotonic() < stop:
                s = store.stats()
                assert s["records"] >= 50
                assert s["operations"]["add"]["count"] >= 1
        except BaseException as e:
            errors.append(e)

    def searcher() -> None:
        local = np.random.default_rng(99)
        try:
            while time.monotonic() < stop:
                assert len(store.search(local.standard_normal(dim).astype(np.float32), 5)) == 5
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    threads += [threading.Thread(target=monitor) for _ in range(3)]
    threads += [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "a thread is stuck: deadlock"
    assert errors == []
    assert store.count() == 50 + sum(written)
    assert store.stats()["records"] == store.count()
    store.close()
