"""Eight threads on one store: no error, no lost write, the final store is exact.

Each thread owns a scope (``/t<i>``) and mixes 90% searches with 10% writes; half the
threads also update and delete their own records. Because only thread i writes under
``/t<i>``, a search filtered to its own scope must be *exactly* the brute force over the
records the thread knows it has, at every moment (read-your-writes, no ghost, no loss),
while unfiltered searches must always be well-formed. At the end the store must hold
exactly the union of what every thread acknowledged and not deleted, and answer probe
searches like a reference store fed those final records.

Variants: threads sharing ONE store object (in memory and on disk), and threads that each
open their own store object on the same path. Duration per variant:
FERROMEM_STRESS_SECONDS (default 3); every thread also does a minimum number of
operations, so a slow machine still exercises overlap.
"""

from __future__ import annotations

import random
import threading
import time
import traceback

import numpy as np
import pytest
from _helpers import (
    DERIVED_DIM,
    Oracle,
    Rec,
    assert_record_equal,
    assert_same_search,
    derived_record,
    derived_vector,
    engine_params,
    env_float,
    open_store,
    store_records,
)

THREADS = 8
MIN_OPS_PER_THREAD = 40


def thread_record(thread: int, serial: int, version: int = 0) -> Rec:
    record_id = f"t{thread}-{serial}"
    rec = derived_record(record_id, version=version)
    return rec.copy(
        scope=f"/t{thread}/{serial % 3}", metadata={**rec.metadata, "thread": thread, "serial": serial}
    )


class Worker(threading.Thread):
    def __init__(self, index: int, get_store, deadline: float, mutator: bool, barrier: threading.Barrier):
        super().__init__(name=f"worker-{index}", daemon=True)
        self.index = index
        self.get_store = get_store
        self.deadline = deadline
        self.mutator = mutator
        self.barrier = barrier
        self.rng = random.Random(index * 7919 + 1)
        self.alive: dict[str, Rec] = {}
        self.deleted: set[str] = set()
        self.serial = 0
        self.ops = 0
        self.error: str | None = None
        self._oracle: Oracle | None = None

    def run(self):
        try:
            store = self.get_store(self.index)
            self.barrier.wait(timeout=300)
            while self.ops < MIN_OPS_PER_THREAD or time.monotonic() < self.deadline:
                self.step(store)
                self.ops += 1
        except BaseException:
            self.error = traceback.format_exc()
            self.barrier.abort()

    def oracle(self) -> Oracle:
        if self._oracle is None:
            self._oracle = Oracle(list(self.alive.values()))
        return self._oracle

    def changed(self):
        self._oracle = None

    def step(self, store):
        roll = self.rng.random()
        if roll < 0.9:
            self.search(store)
        elif not self.mutator or roll < 0.95 or not self.alive:
            self.add(store)
        elif roll < 0.975:
            self.update(store)
        else:
            self.delete(store)

    def search(self, store):
        query = (
            np.random.default_rng(self.rng.getrandbits(32)).standard_normal(DERIVED_DIM).astype(np.float32)
        )
        if self.rng.random() < 0.5:
            # Only this thread writes under its scope: the answer is exactly known.
            result = store.search(query, 5, scope=f"/t{self.index}")
            self.oracle().check(
                result, query, 5, scope=f"/t{self.index}", context=f"thread {self.index} own scope"
            )
        else:
            result = store.search(query, 5, include_private=self.rng.random() < 0.5)
            ids, scores = [str(i) for i in result.ids], np.asarray(result.scores)
            assert len(ids) <= 5 and len(set(ids)) == len(ids)
            assert np.all(np.diff(scores) <= 0) and np.all(np.abs(scores) <= 1.0 + 1e-5)

    def add(self, store):
        recs = [thread_record(self.index, self.serial + m) for m in range(self.rng.choice((1, 1, 2, 3)))]
        self.serial += len(recs)
        assert store_records(store, recs, "add") == [r.id for r in recs]
        for rec in recs:
            self.alive[rec.id] = rec
        self.changed()
        for rec, got in zip(recs, store.get_many([r.id for r in recs])):
            assert_record_equal(got, rec)  # read-your-writes

    def update(self, store):
        record_id = self.rng.choice(sorted(self.alive))
        version = self.alive[record_id].metadata.get("version", 0) + 1
        vector = derived_vector(record_id, version=version)
        updated = store.update(
            record_id,
            vector=vector,
            content=f"v{version}",
            metadata={**self.alive[record_id].metadata, "version": version},
        )
        self.alive[record_id] = self.alive[record_id].copy(
            vector=vector,
            content=f"v{version}",
            metadata={**self.alive[record_id].metadata, "version": version},
        )
        self.changed()
        assert_record_equal(updated, self.alive[record_id])

    def delete(self, store):
        record_id = self.rng.choice(sorted(self.alive))
        if self.rng.random() < 0.5:
            assert store.delete([record_id]) == 1
        else:
            serial = self.alive[record_id].metadata["serial"]
            assert store.delete(where={"thread": self.index, "serial": serial}) == 1
        del self.alive[record_id]
        self.deleted.add(record_id)
        self.changed()
        assert store.get(record_id) is None


