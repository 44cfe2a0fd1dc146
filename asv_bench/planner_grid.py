"""The planner against the fixed exact paths it chooses among, on the CPU, side by side.

For every point of a grid (batch 1/16/256, N 1k/10k/100k, dim 384/1536, filter none or
selective (1 record in 20), k 10/100) it times the same searches with the planner
deciding and with each fixed path forced through the same code (``cpu-one``: the
single-query kernels; ``cpu-batch``: the batch kernel), interleaved rep by rep, and prints
planner / best fixed path. The target (issue 15): no point more than 10% slower than the
best fixed path of the same run. All paths here are exact (recall 1.0: ``index="exact"``);
the graph's place is decided by the recall guard, measured by asv_bench/recall_guard.py.

    python asv_bench/planner_grid.py [--quick] [--out planner_grid.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import ferromem
import numpy as np

MODES = ("planner", "cpu-one", "cpu-batch")


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def time_modes(
    store: ferromem.Store, queries: np.ndarray, k: int, flt: dict, budget_s: float, chosen: dict[str, int]
) -> dict[str, float]:
    """Median ms per mode; `chosen` counts the paths the planner took when asked between
    reps (explain(), outside the timings)."""
    engine = store._engine
    samples: dict[str, list[float]] = {m: [] for m in MODES}
    start = time.perf_counter()
    reps = 0
    while reps < 7 or (time.perf_counter() - start < budget_s and reps < 50):
        order = MODES if reps % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            engine._force_route(None if mode == "planner" else mode)
            t = time.perf_counter()
            store.search(queries, k, **flt)
            samples[mode].append(time.perf_counter() - t)
        reps += 1
        if reps in (1, 3) or reps % 10 == 0:  # what the planner takes now (outside the timings)
            engine._force_route(None)
            path = store.explain(queries, k, **flt)["path"]
            chosen[path] = chosen.get(path, 0) + 1
    engine._force_route(None)
    return {m: statistics.median(v) * 1e3 for m, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N up to 10k, batch 1/16")
    ap.add_argument("--budget", type=float, default=0.6, help="seconds of timing per grid point and mode set")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    batches = (1, 16) if args.quick else (1, 16, 256)
    rng = np.random.default_rng(42)
    rows = []
    for dim in (384, 1536):
        for n in sizes:
            store = ferromem.open(cache_size=0, index="exact")
            data = unit(rng, n, dim)
            for s in range(0, n, 20_000):
                e = min(n, s + 20_000)
                store.add(
                    [f"r{i:06d}" for i in range(s, e)], data[s:e], scopes=[f"/s{i % 20}" for i in range(s, e)]
                )
            # The planner's constants are measured at the first batch (and cached on disk).
            store.search(unit(rng, 2, dim), 10)
            for batch in batches:
                queries = unit(rng, batch, dim)
                for flt_name, flt in (("none", {}), ("selective", {"scope": "/s3"})):
                    for k in (10, 100):
                        chosen: dict[str, int] = {}
                        ms = time_modes(
                            store, queries if batch > 1 else queries[0], k, flt, args.budget, chosen
                        )
                        chose = "+".join(sorted(chosen))
                        best = min(ms["cpu-one"], ms["cpu-batch"])
                        row = {
                            "dim": dim,
                            "n": n,
                            "batch": batch,
                            "filter": flt_name,
                            "k": k,
                            **{f"{m}_ms": round(v, 4) for m, v in ms.items()},
                            "planner_chose": chose,
                            "ratio_vs_best": round(ms["planner"] / best, 3),
                        }
                        rows.append(row)
                        print(
                            f"dim {dim:5d} N {n:7d} batch {batch:3d} filter {flt_name:9s} k {k:3d}: "
                            f"planner {ms['planner']:9.3f} ms ({chose:9s}) one {ms['cpu-one']:9.3f} "
                            f"batch {ms['cpu-batch']:9.3f}  ratio {row['ratio_vs_best']:.3f}",
                            flush=True,
                        )
            store.close()
    worst = max(rows, key=lambda r: r["ratio_vs_best"])
    summary = {
        "machine": f"{platform.machine()} {platform.processor()} cores={__import__('os').cpu_count()}",
        "isa": ferromem._core.simd_isa(),
        "points": len(rows),
        "worst_ratio_vs_best": worst["ratio_vs_best"],
        "worst_point": worst,
        "over_1_10": sum(r["ratio_vs_best"] > 1.10 for r in rows),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
