"""Open time of a store from its image (fast_open=True), side by side for several builds.

    python asv_bench/image_open.py                          # this build, 100k x 1536, f32 and int8
    python asv_bench/image_open.py --build before=/path/to/other/site --build after=

Each ``--build LABEL=PYTHONPATH`` names a ferromem to import (an empty path: the one this
interpreter imports). For each precision and build, a store of random vectors is written
once (with its image: the formats of two builds may differ), then each build opens its
store from its image in a fresh process, in turns, ``--reps`` times; the table gives the
median open time and the first search after it (which pages in what the open did not).
The image files stay in the page cache between runs (the machine's memory must hold
them): this is the warm open, the common case of a process restarting.

Timings are wall-clock on whatever machine runs it: compare builds within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def worker_create(path: str, rows: int, dim: int, precision: str) -> None:
    import ferromem
    import numpy as np

    rng = np.random.default_rng(1)
    with ferromem.open(path, precision=precision, fast_open=True, index="exact") as store:
        for start in range(0, rows, 5000):
            n = min(5000, rows - start)
            store.add(
                [f"r{i}" for i in range(start, start + n)], rng.standard_normal((n, dim), dtype=np.float32)
            )


def worker_open(path: str, precision: str, fast_open: bool = True) -> None:
    import ferromem
    import numpy as np

    t0 = time.perf_counter()
    store = ferromem.open(path, precision=precision, fast_open=fast_open, index="exact", cache_size=0)
    t1 = time.perf_counter()
    query = np.random.default_rng(2).standard_normal(store.dim, dtype=np.float32)
    store.search(query, k=10)
    t2 = time.perf_counter()
    used = store.stats()["fast_open"]["opened_from_image"] or not fast_open
    store.close()
    print(json.dumps({"open_ms": (t1 - t0) * 1e3, "first_search_ms": (t2 - t1) * 1e3, "from_image": used}))


def run(build_path: str, *args: str) -> str:
    env = dict(os.environ)
    if build_path:
        env["PYTHONPATH"] = build_path + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, __file__, *args], env=env, check=True, capture_output=True, text=True
    )
    return out.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--precisions", default="f32,int8")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--build", action="append", default=[], help="LABEL=PYTHONPATH (repeatable)")
    p.add_argument(
        "--plain",
        action="store_true",
        help="also time the first build's open without fast_open (rows read from SQLite)",
    )
    p.add_argument("--dir", default=None, help="where the stores go (default: a temporary folder)")
    p.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        kind, path, precision, *rest = a.worker
        if kind == "create":
            worker_create(path, int(rest[0]), int(rest[1]), precision)
        else:
            worker_open(path, precision, kind == "open")
        return
    builds = [tuple(b.split("=", 1)) for b in a.build] or [("this", "")]
    folder = a.dir or tempfile.mkdtemp(prefix="image-open-")
    print(f"{a.rows:,} x {a.dim}, {a.reps} opens per build, stores in {folder}")
    print("| precision | build | image MB | open p50 ms (min-max) | first search p50 ms |")
    print("|---|---|---|---|---|")
    for precision in a.precisions.split(","):
        paths = {}
        for label, site in builds:
            path = os.path.join(folder, f"{label}-{precision}.ferro")
            if not os.path.exists(path + ".image"):
                run(site, "--worker", "create", path, precision, str(a.rows), str(a.dim))
            paths[label] = path
        runs = [(label, site, "open", paths[label]) for label, site in builds]
        if a.plain:
            label, site = builds[0]
            runs.append((f"{label}, fast_open=False", site, "plain", paths[label]))
        samples: dict[str, list[dict]] = {r[0]: [] for r in runs}
        for _ in range(a.reps):
            for label, site, kind, path in runs:  # in turns, so drift hits every build alike
                r = json.loads(run(site, "--worker", kind, path, precision))
                if not r["from_image"]:
                    raise SystemExit(f"{label} did not open {precision} from its image")
                samples[label].append(r)
        for label, _, kind, path in runs:
            opens = [s["open_ms"] for s in samples[label]]
            first = statistics.median(s["first_search_ms"] for s in samples[label])
            mb = os.path.getsize(path + ".image") / 1e6 if kind == "open" else 0
            print(
                f"| {precision} | {label} | {mb:,.0f} | {statistics.median(opens):,.0f} ({min(opens):,.0f}-{max(opens):,.0f}) | {first:,.0f} |"
            )


if __name__ == "__main__":
    main()
