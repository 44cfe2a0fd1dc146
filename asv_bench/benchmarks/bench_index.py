"""The graph index on real embeddings, f16 and int8 precision, and coalesced concurrent searches.

The real-embedding benchmarks read the shared MiniLM set (FERROMEM_SHARED_DATA, else
<repo>/../shared/data); without it they are skipped.
"""

import os
import threading
import time
from pathlib import Path

import numpy as np

from .common import build_store, unit_rows

N_REAL = 20_000


def _real_data():
    configured = os.environ.get("FERROMEM_SHARED_DATA")
    folder = Path(configured) if configured else Path(__file__).resolve().parents[3] / "shared" / "data"
    npz = folder / "docs-minilm384.npz"
    if not npz.is_file():
        raise NotImplementedError(f"{npz} not found: set FERROMEM_SHARED_DATA")  # asv skips
    with np.load(npz) as arrays:
        return arrays["passages"][:N_REAL].astype(np.float32), arrays["queries"].astype(np.float32)


class GraphSearchRealEmbeddings:
    """HNSW on 20,000 MiniLM passages: latency and recall@10 by ef_search."""

    params = [[32, 64, 96, 128]]
    param_names = ["ef_search"]
    timeout = 900
    number = 50

    def setup_cache(self):
        import ferromem

        passages, queries = _real_data()
        path = os.path.abspath("minilm-20k.ferro")
        with ferromem.open(path, index="exact") as store:
            store.add([str(i) for i in range(len(passages))], passages)
        unit = passages / np.linalg.norm(passages, axis=1, keepdims=True)
        q_unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        truth = q_unit @ unit.T
        cut = np.sort(truth, axis=1)[:, -10] - 1e-4
        return path, queries, truth, cut

    def setup(self, cache, ef):
        import ferromem

        path, self.queries, self.truth, self.cut = cache
        started = time.perf_counter()
        self.store = ferromem.open(path, index="hnsw", ef_search=ef, cache_size=0)
        self.store.wait_for_index()
        self.build_s = time.perf_counter() - started
        self.i = 0

    def teardown(self, cache, ef):
        self.store.close()

    def time_search_top10(self, cache, ef):
        self.i = (self.i + 1) % len(self.queries)
        self.store.search(self.queries[self.i], 10)

    def track_recall_at_10(self, cache, ef):
        hits = 0
        for qi in range(0, len(self.queries), 5):
            ids = self.store.search(self.queries[qi], 10).ids.astype(np.int64)
            hits += int(np.count_nonzero(self.truth[qi, ids] >= self.cut[qi]))
        return hits / (10 * len(range(0, len(self.queries), 5)))

    track_recall_at_10.unit = "recall"

    def track_build_seconds(self, cache, ef):
        return self.build_s

    track_build_seconds.unit = "seconds"


class Precision:
    """f32 against f16 and int8 (re-ranked from the file) at 20,000 x 1536: search time,
    a batch of 64 queries, and engine memory."""

    params = [["f32", "f16", "int8"]]
    param_names = ["precision"]
    timeout = 600

    def setup_cache(self):
        return build_store(os.path.abspath("precision-20k.ferro"), 20_000, 1536)

    def setup(self, path, precision):
        import ferromem

        self.store = ferromem.open(path, precision=precision, index="exact", cache_size=0)
        self.q = unit_rows(np.random.default_rng(3), 1, 1536)[0]
        self.batch = unit_rows(np.random.default_rng(4), 64, 1536)

    def teardown(self, path, precision):
        self.store.close()

    def time_search_top10(self, path, precision):
        self.store.search(self.q, 10)

    def time_search_batch64_top10(self, path, precision):
        self.store.search(self.batch, 10)

    def track_memory_bytes_per_record(self, path, precision):
        return self.store.stats()["memory_bytes"] / self.store.count()

    track_memory_bytes_per_record.unit = "bytes"


class CoalescedSearch:
    """64 single-query searches of a 20,000 x 1536 store: one thread after another, or
    from 8 threads at once (coalesced into shared scans)."""

    timeout = 600
    number = 1

    def setup_cache(self):
        return build_store(os.path.abspath("coalesce-20k.ferro"), 20_000, 1536)

    def setup(self, path):
        import ferromem

        self.store = ferromem.open(path, index="exact", cache_size=0)
        self.queries = unit_rows(np.random.default_rng(4), 64, 1536)

    def teardown(self, path):
        self.store.close()

    def time_64_searches_one_thread(self, path):
        for q in self.queries:
            self.store.search(q, 10)

    def time_64_searches_8_threads(self, path):
        def run(part):
            for q in part:
                self.store.search(q, 10)

        threads = [threading.Thread(target=run, args=(self.queries[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
