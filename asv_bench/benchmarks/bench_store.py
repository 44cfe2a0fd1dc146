"""Store operations on the embedded default (SQLite-backed) store, 1536-dim vectors."""

import os

import numpy as np

from .common import SCOPES, build_store, unit_rows

DIM = 1536
SIZES = [1_000, 10_000]


class StoreSearch:
    params = [SIZES, ["none", "scope", "categories", "metadata"]]
    param_names = ["records", "filter"]
    timeout = 600

    def setup_cache(self):
        paths = {}
        for n in SIZES:
            paths[n] = build_store(os.path.abspath(f"store-{n}.ferro"), n, DIM)
        return paths

    def setup(self, paths, n, filt):
        import ferromem

        # The same query runs every time: with the cache on, this would time cache hits.
        self.store = ferromem.open(paths[n], cache_size=0)
        self.q = unit_rows(np.random.default_rng(1), 1, DIM)[0]
        self.kw = {
            "none": {},
            "scope": {"scope": "/org/team3"},
            "categories": {"categories": ["cat2", "cat5"]},
            "metadata": {"where": {"kind": "decision"}},
        }[filt]

    def teardown(self, paths, n, filt):
        self.store.close()

    def time_search_top10(self, paths, n, filt):
        self.store.search(self.q, 10, **self.kw)


class StoreSearchCached:
    """A repeated search answered by the result cache."""

    params = [SIZES]
    param_names = ["records"]
    timeout = 600

    def setup_cache(self):
        return StoreSearch.setup_cache(self)

    def setup(self, paths, n):
        import ferromem

        self.store = ferromem.open(paths[n])
        self.q = unit_rows(np.random.default_rng(1), 1, DIM)[0]
        self.store.search(self.q, 10)

    def teardown(self, paths, n):
        self.store.close()

    def time_search_top10_cache_hit(self, paths, n):
        self.store.search(self.q, 10)


class StoreSave:
    params = [SIZES]
    param_names = ["records"]
    timeout = 600

    def setup_cache(self):
        return {n: build_store(os.path.abspath(f"save-{n}.ferro"), n, DIM) for n in SIZES}

    def setup(self, paths, n):
        import ferromem

        self.store = ferromem.open(paths[n])
        self.v = unit_rows(np.random.default_rng(2), 1, DIM)[0]
        self.i = 0

    def teardown(self, paths, n):
        self.store.close()

    def time_save_one(self, paths, n):
        self.i += 1
        self.store.upsert(f"bench-{self.i % 1000}", self.v, scopes=SCOPES[self.i % len(SCOPES)])

    def track_disk_bytes_per_record(self, paths, n):
        return self.store.stats()["disk_bytes"] / max(1, self.store.count())

    track_disk_bytes_per_record.unit = "bytes"


class StoreOpen:
    """Open an existing store and answer its first search, read from the SQLite file or
    mapped from its store image (``fast_open=True``), at f32 and int8 precision (each
    precision keeps its own copy of the file: a store has one image, of one precision)."""

    params = [[10_000, 100_000], [False, True], ["f32", "int8"]]
    param_names = ["records", "fast_open", "precision"]
    timeout = 1800
    number = 1
    repeat = (3, 10, 120.0)

    def setup_cache(self):
        import shutil

        import ferromem

        paths = {}
        for n in self.params[0]:
            f32 = build_store(os.path.abspath(f"open-{n}.ferro"), n, DIM)
            int8 = os.path.abspath(f"open-{n}-int8.ferro")
            shutil.copyfile(f32, int8)
            paths[n, "f32"], paths[n, "int8"] = f32, int8
            for precision in self.params[2]:
                with ferromem.open(paths[n, precision], precision=precision, fast_open=True):
                    pass  # writes the image
        return paths

    def setup(self, paths, n, fast_open, precision):
        self.q = unit_rows(np.random.default_rng(3), 1, DIM)[0]

    def time_open_and_first_search(self, paths, n, fast_open, precision):
        import ferromem

        store = ferromem.open(paths[n, precision], index="exact", precision=precision, fast_open=fast_open)
        store.search(self.q, 10)
        # Timed too: closing a store that did not change writes nothing.
        store.close()
