"""Recall guard benchmark: which path serves, and what it returns, with the guard on
(index="auto") against the graph forced (index="hnsw") and the exact scan (index="exact"),
on the same store and queries, in one run.

    python asv_bench/recall_guard.py                        # both data sets below
    python asv_bench/recall_guard.py --datasets random --n 30000 --json out.json

Data sets:
* ``random``: N x D random vectors (default 100,000 x 1536; no neighbourhood structure),
  Q queries, half near a stored record (the record plus noise, cosine about 0.9), half
  random. Exact top-10 by NumPy.
* ``minilm``: the shared MiniLM set (60,000 x 384 real text embeddings, its 1,000 queries
  and their exact top-10; FERROMEM_SHARED_DATA or <repo>/../shared/data). It holds fewer
  than the 2^25 values at which index="auto" builds a graph, so the run lowers
  ``graph_min_values`` to 0.

Per run: which path served (stats()["index"]["active"] after the run, and how many
queries the graph served), recall@10 over the run (a hit scores at least the true 10th
score - 1e-4), p50/p95 latency of Store.search, how many queries until the guard's verdict
settled (its last change; 0 when the bootstrap's verdict held), and the auditor's CPU
share: the guard's own account (busy time over its lifetime, the exact scans counted on
every core they may use) and the auditor thread's CPU time read from /proc (Linux; its
parallel scans on rayon's threads are not in that one). Timings are wall-clock: compare
ratios taken in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import ferromem
import numpy as np

K = 10


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_set(n: int, dim: int, queries: int, seed: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    half = queries // 2
    near = vectors[rng.choice(n, half, replace=False)] + 0.5 * rng.standard_normal(
        (half, dim), dtype=np.float32
    )
    q = np.concatenate([near, rng.standard_normal((queries - half, dim), dtype=np.float32)])
    unit = _unit(vectors)
    kth = np.empty(len(q), dtype=np.float32)
    for start in range(0, len(q), 100):
        scores = _unit(q[start : start + 100]) @ unit.T
        kth[start : start + 100] = -np.partition(-scores, K - 1, axis=1)[:, K - 1]
    return vectors, q, kth


def minilm_set() -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    folder = os.environ.get("FERROMEM_SHARED_DATA") or str(
        Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
    path = Path(folder) / "docs-minilm384.npz"
    if not path.is_file():
        return None
    with np.load(path) as a:
        return (
            a["passages"].astype(np.float32),
            a["queries"].astype(np.float32),
            a["queries_top10_scores"][:, K - 1],
        )


def auditor_cpu_seconds() -> float | None:
    """CPU time (user + system) of this process's auditor thread, from /proc; None
    elsewhere or before it starts."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    for task in tasks.iterdir():
        try:
            if (task / "comm").read_text().strip() == "ferromem-recall":
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / tick
        except OSError:  # the thread ended meanwhile
            continue
    return None


def run(store: ferromem.Store, queries: np.ndarray, kth: np.ndarray, unit: np.ndarray, track: bool) -> dict:
    latencies, hits, served_by_graph = [], 0, 0
    verdicts = []
    for qi, q in enumerate(queries):
        t = time.perf_counter()
        got = store.search(q, k=K)
        latencies.append(time.perf_counter() - t)
        rows = [int(i[1:]) for i in got.ids]
        hits += int(np.sum(unit[rows] @ _unit(q) >= kth[qi] - 1e-4))
        index = store.stats()["index"]
        served_by_graph += index["active"] == "hnsw"
        if track:
            verdicts.append(index["recall"]["verdict"])
    settled = 0
    for i in range(1, len(verdicts)):
        if verdicts[i] != verdicts[i - 1]:
            settled = i
    lat = np.array(latencies) * 1e3
    index = store.stats()["index"]
    return {
        "path": index["active"],
        "graph_served": served_by_graph,
        "recall@10": hits / (K * len(queries)),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "settled_after": settled if track else None,
        "verdict": index["recall"]["verdict"],
        "serving_ef": index["serving_ef"],
    }


