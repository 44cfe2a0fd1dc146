"""Shared store builders for the asv benchmarks (built once per size by setup_cache)."""

import numpy as np

SCOPES = [f"/org/team{t}/agent{a}" for t in range(10) for a in range(5)]
CATEGORIES = [f"cat{i}" for i in range(10)]
KINDS = ["fact", "decision", "preference", "event", "task"]


def unit_rows(rng, n, dim):
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def build_store(path, n, dim, seed=0):
    import ferromem

    rng = np.random.default_rng(seed)
    with ferromem.open(path) as store:
        for start in range(0, n, 2000):
            m = min(2000, n - start)
            idx = range(start, start + m)
            store.add(
                [f"r{i}" for i in idx],
                unit_rows(rng, m, dim),
                contents=[f"memory number {i}" for i in idx],
                scopes=[SCOPES[i % len(SCOPES)] for i in idx],
                categories=[[CATEGORIES[i % len(CATEGORIES)]] for i in idx],
                metadata=[{"kind": KINDS[i % len(KINDS)], "turn": i} for i in idx],
            )
    return path
