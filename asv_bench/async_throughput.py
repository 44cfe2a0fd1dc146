"""Throughput of 1,000 concurrent asyncio tasks on one store: the native async API
(``ferromem.AsyncStore``) against the sync store driven by ``asyncio.to_thread`` (what the
CrewAI adapters did before it), both in one run, with the ratio.

    python asv_bench/async_throughput.py
    python asv_bench/async_throughput.py --tasks 1000 --rounds 5 --save-fraction 0.2

Two workloads, each on its own store file (SQLite, durability "normal", result cache off so
every search scans): 20,000 MiniLM passages (384 dims, real embeddings from the shared
``docs-minilm384.npz``: $FERROMEM_SHARED_DATA, else <repo>/../shared/data; skipped when
absent) searched with its 1,000 real queries, and 10,000 random 1536-dim vectors. Each
round runs ``--tasks`` tasks at once, a ``--save-fraction`` of them saving a new record and
the rest searching (k=10); the two ways alternate round by round, each round on a fresh
event loop, and the table gives the median round's ops/s of each, the ratio, and the most
threads a round added to the process: OS threads (``/proc/self/task``, where the runtime's
pool threads count) and Python threads (``threading.active_count()``).

Timings are wall-clock on whatever machine runs it: compare ratios taken in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def minilm(n: int) -> tuple[np.ndarray, np.ndarray] | None:
    folder = os.environ.get("FERROMEM_SHARED_DATA") or str(
        Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
    path = Path(folder) / "docs-minilm384.npz"
    if not path.is_file():
        return None
    with np.load(path) as arrays:
        return arrays["passages"][:n].astype(np.float32), arrays["queries"].astype(np.float32)


def random_set(n: int, dim: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1536)
    return (
        rng.standard_normal((n, dim), dtype=np.float32),
        rng.standard_normal((queries, dim), dtype=np.float32),
    )


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


async def one_round(
    how: str, store, face, queries: np.ndarray, fresh: np.ndarray, tasks: int, saves: int, tag: str
) -> tuple[float, int, int]:
    """(seconds for all the tasks, the most OS threads and Python threads seen meanwhile)."""
    save_every = tasks // saves if saves else tasks + 1
    peak, py_peak = thread_count(), threading.active_count()
    running = True

    async def sample() -> None:
        nonlocal peak, py_peak
        while running:
            peak, py_peak = max(peak, thread_count()), max(py_peak, threading.active_count())
            await asyncio.sleep(0.002)

    def call(i: int):
        if i % save_every == 0 and i // save_every < saves:
            record_id, vector = f"{tag}-{i}", fresh[i % len(fresh)]
            if how == "native":
                return face.upsert(record_id, vector)
            return asyncio.to_thread(store.upsert, record_id, vector)
        query = queries[i % len(queries)]
        if how == "native":
            return face.search(query, 10)
        return asyncio.to_thread(store.search, query, 10)

    sampler = asyncio.ensure_future(sample())
    start = time.perf_counter()
    await asyncio.gather(*(call(i) for i in range(tasks)))
    seconds = time.perf_counter() - start
    running = False
    await sampler
    return seconds, peak, py_peak


def measure(name: str, vectors: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> dict:
    import ferromem

    saves = round(args.tasks * args.save_fraction)
    rng = np.random.default_rng(7)
    fresh = rng.standard_normal((max(saves, 1), vectors.shape[1]), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="ferromem-async-bench-") as tmp:
        store = ferromem.open(os.path.join(tmp, "bench.ferro"), cache_size=0, index="exact")
        for start in range(0, len(vectors), 5000):
            chunk = vectors[start : start + 5000]
            store.add([f"r{start + i}" for i in range(len(chunk))], chunk)
        face = ferromem.AsyncStore(store)
        seconds: dict[str, list[float]] = {"native": [], "to_thread": []}
        # Threads a way adds to the process at most (OS threads; Python threads).
        added = {"native": (0, 0), "to_thread": (0, 0)}

        async def warm() -> None:
            await face.search(queries[0], 10)  # the runtime's pool, the planner

        asyncio.run(warm())
        # Each round runs on a loop of its own, so asyncio's default executor (the threads
        # of asyncio.to_thread) exists only in the to_thread rounds, as in a program that
        # uses one way.
        for r in range(args.rounds):
            for how in ("native", "to_thread") if r % 2 == 0 else ("to_thread", "native"):
                before = (thread_count(), threading.active_count())
                took, peak, py_peak = asyncio.run(
                    one_round(how, store, face, queries, fresh, args.tasks, saves, f"{how}{r}")
                )
                seconds[how].append(took)
                added[how] = (
                    max(added[how][0], peak - before[0]),
                    max(added[how][1], py_peak - before[1]),
                )
        store.close()
    row = {"workload": name, "records": len(vectors), "dim": vectors.shape[1], "saves": saves}
    for how in ("native", "to_thread"):
        row[f"{how}_ops"] = args.tasks / statistics.median(seconds[how])
        row[f"{how}_threads"] = "+{} (+{} Python)".format(*added[how])
    row["ratio"] = row["native_ops"] / row["to_thread_ops"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="concurrent tasks per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per way (alternating)")
    parser.add_argument("--save-fraction", type=float, default=0.2, help="share of tasks that save")
    parser.add_argument("--minilm-records", type=int, default=20_000)
    parser.add_argument("--random-records", type=int, default=10_000)
    args = parser.parse_args()
    workloads = []
    real = minilm(args.minilm_records)
    if real is None:
        print("MiniLM set absent (docs-minilm384.npz): skipping the 384-dim workload", file=sys.stderr)
    else:
        workloads.append(("MiniLM 384 (real)", *real))
    workloads.append(("random 1536", *random_set(args.random_records, 1536, 1000)))
    print(
        f"{args.tasks} concurrent tasks per round, {args.save_fraction:.0%} saves, k=10, "
        f"median of {args.rounds} rounds; cpu count {os.cpu_count()}"
    )
    header = (
        f"{'workload':<20} {'records':>8} {'native ops/s':>13} {'to_thread ops/s':>16} "
        f"{'ratio':>6}  {'threads, native':<20} {'threads, to_thread':<20}"
    )
    print(header)
    print("-" * len(header))
    for name, vectors, queries in workloads:
        row = measure(name, vectors, queries, args)
        print(
            f"{row['workload']:<20} {row['records']:>8} {row['native_ops']:>13.0f} "
            f"{row['to_thread_ops']:>16.0f} {row['ratio']:>5.2f}x  {row['native_threads']:<20} "
            f"{row['to_thread_threads']:<20}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
