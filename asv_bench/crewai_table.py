"""CrewAI adapter benchmark: the demo's CrewAI Memory workload on ferromem and on CrewAI's
default storage (LanceDB) at several sizes, in one run, as one markdown table per size.

    python asv_bench/crewai_table.py                      # 1k and 10k memories, 1536-dim
    python asv_bench/crewai_table.py --sizes 1000 --dim 384 --markdown out.md

It also splits ferromem's storage.search into the engine's search and the building of
CrewAI MemoryRecord objects for the results, to show the conversion does not dominate.
Timings are wall-clock: compare the ratios taken in one run.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

import ferromem
import numpy as np
from ferromem.crewai import demo


def record_building_share(n: int, dim: int, queries: int = 200) -> dict[str, float]:
    """p50 of MemoryStorage.search against the bare Store.search it wraps (same store,
    same queries, limit 10): the difference is filter handling and MemoryRecord building."""
    from crewai.memory.types import MemoryRecord
    from ferromem.crewai import MemoryStorage

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        # Cache off: the same query goes to both calls, and the second would be a cache hit.
        storage = MemoryStorage(store=ferromem.open(os.path.join(tmp, "s.ferro"), cache_size=0))
        storage.save(
            [
                MemoryRecord(
                    id=f"r{i}", content=f"memory {i}", scope=f"/s/{i % 10}", categories=["c"], embedding=v
                )
                for i, v in enumerate(vectors.tolist())
            ]
        )
        probes = rng.standard_normal((queries, dim)).astype(np.float32)
        bare, wrapped = [], []
        for q in probes:
            ql = q.tolist()
            t = time.perf_counter()
            storage.store.search(q, 10, min_score=0.0)
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            storage.search(ql, limit=10)
            wrapped.append(time.perf_counter() - t)
        storage.store.close()
    b, w = np.median(bare) * 1e3, np.median(wrapped) * 1e3
    return {"store_search_ms": b, "memorystorage_search_ms": w, "share": (w - b) / w}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--recalls", type=int, default=100)
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = parser.parse_args()
    out = io.StringIO()

    def write(line: str) -> None:
        print(line, flush=True)
        out.write(line + "\n")

    for n in (int(s) for s in args.sizes.split(",")):
        result = demo.run(n=n, dim=args.dim, recalls=args.recalls)
        demo.print_report(result, write)
        share = record_building_share(n, args.dim)
        write(
            f"\nMemoryStorage.search p50 {share['memorystorage_search_ms']:.3f} ms = Store.search "
            f"{share['store_search_ms']:.3f} ms + conversion to MemoryRecord "
            f"({100 * share['share']:.0f}% of the call)\n"
        )
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("```\n" + out.getvalue() + "```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