def bench(
    name: str, vectors: np.ndarray, queries: np.ndarray, kth: np.ndarray, graph_min_values: int | None
) -> dict:
    n = len(vectors)
    with tempfile.TemporaryDirectory() as tmp:
        store = ferromem.open(os.path.join(tmp, "bench.ferro"), cache_size=0)
        if graph_min_values is not None:
            store.set_index("auto", graph_min_values=graph_min_values)
        for start in range(0, n, 10_000):
            store.add(
                [f"r{i}" for i in range(start, min(n, start + 10_000))], vectors[start : start + 10_000]
            )
        t = time.perf_counter()
        store.wait_for_index()
        built = time.perf_counter() - t
        recall = store.stats()["index"]["recall"]
        out: dict = {
            "dataset": name,
            "n": n,
            "dim": vectors.shape[1],
            "queries": len(queries),
            "build_and_bootstrap_s": built,
            "bootstrap_ms": recall["bootstrap_ms"],
            "bootstrap_verdict": recall["verdict"],
        }
        unit = _unit(vectors)
        evaluated0 = recall["evaluated"]
        cpu0, wall0 = auditor_cpu_seconds() or 0.0, time.perf_counter()
        out["guard"] = run(store, queries, kth, unit, track=True)
        cpu1, wall1 = auditor_cpu_seconds(), time.perf_counter()
        recall = store.stats()["index"]["recall"]
        out["guard"]["ladder"] = recall["ladder"]
        out["guard"]["exact_ms_guard"] = recall["exact_ms"]
        out["guard"]["evaluated_live"] = recall["evaluated"] - evaluated0
        out["guard"]["offered"] = recall["offered"]
        out["guard"]["dropped"] = recall["dropped"]
        out["guard"]["auditor_share_own_account"] = recall["auditor_share"]
        out["guard"]["auditor_thread_cpu_share"] = None if cpu1 is None else (cpu1 - cpu0) / (wall1 - wall0)
        store.set_index("hnsw")
        out["hnsw"] = run(store, queries, kth, unit, track=False)
        store.set_index("exact")
        out["exact"] = run(store, queries, kth, unit, track=False)
        store.close()
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| data | run | path | graph served | recall@10 | p50 ms | p95 ms | verdict settled after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for run_name, label in (("guard", "auto (guard)"), ("hnsw", "hnsw (forced)"), ("exact", "exact")):
            x = r[run_name]
            settled = "" if x["settled_after"] is None else f"{x['settled_after']} queries"
            lines.append(
                f"| {r['dataset']} {r['n']}x{r['dim']} | {label} | {x['path']} | {x['graph_served']}/{r['queries']} "
                f"| {x['recall@10']:.3f} | {x['p50_ms']:.2f} | {x['p95_ms']:.2f} | {settled} |"
            )
    lines.append("")
    for r in results:
        g = r["guard"]
        lines.append(
            f"- {r['dataset']}: build + bootstrap {r['build_and_bootstrap_s']:.1f} s, bootstrap "
            f"{r['bootstrap_ms']:.0f} ms (verdict {r['bootstrap_verdict']}); guard's exact {g['exact_ms_guard']:.2f} ms; "
            f"auditor share {g['auditor_share_own_account']:.3f} (own account), "
            f"{g['auditor_thread_cpu_share'] if g['auditor_thread_cpu_share'] is None else round(g['auditor_thread_cpu_share'], 4)} "
            f"(its thread's CPU over the run); samples offered {g['offered']}, audited {g['evaluated_live']}, "
            f"dropped {g['dropped']}"
        )
        lines.append(
            "  ladder: "
            + ", ".join(
                f"ef {x['ef']}: {x['mean']:.3f} +- {x['stderr']:.3f} ({x['samples']}), {x['graph_ms']:.2f} ms"
                for x in g["ladder"]
                if x["mean"] is not None
            )
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="random,minilm")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    results = []
    for name in args.datasets.split(","):
        if name == "random":
            vectors, queries, kth = random_set(args.n, args.dim, args.queries)
            # index="auto" builds the graph at its default size (2^25 values) or above;
            # smaller runs lower it so that there is a graph to judge.
            lower = 0 if args.n * args.dim < 2**25 else None
            results.append(bench("random", vectors, queries, kth, lower))
        elif name == "minilm":
            data = minilm_set()
            if data is None:
                print("minilm: the shared data set is absent, skipped", file=sys.stderr)
                continue
            results.append(bench("minilm", *data, graph_min_values=0))
        else:
            parser.error(f"unknown data set {name!r}")
        print(table(results[-1:]), flush=True)
    print()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
