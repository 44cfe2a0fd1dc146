"""Child processes of tests/postgres/test_postgres_failures.py, run as
``python _pg_children.py ENTRY JSON_ARGS``.

* ``writer``: opens the store, saves a small batch and says ``ack``, then waits for a line
  on stdin and saves one large batch (the parent kills it while that write's transaction
  is open).
* ``open_and_add``: waits for the start file, opens its store (the first open of a fresh
  schema runs the migration) and saves one record; or runs ``ferromem.postgres.migrate``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # tests/: _helpers

from _helpers import derived_record, store_records  # noqa: E402


def big_batch_ids(n: int) -> list[str]:
    return [f"big-{i}" for i in range(n)]


def small_batch_ids() -> list[str]:
    return [f"small-{i}" for i in range(10)]


def writer(args: dict) -> None:
    import ferromem

    store = ferromem.open(args["url"])
    store_records(store, [derived_record(i) for i in small_batch_ids()])
    print("ack", flush=True)
    sys.stdin.readline()
    recs = [derived_record(i) for i in big_batch_ids(args["big"])]
    print("saving", flush=True)
    store_records(store, recs)
    print("saved", flush=True)  # never reached: the parent kills this process first


def open_and_add(args: dict) -> None:
    import ferromem
    import ferromem.postgres

    deadline = time.monotonic() + 120
    while not os.path.exists(args["start_file"]):
        if time.monotonic() > deadline:
            raise SystemExit("the start file never appeared")
        time.sleep(0.001)
    if args.get("migrate_only"):
        print(json.dumps({"version": ferromem.postgres.migrate(args["url"])}), flush=True)
        return
    with ferromem.open(args["url"]) as store:
        store_records(store, [derived_record(args["id"])])
        print(json.dumps({"count": store.count()}), flush=True)


if __name__ == "__main__":
    {"writer": writer, "open_and_add": open_and_add}[sys.argv[1]](json.loads(sys.argv[2]))
