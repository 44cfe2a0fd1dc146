"""One process of the PostgreSQL load test (tests/postgres/test_postgres_load.py).

Run as a script: ``python _load_worker.py CONFIG_JSON``. It opens the store of the URL
(one handle shared by its threads, or one handle per thread: separate replicas, as
separate hosts would have), waits for the start file, and runs ``ops`` mixed operations
on ``threads`` threads. Each thread owns a disjoint range of ids, so the expected final
state is a pure function of the acknowledged operations, which it logs (only after the
call returned). Every read of an own id must show the thread's own last write
(read-your-writes). Searches go over everything.

After its operations it writes its done file and waits for the parent's "all done" file,
lets ``max_staleness`` pass (the bound within which another process's commit is seen),
then checks every handle against the tables read with psycopg: the count, every record
(vector bit-exact) and exact searches (NumPy brute force over the database contents).
It writes a JSON report; the parent fails the test on any error it lists.

The model (:func:`apply`) is shared with the parent, which replays every log.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]  # tests/: _helpers, _postgres_fixtures

from _helpers import Oracle, derived_record, record_mismatches, store_records  # noqa: E402

FILTERS: list[dict[str, Any]] = [
    {},
    {"scope": "/derived/1"},
    {"categories": ["c0"]},
    {"include_private": False, "visible_to": "agent-1"},
    {"where": {"ok": True}},
]
TOUCH_AT = 1_800_000_000.0


def thread_ids(process: int, thread: int, per_thread: int) -> list[str]:
    return [f"p{process}-t{thread}-ü{k}" for k in range(per_thread)]


def record_of(record_id: str, version: int, dim: int):
    return derived_record(record_id, dim, version)


def apply(model: dict, entry: list, dim: int) -> None:
    """Applies one acknowledged operation of a log to ``model`` ({id: Rec})."""
    kind = entry[0]
    if kind == "put":  # add or upsert: the whole record replaced
        for record_id, version in zip(entry[1], entry[2]):
            model[record_id] = record_of(record_id, version, dim)
    elif kind == "update":
        _, record_id, version, with_vector = entry
        source = record_of(record_id, version, dim)
        changes = {"content": source.content, "importance": source.importance, "metadata": source.metadata}
        if with_vector:
            changes["vector"] = source.vector
        model[record_id] = model[record_id].copy(**changes)
    elif kind == "delete":
        for record_id in entry[1]:
            del model[record_id]
    elif kind == "touch":
        for record_id in entry[1]:
            model[record_id] = model[record_id].copy(last_accessed=entry[2])
    else:
        raise ValueError(f"unknown log entry {entry!r}")


WRITES = ("put", "update", "delete", "touch")


class Thread:
    def __init__(self, config: dict, thread: int, store) -> None:
        self.config = config
        self.store = store
        self.dim = config["dim"]
        self.ids = thread_ids(config["process"], thread, config["ids_per_thread"])
        self.rng = random.Random(config["seed"] * 1000 + thread)
        self.model: dict = {}
        self.log: list[list] = []
        self.errors: list[str] = []
        self.version = 0
        self.done = 0
        self.searches = 0

    def next_version(self) -> int:
        self.version += 1
        return self.version

    def run(self, ops: int, progress) -> None:
        for _ in range(ops):
            try:
                self.step()
            except Exception as exc:  # every error is reported; the parent expects none
                self.errors.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
            self.done += 1
            if self.done % 100 == 0:
                progress()

    def step(self) -> None:
        rng, store = self.rng, self.store
        present = sorted(self.model)
        absent = [i for i in self.ids if i not in self.model]
        roll = rng.random()
        if roll < 0.15 and absent:
            record_id = rng.choice(absent)
            rec = record_of(record_id, self.next_version(), self.dim)
            store_records(store, [rec], "add")
            self.acknowledged(["put", [record_id], [self.version]])
        elif roll < 0.30:
            chosen = rng.sample(self.ids, rng.randint(1, 5))
            versions = [self.next_version() for _ in chosen]
            recs = [record_of(i, v, self.dim) for i, v in zip(chosen, versions)]
            store_records(store, recs, "upsert")
            self.acknowledged(["put", chosen, versions])
        elif roll < 0.42 and present:
            record_id = rng.choice(present)
            version = self.next_version()
            with_vector = rng.random() < 0.5
            source = record_of(record_id, version, self.dim)
            fields = {"content": source.content, "importance": source.importance, "metadata": source.metadata}
            if with_vector:
                fields["vector"] = source.vector
            store.update(record_id, **fields)
            self.acknowledged(["update", record_id, version, with_vector])
        elif roll < 0.52 and present:
            doomed = rng.sample(present, min(len(present), rng.randint(1, 3)))
            deleted = store.delete(doomed)
            if deleted != len(doomed):
                self.errors.append(f"delete({doomed}) deleted {deleted}")
            self.acknowledged(["delete", doomed])
        elif roll < 0.57 and present:
            touched = rng.sample(present, min(len(present), 3))
            at = TOUCH_AT + self.next_version()
            found = store.touch(touched, at=at)
            if found != len(touched):
                self.errors.append(f"touch({touched}) found {found}")
            self.acknowledged(["touch", touched, at])
        elif roll < 0.65 and self.ids:
            self.check_own(rng.sample(self.ids, 4))
        else:
            self.search()

    def acknowledged(self, entry: list) -> None:
        self.log.append(entry)
        apply(self.model, entry, self.dim)
        # Read-your-writes: the ids just written read back as written, at once.
        touched = entry[1] if isinstance(entry[1], list) else [entry[1]]
        self.check_own(touched)

    def check_own(self, record_ids: list[str]) -> None:
        for record_id, got in zip(record_ids, self.store.get_many(record_ids)):
            want = self.model.get(record_id)
            if want is None:
                if got is not None:
                    self.errors.append(f"read-your-writes: {record_id!r} was deleted but reads back")
            else:
                problems = record_mismatches(got, want)
                if problems:
                    self.errors.append("read-your-writes: " + "; ".join(problems))

    def search(self) -> None:
        query = np.asarray(
            [self.rng.gauss(0.0, 1.0) for _ in range(self.dim)],
            dtype=np.float32,
        )
        filters = FILTERS[self.rng.randrange(len(FILTERS))]
        result = self.store.search(query, 10, **filters)
        self.searches += 1
        scores = np.asarray(result.scores)
        if len(result) > 10 or np.any(np.diff(scores) > 0):
            self.errors.append(f"search returned {len(result)} results, scores {scores}")


def final_checks(config: dict, handles: list, report: dict) -> None:
    """Each handle, caught up, against the database contents read with psycopg."""
    from _postgres_fixtures import PostgresServer, read_records

    server = PostgresServer(dsn=config["dsn"], schema=config["schema"])
    with server.connect() as conn:
        contents = read_records(conn, config["schema"], config["store"])
    report["db_count"] = len(contents)
    oracle = Oracle(list(contents.values()))
    ids = sorted(contents)
    rng = np.random.default_rng(config["seed"])
    queries = [rng.standard_normal(config["dim"]).astype(np.float32) for _ in range(config["final_queries"])]
    if ids:
        queries.append(contents[ids[len(ids) // 2]].vector.copy())  # an exact hit
    problems = report["final_problems"]
    for h, store in enumerate(handles):
        if store.count() != len(contents):
            problems.append(f"handle {h}: count {store.count()} != {len(contents)} rows in the database")
        for record_id, got in zip(ids, store.get_many(ids)):
            for problem in record_mismatches(got, contents[record_id]):
                problems.append(f"handle {h}: {problem}")
        for qi, query in enumerate(queries):
            for filters in FILTERS:
                for k in (1, 10, 50):
                    try:
                        oracle.check(
                            store.search(query, k, **filters), query, k, context=f"h{h} q{qi}", **filters
                        )
                    except AssertionError as exc:
                        problems.append(f"handle {h}: search not exact: {exc}")
        del problems[50:]


def main(config: dict) -> None:
    import ferromem

    threads = config["threads"]
    # Separate replicas: one handle per thread; else one handle shared by all threads.
    handles = [ferromem.open(config["url"]) for _ in range(threads if config["separate_replicas"] else 1)]
    workers = [Thread(config, t, handles[t % len(handles)]) for t in range(threads)]
    out = Path(config["out"])
    progress_file = out.with_suffix(".progress")

    def progress() -> None:
        tmp = progress_file.with_suffix(".tmp")
        tmp.write_text(str(sum(w.done for w in workers)))
        os.replace(tmp, progress_file)

    deadline = time.monotonic() + 300
    while not os.path.exists(config["start_file"]):
        if time.monotonic() > deadline:
            raise SystemExit("the start file never appeared")
        time.sleep(0.01)
    per_thread = config["ops"] // threads
    running = [
        threading.Thread(target=w.run, args=(per_thread + (t < config["ops"] % threads), progress))
        for t, w in enumerate(workers)
    ]
    started = time.monotonic()
    for t in running:
        t.start()
    for t in running:
        t.join()
    progress()
    report: dict[str, Any] = {
        "process": config["process"],
        "ops_seconds": time.monotonic() - started,
        "logs": [w.log for w in workers],
        "errors": [e for w in workers for e in w.errors],
        "searches": sum(w.searches for w in workers),
        "final_problems": [],
    }
    Path(config["done_file"]).write_text("done")
    deadline = time.monotonic() + 900
    while not os.path.exists(config["all_done_file"]):
        if time.monotonic() > deadline:
            report["errors"].append("the parent never said that every process was done")
            break
        time.sleep(0.02)
    # The contract: another process's commit is seen within max_staleness.
    time.sleep(config["max_staleness"] + 0.5)
    try:
        final_checks(config, handles, report)
    except Exception as exc:
        report["errors"].append(f"final checks failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    for store in handles:
        store.close()
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    os.replace(tmp, out)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