def run_workers(get_store) -> list[Worker]:
    seconds = env_float("FERROMEM_STRESS_SECONDS", 3.0)
    barrier = threading.Barrier(THREADS)
    deadline = time.monotonic() + seconds
    workers = [Worker(i, get_store, deadline, mutator=i % 2 == 1, barrier=barrier) for i in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=seconds + 600)
        assert not worker.is_alive(), f"{worker.name} hangs (deadlock?)"
    errors = [f"{w.name}:\n{w.error}" for w in workers if w.error]
    assert not errors, "\n".join(errors)
    return workers


def check_final_state(store, workers: list[Worker]) -> None:
    final: dict[str, Rec] = {}
    deleted: set[str] = set()
    for worker in workers:
        final.update(worker.alive)
        deleted |= worker.deleted
    assert sum(w.ops for w in workers) >= THREADS * MIN_OPS_PER_THREAD
    assert store.count() == len(final)
    ids = sorted(final)
    for rec, got in zip([final[i] for i in ids], store.get_many(ids)):
        assert_record_equal(got, rec)
    assert all(r is None for r in store.get_many(sorted(deleted))), "a deleted record came back"
    assert sorted(r.id for r in store.list()) == ids

    # Same answers as a reference store that was simply fed the final records.
    reference = open_store("reference")
    if final:
        store_records(reference, list(final.values()))
    oracle = Oracle(list(final.values()))
    rng = np.random.default_rng(99)
    for qi in range(20):
        query = rng.standard_normal(DERIVED_DIM).astype(np.float32)
        for filters in ({}, {"scope": "/t1"}, {"include_private": False}, {"categories": ["c1"]}):
            got = store.search(query, 10, **filters)
            oracle.check(got, query, 10, context=f"final q{qi} {filters}", **filters)
            assert_same_search(got, reference.search(query, 10, **filters), context=f"final q{qi} {filters}")
    reference.close()


@pytest.mark.slow
@pytest.mark.parametrize("on_disk", [False, True], ids=["memory", "disk"])
@pytest.mark.parametrize("engine", engine_params())
def test_threads_sharing_one_store_object(engine, on_disk, tmp_path):
    store = open_store(engine, tmp_path / "shared.ferro" if on_disk else None)
    try:
        workers = run_workers(lambda index: store)
        check_final_state(store, workers)
    finally:
        store.close()
    if on_disk:
        with open_store(engine, tmp_path / "shared.ferro") as reopened:
            check_final_state(reopened, workers)


@pytest.mark.slow
@pytest.mark.parametrize("engine", engine_params())
def test_threads_each_with_own_store_object_on_one_path(engine, tmp_path):
    path = tmp_path / "own.ferro"
    stores = {}
    lock = threading.Lock()

    def own_store(index):
        store = open_store(engine, path)
        with lock:
            stores[index] = store
        return store

    try:
        workers = run_workers(own_store)
        # Every handle, not only a fresh one, sees every other thread's final writes.
        for store in stores.values():
            check_final_state(store, workers)
    finally:
        for store in stores.values():
            store.close()
    with open_store(engine, path) as reopened:
        check_final_state(reopened, workers)


@pytest.mark.parametrize("engine", engine_params())
def test_final_state_check_can_fail(engine):
    """The final comparison notices a record that a thread believes it saved."""
    store = open_store(engine)
    worker = Worker(0, None, 0.0, False, threading.Barrier(1))
    worker.ops = THREADS * MIN_OPS_PER_THREAD
    worker.alive["t0-0"] = thread_record(0, 0)
    with pytest.raises(AssertionError):
        check_final_state(store, [worker])
