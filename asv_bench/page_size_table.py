"""SQLite page size against WAL growth per save and disk per record (issue 13, section 5).

    python asv_bench/page_size_table.py [--records 2000]

For each page size (4, 8, 16, 32 KiB) and dimension (384, 1536): a new store file is
created with that page size (ferromem keeps an existing file's page size), bulk-loaded,
closed (which checkpoints), reopened; then single saves are timed and the WAL growth
each one causes is measured, and the disk per record of the checkpointed file. Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time

import ferromem
import numpy as np


def measure(page: int, dim: int, records: int, saves: int = 40) -> dict:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.ferro")
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA page_size={page}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
        rows = rng.standard_normal((records, dim)).astype(np.float32)
        meta = [{"kind": "fact", "n": i} for i in range(records)]
        with ferromem.open(path) as store:
            for start in range(0, records, 500):
                end = min(records, start + 500)
                store.add(
                    [f"r{i}" for i in range(start, end)],
                    rows[start:end],
                    contents=[f"memory number {i} " * 8 for i in range(start, end)],
                    scopes="/org/team/agent",
                    categories=["fact"],
                    metadata=meta[start:end],
                )
        disk = os.path.getsize(path)
        wal = path + "-wal"
        growth, times = [], []
        with ferromem.open(path) as store:
            extra = rng.standard_normal((saves, dim)).astype(np.float32)
            for i in range(saves):
                before = os.path.getsize(wal) if os.path.exists(wal) else 0
                t = time.perf_counter()
                store.add(
                    f"s{i}",
                    extra[i],
                    contents="a new memory " * 8,
                    scopes="/org/team/agent",
                    categories=["fact"],
                    metadata={"kind": "x"},
                )
                times.append(time.perf_counter() - t)
                after = os.path.getsize(wal)
                if after >= before:  # a checkpoint that restarted the WAL is not growth
                    growth.append(after - before)
        return {
            "page": page,
            "dim": dim,
            "disk_per_record": disk / records,
            "vector_bytes": dim * 4,
            "wal_per_save": statistics.median(growth),
            "save_p50_ms": statistics.median(times) * 1e3,
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=2000)
    args = parser.parse_args()
    print("| page | dim | disk per record (x vector bytes) | WAL bytes per save | save p50 ms |")
    print("|---|---|---|---|---|")
    for dim in (384, 1536):
        for page in (4096, 8192, 16384, 32768):
            r = measure(page, dim, args.records)
            print(
                f"| {page // 1024} KiB | {dim} | {r['disk_per_record']:.0f} "
                f"({r['disk_per_record'] / r['vector_bytes']:.2f}x) | "
                f"{r['wal_per_save']:.0f} | {r['save_p50_ms']:.2f} |"
            )


if __name__ == "__main__":
    main()
