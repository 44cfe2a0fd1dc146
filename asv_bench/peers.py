"""ferromem against its peers, one workload, one run: a table of ratios and one plot per figure.

    python asv_bench/peers.py --quick                  # small sizes, a few minutes
    python asv_bench/peers.py                          # full size (long: see docs/benchmarks.md)
    python asv_bench/peers.py --only b,c --n 50000 --dim 768 --out build/peers

Figures (each one row group of the table in <out>/benchmarks.md and <out>/img/peers-<x>.png):

  a  machine limits measured in this run: memory bandwidth and sgemm GFLOP/s (numpy)
  b  one query, exact top-10 over N x D random unit vectors: ferromem, numpy, faiss flat
  c  a batch of 256 queries over the same matrix: queries/s and fraction of sgemm peak
  d  ANN on real MiniLM embeddings (docs-minilm384.npz): build, latency, recall@10
  e  ANN on N x D random unit vectors: the same columns, ground truth by numpy
  f  through CrewAI's StorageBackend: ferromem MemoryStorage, LanceDB, Qdrant Edge
  g  figure e at a second, larger shape (--g-n x --g-dim, default 1,000,000 x 384); not
     in the default run (its graph builds take about half an hour here): --only g

Every peer is optional: one that is not installed (or fails) gives a "skipped: reason"
row. Ratios are peer time / ferromem time, both from this run on this machine. The
markdown goes between ``<!-- peers:begin -->`` and ``<!-- peers:end -->`` in
<out>/benchmarks.md (created if missing); each figure has its own sub-block, so a run
with --only replaces those figures and keeps the others.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import importlib
import importlib.metadata
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# CrewAI (and Chroma) would otherwise try the network for telemetry and traces.
for _name, _value in (
    ("CREWAI_TRACING_ENABLED", "false"),
    ("CREWAI_DISABLE_TELEMETRY", "true"),
    ("OTEL_SDK_DISABLED", "true"),
    ("ANONYMIZED_TELEMETRY", "False"),
):
    os.environ.setdefault(_name, _value)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 10
BATCH = 256
EF_SWEEP = (16, 32, 64, 128)
FERRO_EF_REF = 64  # the ANN reference row (ferromem.open's default ef_search is 96, between 64 and 128)
MINILM = "docs-minilm384.npz"


# =========================================================================== helpers


class Skip(Exception):
    """A peer that cannot run here; its message is the reason shown in the table."""


def timed(
    fn: Callable[[Any], Any],
    inputs: Sequence[Any],
    *,
    warmup: int = 2,
    budget_s: float | None = None,
    min_runs: int = 5,
) -> tuple[np.ndarray, list[Any]]:
    """The one timing loop: ``fn(x)`` for each input after ``warmup`` untimed calls, stopping
    early once ``budget_s`` seconds have passed and ``min_runs`` calls were timed. Returns
    (seconds per call, outputs)."""
    for x in list(inputs[:warmup]):
        fn(x)
    seconds, outputs = [], []
    start = time.perf_counter()
    for x in inputs:
        t = time.perf_counter()
        outputs.append(fn(x))
        seconds.append(time.perf_counter() - t)
        if budget_s is not None and len(seconds) >= min_runs and time.perf_counter() - start > budget_s:
            break
    return np.asarray(seconds), outputs


def p(seconds: np.ndarray, q: float) -> float:
    """Percentile in milliseconds."""
    return float(np.percentile(seconds, q) * 1e3)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def exact_topk(
    vectors: np.ndarray, queries: np.ndarray, k: int = K, block: int = BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (ids best first, their scores) by numpy gemm, in query blocks."""
    ids = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for s in range(0, len(queries), block):
        sim = queries[s : s + block] @ vectors.T
        part = np.argpartition(-sim, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1, kind="stable")
        ids[s : s + block] = np.take_along_axis(part, order, 1)
        scores[s : s + block] = np.take_along_axis(sim, ids[s : s + block], 1)
    return ids, scores


def numpy_topk(sim: np.ndarray, k: int) -> np.ndarray:
    """The top-k row indices of a score vector (or of each row of a matrix), best first."""
    if sim.ndim == 1:
        top = np.argpartition(-sim, k)[:k]
        return top[np.argsort(-sim[top])]
    top = np.argpartition(-sim, k, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(sim, top, 1), axis=1), 1)


def recall_at_k(
    found: Sequence[np.ndarray], vectors: np.ndarray, queries: np.ndarray, kth_scores: np.ndarray, k: int = K
) -> float:
    """recall@k with the data README's tie rule: a returned id is a hit when its true score
    is at least the exact k-th score minus 1e-4 (each id counted once, at most k)."""
    hits = 0
    for ids, q, kth in zip(found, queries, kth_scores):
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        ids = ids[(ids >= 0) & (ids < len(vectors))]
        if len(ids):
            hits += min(k, int(np.count_nonzero(vectors[ids] @ q >= kth - 1e-4)))
    return hits / (k * len(queries))


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def need(module: str, dist: str | None = None) -> Any:
    """Imports an optional peer's module, or raises Skip with the reason."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure skips the peer
        raise Skip(
            f"`{module}` not importable ({type(exc).__name__}: {exc}); pip install {dist or module}"
        ) from exc


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, (int, np.integer)):
        return f"{x:,}"
    if not np.isfinite(x):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.1f}"
    return f"{x:.{digits}g}"


def ratio(peer: float | None, ours: float | None) -> str:
    if peer is None or ours is None or not ours or not np.isfinite(peer) or not np.isfinite(ours):
        return "-"
    r = peer / ours
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# =========================================================================== data sets


@dataclass
class Dataset:
    """Vectors and queries (float32, unit rows) and the exact top-k truth of the queries."""

    name: str
    vectors: np.ndarray
    queries: np.ndarray
    truth: np.ndarray | None = None
    kth: np.ndarray | None = None

    def ensure_truth(self) -> None:
        if self.truth is None:
            self.truth, scores = exact_topk(self.vectors, self.queries)
            self.kth = scores[:, K - 1]

    @property
    def shape(self) -> str:
        n, d = self.vectors.shape
        return f"{n:,} x {d}"


def random_dataset(n: int, dim: int, queries: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(f"random {n:,} x {dim}", unit_rows(rng, n, dim), unit_rows(rng, queries, dim))


def minilm_dataset(data_dir: str, limit: int | None, queries: int | None) -> Dataset:
    path = os.path.join(data_dir, MINILM)
    if not os.path.exists(path):
        raise Skip(f"{MINILM} not found in the data directory (pass --data or FERROMEM_DATA)")
    z = np.load(path)
    vectors = z["passages"].astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # as the README's ground truth
    qs = z["queries"].astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    if queries:
        qs = qs[:queries]
    if limit and limit < len(vectors):  # a prefix is a representative sample; truth recomputed
        return Dataset(f"MiniLM {limit:,} x 384 (prefix)", vectors[:limit], qs)
    return Dataset(
        f"MiniLM {len(vectors):,} x 384",
        vectors,
        qs,
        z["queries_top10"][: len(qs)].astype(np.int64),
        z["queries_top10_scores"][: len(qs), K - 1],
    )


# =========================================================================== peers


class Peer:
    """The common interface: ``build(vectors)`` once, then ``search(q, k)`` (one query) and
    ``batch(qs, k)`` (a matrix). Both return the library's raw answer, so that the timing
    holds the library's own call; ``ids`` / ``batch_ids`` convert it to int row ids after.
    ``knobs`` are the search-width values an ANN sweep sets through ``tune``."""

    name = "?"
    params = ""
    knobs: tuple = (None,)

    def build(self, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def tune(self, knob: Any) -> None:
        pass

    def search(self, q: np.ndarray, k: int) -> Any:
        raise NotImplementedError

    def batch(self, qs: np.ndarray, k: int) -> Any:
        return [self.search(q, k) for q in qs]

    def ids(self, raw: Any) -> np.ndarray:
        return np.asarray(raw, dtype=np.int64).ravel()

    def batch_ids(self, raw: Any) -> list[np.ndarray]:
        return [self.ids(r) for r in raw]

    def close(self) -> None:
        pass


class NumpyPeer(Peer):
    name = "numpy"
    params = "gemv / gemm + argpartition"

    def build(self, vectors):
        self.m = vectors

    def search(self, q, k):
        return numpy_topk(self.m @ q, k)

    def batch(self, qs, k):
        return numpy_topk(qs @ self.m.T, k)


class FaissFlatPeer(Peer):
    name = "faiss IndexFlatIP"
    params = "exact, BLAS from 20 queries"

    def build(self, vectors):
        faiss = need("faiss", "faiss-cpu")
        # Recent faiss builds leave a batch of queries below 128,000 to a per-query SIMD
        # scan, ~10x slower than BLAS for the 256-query batch here: use BLAS from 20
        # queries on (faiss's long-standing default), its faster path.
        faiss.cvar.distance_compute_blas_threshold = 20
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def search(self, q, k):
        return self.index.search(q[None, :], k)[1]

    def batch(self, qs, k):
        return self.index.search(qs, k)[1]

    def batch_ids(self, raw):
        return list(raw)


class FaissHNSWPeer(Peer):
    name = "faiss IndexHNSWFlat"
    knobs = EF_SWEEP

    def build(self, vectors):
        faiss = need("faiss", "faiss-cpu")
        self.index = faiss.IndexHNSWFlat(vectors.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
        self.params = f"M=16, efConstruction={self.index.hnsw.efConstruction}, efSearch="
        self.index.add(vectors)

    def tune(self, knob):
        self.index.hnsw.efSearch = knob

    search, batch, batch_ids = FaissFlatPeer.search, FaissFlatPeer.batch, FaissFlatPeer.batch_ids


class USearchPeer(Peer):
    name = "usearch HNSW"
    knobs = EF_SWEEP

    def build(self, vectors):
        usearch = need("usearch.index", "usearch")
        self.index = usearch.Index(ndim=vectors.shape[1], metric="ip", dtype="f32", connectivity=16)
        self.params = f"f32, connectivity=16, expansion_add={self.index.expansion_add}, expansion_search="
        self.index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=os.cpu_count() or 1)

    def tune(self, knob):
        self.index.expansion_search = knob

    def search(self, q, k):
        return self.index.search(q, k)

    def batch(self, qs, k):
        return self.index.search(qs, k, threads=os.cpu_count() or 1)

    def ids(self, raw):
        return np.asarray(raw.keys, dtype=np.int64)

    def batch_ids(self, raw):
        return [np.asarray(row, dtype=np.int64) for row in raw.keys]


class ChromaPeer(Peer):
    name = "ChromaDB"

    def build(self, vectors):
        chromadb = need("chromadb")
        from chromadb.config import Settings

        self.tmp = tempfile.mkdtemp(prefix="peers-chroma-")
        self.client = chromadb.PersistentClient(path=self.tmp, settings=Settings(anonymized_telemetry=False))
        # Default HNSW settings; its default space is l2, whose ranking equals cosine's on
        # unit vectors.
        self.col = self.client.create_collection("bench", embedding_function=None)
        hnsw = (getattr(self.col, "configuration", None) or {}).get("hnsw") or {}
        self.params = (
            "default: "
            + ", ".join(
                f"{k}={hnsw[k]}" for k in ("max_neighbors", "ef_construction", "ef_search") if k in hnsw
            )
        ) or "default"
        step = self.client.get_max_batch_size()
        for s in range(0, len(vectors), step):
            self.col.add(
                ids=[str(i) for i in range(s, min(s + step, len(vectors)))], embeddings=vectors[s : s + step]
            )

    def search(self, q, k):
        return self.col.query(query_embeddings=q[None, :], n_results=k, include=[])["ids"][0]

    def batch(self, qs, k):
        return self.col.query(query_embeddings=qs, n_results=k, include=[])["ids"]

    def close(self):
        self.col = self.client = None
        gc.collect()
        shutil.rmtree(self.tmp, ignore_errors=True)


# Store files of the f32 ferromem peers, by data set: a reduced-precision peer opens the
# same file (a second Store, as a second process would) instead of writing its own.
_FERRO_FILES: dict[int, str] = {}


class FerromemPeer(Peer):
    """ferromem's Store: exact scans (``index="exact"``) or its HNSW graph (``index="hnsw"``,
    timed after ``wait_for_index``), holding its vectors at ``precision`` ("f16" and "int8"
    open the f32 peer's file when it is built, and their build time is that open)."""

    def __init__(self, index: str, precision: str = "f32"):
        self.index = index
        self.precision = precision
        self.name = f"ferromem {index}" + ("" if precision == "f32" else f" {precision}")
        self.knobs = EF_SWEEP if index == "hnsw" else (None,)
        self.store = None
        self.tmp = None

    def _open(self, ef_search: int | None = None):
        import ferromem

        kw = {} if ef_search is None else {"ef_search": ef_search}
        if self.precision != "f32":
            kw["precision"] = self.precision
        try:
            return ferromem.open(self.path, cache_size=0, index=self.index, **kw)
        except TypeError:
            if self.index == "hnsw" or self.precision != "f32":
                raise Skip("index= or precision= not supported by this ferromem build") from None
            # An older build without index=: its default open is an exact scan.
            return ferromem.open(self.path, cache_size=0)

    def build(self, vectors):
        shared = _FERRO_FILES.get(id(vectors)) if self.precision != "f32" else None
        if shared is not None and os.path.exists(shared):
            self.path = shared
            self.store = self._open()
            if self.index == "hnsw":
                self.store.wait_for_index()
            self.params = f"{self.store.engine} engine, {self.precision}" + (
                ", ef_search=" if self.index == "hnsw" else ""
            )
            return
        self.tmp = tempfile.mkdtemp(prefix="peers-ferromem-")
        self.path = os.path.join(self.tmp, "bench.ferro")
        if self.precision == "f32":
            _FERRO_FILES[id(vectors)] = self.path
        self.store = self._open()
        if self.index == "hnsw" and not hasattr(self.store, "wait_for_index"):
            raise Skip("index= not supported by this ferromem build (no wait_for_index)")
        step = 10_000
        for s in range(0, len(vectors), step):
            e = min(s + step, len(vectors))
            self.store.add(
                [str(i) for i in range(s, e)], vectors[s:e], contents=[f"passage {i}" for i in range(s, e)]
            )
        if self.index == "hnsw":
            self.store.wait_for_index()
        self.params = f"{self.store.engine} engine" + (", ef_search=" if self.index == "hnsw" else "")

    def tune(self, knob):
        if knob is None:
            return
        self.store.set_index(ef_search=knob)  # the graph stays; only the search width changes

    def search(self, q, k):
        return self.store.search(q, k=k)

    def batch(self, qs, k):
        return self.store.search(qs, k=k)

    def ids(self, raw):
        return raw.ids.astype(np.int64)

    def memory_mb(self) -> float:
        return self.store.stats()["memory_bytes"] / 1e6

    def close(self):
        if self.store is not None:
            self.store.close()
        if self.tmp:
            _FERRO_FILES.pop(next((k for k, v in _FERRO_FILES.items() if v == self.path), None), None)
            shutil.rmtree(self.tmp, ignore_errors=True)


EXACT_PEERS: list[Callable[[], Peer]] = [
    lambda: FerromemPeer("exact"),
    lambda: FerromemPeer("exact", "f16"),
    lambda: FerromemPeer("exact", "int8"),
    NumpyPeer,
    FaissFlatPeer,
]
ANN_PEERS: list[Callable[[], Peer]] = [
    lambda: FerromemPeer("hnsw"),
    lambda: FerromemPeer("hnsw", "int8"),
    FaissHNSWPeer,
    USearchPeer,
    ChromaPeer,
    lambda: FerromemPeer("exact"),
    FaissFlatPeer,
]


class Built:
    """Peers built on one data set, built once on first use and shared by the figures."""

    def __init__(self, ds: Dataset):
        self.ds = ds
        self.peers: dict[str, tuple[Peer | None, float | str]] = {}

    def get(self, factory: Callable[[], Peer]) -> tuple[Peer | None, float | str]:
        """(peer, build seconds) or (None, "skipped: reason")."""
        peer = factory()
        if peer.name in self.peers:
            return self.peers[peer.name]
        log(f"build {peer.name} on {self.ds.name}")
        try:
            t = time.perf_counter()
            peer.build(self.ds.vectors)
            entry: tuple[Peer | None, float | str] = (peer, time.perf_counter() - t)
            log(f"  built in {entry[1]:.1f} s")
        except Exception as exc:  # noqa: BLE001 - a failing peer is a row, never a crash
            with contextlib.suppress(Exception):
                peer.close()
            reason = str(exc) if isinstance(exc, Skip) else f"{type(exc).__name__}: {exc}"
            log(f"  skipped: {reason}")
            entry = (None, f"skipped: {reason}")
        self.peers[peer.name] = entry
        return entry

    def view(self, queries: int) -> Built:
        """The same built peers, for a figure that uses only the first ``queries`` queries."""
        ds = self.ds
        view = Built(Dataset(ds.name, ds.vectors, ds.queries[:queries], ds.truth[:queries], ds.kth[:queries]))
        view.peers = self.peers
        return view

    def close(self) -> None:
        for peer, _ in self.peers.values():
            if peer is not None:
                peer.close()
        self.peers.clear()
        gc.collect()


# =========================================================================== figures


@dataclass
class Figure:
    key: str
    title: str
    about: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plot: Callable[[Any], None] | None = None
    image: str | None = None
    stamp: str = ""


def parallel_sum(chunks: list[np.ndarray]) -> float:
    """Sums each chunk on its own thread (numpy releases the GIL in the reduction)."""
    out = [0.0] * len(chunks)
    threads = [
        threading.Thread(target=lambda i=i: out.__setitem__(i, chunks[i].sum())) for i in range(len(chunks))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(out)


def machine_limits(quick: bool) -> tuple[Figure, dict]:
    """(a) memory bandwidth (a sum over 1 GiB float32 on one thread and on all cores, and a BLAS
    sgemv over the same GiB) and sgemm."""
    cores = os.cpu_count() or 1
    a = np.ones(256 * 2**20, dtype=np.float32)  # 1 GiB
    nbytes, chunks = a.nbytes, np.array_split(a, cores)
    m, v = a.reshape(-1, 1024), np.ones(1024, dtype=np.float32)
    one, _ = timed(lambda _: a.sum(), range(5), warmup=1)
    allc, _ = timed(lambda _: parallel_sum(chunks), range(5), warmup=1)
    gemv, _ = timed(lambda _: m @ v, range(5), warmup=1)
    n = 2048 if quick else 4096
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    mm, _ = timed(lambda _: x @ y, range(3), warmup=1)
    limits = {
        "bw_1t": nbytes / one.min() / 1e9,
        "bw_all": nbytes / allc.min() / 1e9,
        "bw_gemv": nbytes / gemv.min() / 1e9,
        "gflops": 2 * n**3 / mm.min() / 1e9,
    }
    limits["bw"] = max(limits["bw_1t"], limits["bw_all"], limits["bw_gemv"])
    fig = Figure(
        "a",
        "Machine limits",
        "measured in this run; the yardsticks of figures b and c",
        ["measure", "value", "how"],
    )
    fig.rows = [
        [
            "memory bandwidth, 1 thread",
            f"{limits['bw_1t']:.1f} GB/s",
            f"numpy sum over {nbytes / 2**30:.2g} GiB float32, best of 5",
        ],
        [
            f"memory bandwidth, {cores} threads",
            f"{limits['bw_all']:.1f} GB/s",
            f"the same sum split over {cores} threads",
        ],
        [
            "memory bandwidth, BLAS sgemv",
            f"{limits['bw_gemv']:.1f} GB/s",
            "numpy (256Ki x 1024 float32, 1 GiB) @ vector, best of 5",
        ],
        [
            "sgemm",
            f"{limits['gflops']:.1f} GFLOP/s",
            f"numpy {n}^3 float32 matmul, best of 3 ({blas_name()})",
        ],
    ]
    fig.notes.append(
        f"Figures b and c take the largest bandwidth ({limits['bw']:.1f} GB/s) and the sgemm figure as "
        "100%. On a shared machine a limit measured here can be lower than what a later figure "
        "reaches, and a fraction then exceeds 100%."
    )

    def plot(ax):
        labels = ["sum 1T\n(GB/s)", f"sum {cores}T\n(GB/s)", "sgemv\n(GB/s)", "sgemm\n(GFLOP/s)"]
        vals = [limits["bw_1t"], limits["bw_all"], limits["bw_gemv"], limits["gflops"]]
        ax.bar(labels, vals, color=["#4c72b0", "#4c72b0", "#4c72b0", "#dd8452"])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.1f}", ha="center", va="bottom")
        ax.set_title("Machine limits (this run)")

    fig.plot = plot
    return fig, limits


def exact_one_query(built: Built, limits: dict, budget_s: float) -> Figure:
    """(b) one query at a time, exact top-10."""
    ds = built.ds
    nbytes = ds.vectors.nbytes
    fig = Figure(
        "b",
        f"One query, exact top-{K}, {ds.shape} float32",
        f"p50/p95 of single-query latency over {len(ds.queries)} random queries; effective GB/s = "
        f"{nbytes / 1e6:,.0f} MB of float32 matrix / p50 time (the same figure for the f16 and int8 "
        "stores, which stream a half and a quarter of it); vector memory = ferromem's replica "
        "(stats()['memory_bytes']), the matrix's bytes for the others",
        [
            "peer",
            "p50 ms",
            "p95 ms",
            "effective GB/s",
            "of bandwidth",
            "p50 / ferromem",
            "recall@10",
            "memory MB",
        ],
    )
    data = []
    for factory in EXACT_PEERS:
        peer, build = built.get(factory)
        if peer is None:
            fig.rows.append([factory().name, build, "", "", "", "", "", ""])
            continue
        secs, raw = timed(lambda q, peer=peer: peer.search(q, K), ds.queries, budget_s=budget_s)
        found = [peer.ids(r) for r in raw]
        rec = recall_at_k(found, ds.vectors, ds.queries[: len(found)], ds.kth[: len(found)])
        gbs = nbytes / (p(secs, 50) / 1e3) / 1e9
        memory = peer.memory_mb() if hasattr(peer, "memory_mb") else nbytes / 1e6
        data.append(
            (peer.name, p(secs, 50), p(secs, 95), gbs, gbs / limits["bw"] if limits else None, rec, memory)
        )
    ours = next((d[1] for d in data if d[0].startswith("ferromem")), None)
    for name, p50, p95, gbs, frac, rec, memory in data:
        fig.rows.append(
            [
                name,
                fmt(p50),
                fmt(p95),
                f"{gbs:.1f}",
                "-" if frac is None else f"{100 * frac:.0f}%",
                ratio(p50, ours),
                f"{rec:.3f}",
                f"{memory:,.0f}",
            ]
        )

    def plot(ax):
        names = [d[0] for d in data]
        ax.barh(
            names,
            [d[1] for d in data],
            xerr=[[0] * len(data), [d[2] - d[1] for d in data]],
            color="#4c72b0",
            capsize=3,
        )
        for i, d in enumerate(data):
            label = f" {d[1]:.2f} ms, {d[3]:.1f} GB/s" + (f" ({100 * d[4]:.0f}% of bw)" if d[4] else "")
            ax.text(d[2], i, label, va="center")
        ax.set_xlabel("ms per query (bar p50, whisker p95)")
        ax.set_title(f"One query, exact top-{K}, {ds.shape}")
        ax.invert_yaxis()
        ax.margins(x=0.6)

    fig.plot = plot
    return fig


def exact_batch(built: Built, limits: dict, reps: int) -> Figure:
    """(c) a batch of 256 queries, exact top-10."""
    ds = built.ds
    n, d = ds.vectors.shape
    qs = ds.queries[:BATCH]  # the data set has at least BATCH queries when c runs
    flops = 2.0 * n * d * len(qs)
    fig = Figure(
        "c",
        f"Batch of {len(qs)} queries, exact top-{K}, {ds.shape}",
        f"median of {reps} batched calls; fraction of sgemm peak = 2*N*D*{len(qs)} flops / time / measured sgemm",
        ["peer", "batch ms", "queries/s", "GFLOP/s", "of sgemm peak", "time / ferromem", "recall@10"],
    )
    ds.ensure_truth()
    data = []
    for factory in EXACT_PEERS:
        peer, build = built.get(factory)
        if peer is None:
            fig.rows.append([factory().name, build, "", "", "", "", ""])
            continue
        secs, raw = timed(lambda b, peer=peer: peer.batch(b, K), [qs] * reps, warmup=1)
        t = float(np.median(secs))
        rec = recall_at_k(peer.batch_ids(raw[0]), ds.vectors, qs, ds.kth[: len(qs)])
        data.append((peer.name, t, len(qs) / t, flops / t / 1e9, rec))
    ours = next((x[1] for x in data if x[0].startswith("ferromem")), None)
    for name, t, qps, gf, rec in data:
        fig.rows.append(
            [
                name,
                fmt(t * 1e3),
                f"{qps:,.0f}",
                f"{gf:.1f}",
                f"{100 * gf / limits['gflops']:.0f}%" if limits else "-",
                ratio(t, ours),
                f"{rec:.3f}",
            ]
        )

    def plot(ax):
        ax.barh([x[0] for x in data], [x[2] for x in data], color="#55a868")
        for i, x in enumerate(data):
            frac = f" ({100 * x[3] / limits['gflops']:.0f}% of sgemm)" if limits else ""
            ax.text(x[2], i, f" {x[2]:,.0f} q/s{frac}", va="center")
        ax.set_xlabel("queries per second")
        ax.set_title(f"Batch of {len(qs)} queries, exact top-{K}, {ds.shape}")
        ax.invert_yaxis()
        ax.margins(x=0.5)

    fig.plot = plot
    return fig


def ann(built: Built, key: str, title: str, budget_s: float) -> Figure:
    """(d, e) build time, latency and recall@10 of each peer, over its search-width sweep."""
    ds = built.ds
    ds.ensure_truth()
    fig = Figure(
        key,
        f"{title}: {ds.name}",
        f"{len(ds.queries):,} queries, one at a time; recall@{K} against the exact top-{K} "
        f"(tie rule: a hit when its true score >= the exact {K}th - 1e-4); ratios against ferromem hnsw "
        f"at ef_search={FERRO_EF_REF} (ferromem.open's default is 96, between the sweep's 64 and 128)",
        [
            "peer",
            "params",
            "build s",
            "p50 ms",
            "p95 ms",
            f"recall@{K}",
            "p50 / ferromem",
            "build / ferromem",
        ],
    )
    data: list[tuple[str, str, float, Any, float, float, float]] = []
    for factory in ANN_PEERS:
        peer, build = built.get(factory)
        if peer is None:
            fig.rows.append([factory().name, build, "", "", "", "", "", ""])
            continue
        for knob in peer.knobs:
            try:
                peer.tune(knob)
            except Skip as exc:
                fig.rows.append([peer.name, f"skipped: {exc}", "", "", "", "", "", ""])
                break
            secs, raw = timed(
                lambda q, peer=peer: peer.search(q, K), ds.queries, budget_s=budget_s, min_runs=100
            )
            found = [peer.ids(r) for r in raw]
            rec = recall_at_k(found, ds.vectors, ds.queries[: len(found)], ds.kth[: len(found)])
            data.append(
                (
                    peer.name,
                    peer.params + ("" if knob is None else str(knob)),
                    build,
                    knob,
                    p(secs, 50),
                    p(secs, 95),
                    rec,
                )
            )
            log(f"  {peer.name} {knob}: p50 {p(secs, 50):.3f} ms recall {rec:.3f}")
    ref = next((x for x in data if x[0] == "ferromem hnsw" and x[3] == FERRO_EF_REF), None)
    if ref is None:
        ref = next((x for x in data if x[0] == "ferromem exact"), None)
        fig.about = fig.about.replace(
            f"ferromem hnsw at ef_search={FERRO_EF_REF} (ferromem.open's default is 96, between the sweep's 64 and 128)",
            "ferromem exact",
        )
    seen = set()
    for name, params, build, _knob, p50, p95, rec in data:
        first = name not in seen
        seen.add(name)
        fig.rows.append(
            [
                name,
                params,
                f"{build:.1f}" if first else "",
                fmt(p50),
                fmt(p95),
                f"{rec:.3f}",
                ratio(p50, ref and ref[4]),
                ratio(build, ref and ref[2]) if first else "",
            ]
        )

    def plot(ax):
        for name in dict.fromkeys(x[0] for x in data):
            pts = [x for x in data if x[0] == name]
            style = "o-" if len(pts) > 1 else "s"
            ax.plot(
                [x[5] for x in pts],
                [x[6] for x in pts],
                style,
                label=name,
                lw=2.5 if name.startswith("ferromem") else 1.2,
            )
            for x in pts:
                if x[3] is not None:
                    ax.annotate(
                        str(x[3]), (x[5], x[6]), textcoords="offset points", xytext=(3, -9), fontsize=7
                    )
        ax.set_xscale("log")
        ax.set_xlabel("p95 ms per query (log)")
        ax.set_ylabel(f"recall@{K}")
        ax.set_title(fig.title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")

    fig.plot = plot
    return fig


# --------------------------------------------------------------------------- (f) CrewAI


def _crewai_records(items: list[dict], vectors: np.ndarray, start: int, stop: int) -> list:
    """MemoryRecords for rows start..stop, with the synthetic crew's scopes and categories.
    Ids are UUIDs: Qdrant Edge turns a non-UUID id into a point id from its first 8 bytes,
    so ids sharing a prefix would overwrite each other there."""
    from crewai.memory.types import MemoryRecord

    return [
        MemoryRecord(
            id=str(uuid.UUID(int=i + 1)),
            content=it["content"],
            scope=it["scope"],
            categories=it["categories"],
            importance=it["importance"],
            metadata=it["metadata"],
            embedding=v,
        )
        for i, it, v in zip(range(start, stop), items[start:stop], vectors[start:stop].tolist())
    ]


def _row_of(record: Any) -> int:
    return uuid.UUID(record.id).int - 1


class CrewBackend:
    """One CrewAI StorageBackend under test: ``make(dir)`` returns it, ``ready()`` runs after
    the bulk load (not timed), ``close()`` ends it."""

    name = "?"

    def make(self, root: str) -> Any:
        raise NotImplementedError

    def ready(self, storage: Any) -> None:
        pass

    def close(self, storage: Any) -> None:
        storage.close()


class FerromemCrew(CrewBackend):
    """MemoryStorage on a store opened with the default index ("auto": an HNSW graph from
    2^25 values on) or with ``index="exact"``; the result cache off, so that repeated probe
    queries time searches, not cache hits."""

    def __init__(self, index: str | None = None, precision: str | None = None):
        self.index = index
        self.precision = precision
        self.name = (
            "ferromem MemoryStorage"
            + (f", index={index}" if index else "")
            + (f", precision={precision}" if precision else "")
        )
        self.note = ""

    def make(self, root):
        need("crewai")
        import ferromem
        from ferromem.crewai import MemoryStorage

        kw = {"index": self.index} if self.index else {}
        if self.precision:
            kw["precision"] = self.precision
        try:
            self.store = ferromem.open(os.path.join(root, "memories.ferro"), cache_size=0, **kw)
        except TypeError:
            raise Skip("index= not supported by this ferromem build") from None
        return MemoryStorage(store=self.store)

    def ready(self, storage):
        if hasattr(self.store, "wait_for_index"):
            self.store.wait_for_index()
        if not self.index:
            self.note = f"default: searches {self.store.stats().get('index', {}).get('active', 'exact')}"

    def close(self, storage):
        storage.close()
        self.store.close()


class LanceCrew(CrewBackend):
    name = "CrewAI LanceDBStorage"

    def make(self, root):
        need("crewai")
        mod = need("crewai.memory.storage.lancedb_storage", "crewai lancedb")
        return mod.LanceDBStorage(path=os.path.join(root, "lancedb"))


class QdrantEdgeCrew(CrewBackend):
    name = "CrewAI QdrantEdgeStorage"

    def make(self, root):
        need("crewai")
        need("qdrant_edge", "qdrant-edge-py (crewai[qdrant-edge])")
        mod = need("crewai.memory.storage.qdrant_edge_storage", "crewai[qdrant-edge]")
        return mod.QdrantEdgeStorage(path=os.path.join(root, "qdrant-edge"))


CREW_BACKENDS: list[Callable[[], CrewBackend]] = [
    FerromemCrew,
    lambda: FerromemCrew("exact"),
    lambda: FerromemCrew("exact", "int8"),
    LanceCrew,
    QdrantEdgeCrew,
]


def crewai_figure(n: int, dim: int, probes: int, seconds: float, budget_s: float) -> Figure:
    """(f) the storages CrewAI's Memory calls, loaded with the same MemoryRecords."""
    rng = np.random.default_rng(3)
    vectors = unit_rows(rng, n, dim)
    queries = unit_rows(rng, probes, dim)
    _, scores = exact_topk(vectors, queries)
    from ferromem._workload import AGENTS, memories

    items = list(memories(n))
    filt = [
        {"scope_prefix": f"/crew/{AGENTS[i % len(AGENTS)]}", "categories": ["decision"]}
        for i in range(probes)
    ]
    fig = Figure(
        "f",
        f"Through CrewAI's StorageBackend, {n:,} x {dim} memories",
        f"save() in batches of 1,000 MemoryRecords, then search(limit={K}) of {probes} probe vectors; "
        f"filtered = scope_prefix='/crew/<agent>' + categories=['decision'] (1 in 12 records match, "
        f"so {K} results are always due); 8 threads doing 90% search / 10% save(1 record) for {seconds:g} s; "
        f"ratios against ferromem with index=exact, since CrewAI's storages scan exactly",
        [
            "storage",
            "save s",
            "index wait s",
            "search p50 ms",
            "recall@10",
            "filtered p50 ms",
            "filtered results (of 10)",
            "8-thread ops/s",
            "search / ferromem",
            "filtered / ferromem",
            "ops time / ferromem",
        ],
    )
    data = []
    step = 1000
    for factory in CREW_BACKENDS:
        backend = factory()
        root = tempfile.mkdtemp(prefix="peers-crewai-")
        storage = None
        try:
            storage = backend.make(root)
            log(f"load {backend.name}: {n:,} records")
            load = 0.0
            for s in range(0, n, step):
                recs = _crewai_records(items, vectors, s, min(s + step, n))
                t = time.perf_counter()
                storage.save(recs)
                load += time.perf_counter() - t
                if (s // step) % 10 == 9:
                    log(f"  {s + step:,} saved, {load:.0f} s")
            t = time.perf_counter()
            backend.ready(storage)
            ready = time.perf_counter() - t
            qlists = queries.tolist()
            secs, raw = timed(
                lambda q, storage=storage: storage.search(q, limit=K), qlists, budget_s=budget_s
            )
            found = [np.array([_row_of(r) for r, _ in res], dtype=np.int64) for res in raw]
            rec = recall_at_k(found, vectors, queries[: len(found)], scores[: len(found), K - 1])
            fsecs, fraw = timed(
                lambda i, storage=storage, qlists=qlists: storage.search(qlists[i], limit=K, **filt[i]),
                list(range(probes)),
                budget_s=budget_s,
            )
            got = [len(r) for r in fraw]
            ops, errors = mixed_load(storage, queries, seconds)
            data.append(
                (
                    backend.name,
                    load,
                    ready,
                    p(secs, 50),
                    rec,
                    p(fsecs, 50),
                    float(np.mean(got)),
                    sum(g < K for g in got),
                    len(got),
                    ops,
                    errors,
                    getattr(backend, "note", ""),
                )
            )
            log(
                f"  search p50 {p(secs, 50):.2f} ms, filtered {p(fsecs, 50):.2f} ms ({np.mean(got):.1f} results), "
                f"{ops:,.0f} ops/s, {errors} errors"
            )
        except Exception as exc:  # noqa: BLE001 - a failing backend is a row, never a crash
            reason = str(exc) if isinstance(exc, Skip) else f"{type(exc).__name__}: {exc}"
            log(f"  skipped {backend.name}: {reason}")
            fig.rows.append([backend.name, f"skipped: {reason}"] + [""] * (len(fig.columns) - 2))
        finally:
            if storage is not None:
                with contextlib.suppress(Exception):
                    backend.close(storage)
            shutil.rmtree(root, ignore_errors=True)
            gc.collect()
    # Like for like: CrewAI's storages scan exactly, so ratios are against ferromem's exact
    # scan when it ran (the default row then shows what its graph buys).
    ours = next((x for x in data if x[0].endswith("index=exact")), None) or next(
        (x for x in data if x[0].startswith("ferromem")), None
    )
    for name, load, ready, p50, rec, fp50, got, short, total, ops, errors, note in data:
        fig.rows.append(
            [
                name + (f" ({note})" if note else ""),
                f"{load:.1f}",
                f"{ready:.1f}" if ready >= 0.05 else "-",
                fmt(p50),
                f"{rec:.3f}",
                fmt(fp50),
                f"{got:.1f}" + (f" ({short}/{total} queries short)" if short else ""),
                fmt(ops) + (f" ({errors} errors)" if errors else ""),
                ratio(p50, ours and ours[3]),
                ratio(fp50, ours and ours[5]),
                ratio(1 / ops if ops else None, 1 / ours[9] if ours and ours[9] else None),
            ]
        )
    if any("hnsw" in x[-1] for x in data):
        fig.notes.append(
            "ferromem's default index (`auto`) searches its HNSW graph at this size. Random vectors have no "
            "neighbourhood structure, so its recall here is as low as every graph index's in figure e; on real "
            "embeddings it is figure d's. LanceDB (no vector index created by CrewAI) and Qdrant Edge scan "
            "exactly, as does ferromem with index=exact, the reference of the ratios."
        )

    def plot(axes):
        names = [
            x[0].replace("CrewAI ", "").replace(" MemoryStorage", "") + (" (default)" if x[-1] else "")
            for x in data
        ]
        for ax, col, label in zip(
            axes, (3, 5, 9), ("search p50 ms", "filtered search p50 ms", "8-thread ops/s")
        ):
            vals = [x[col] for x in data]
            ax.bar(names, vals, color=["#c44e52" if nm.startswith("ferromem") else "#8c8c8c" for nm in names])
            ax.set_yscale("log")
            ax.set_title(label, fontsize=10)
            ax.tick_params(axis="x", labelsize=8, rotation=15)
            for i, v in enumerate(vals):
                ax.text(i, v, fmt(v), ha="center", va="bottom", fontsize=8)

    fig.plot = plot
    fig.plot_axes = 3  # type: ignore[attr-defined]
    return fig


def mixed_load(storage: Any, queries: np.ndarray, seconds: float, threads: int = 8) -> tuple[float, int]:
    """8 threads for ``seconds``: every 10th call saves one new record, the others search.
    Returns (operations per second, failed calls); the first failure is logged."""
    from crewai.memory.types import MemoryRecord

    stop = time.perf_counter() + seconds
    counts, errors = [0] * threads, [0] * threads
    qlists = queries[:64].tolist()

    def worker(w: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            try:
                if i % 10 == 9:
                    storage.save(
                        [
                            MemoryRecord(
                                id=str(uuid.uuid4()),
                                content=f"thread {w} note {i}",
                                scope=f"/crew/t{w}",
                                categories=["fact"],
                                embedding=qlists[i % len(qlists)],
                            )
                        ]
                    )
                else:
                    storage.search(qlists[i % len(qlists)], limit=K)
                counts[w] += 1
            except Exception as exc:  # noqa: BLE001 - counted and shown in the table
                if not any(errors):
                    log(f"  first failure in the 8-thread run: {type(exc).__name__}: {exc}")
                errors[w] += 1
            i += 1

    pool = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    t = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return sum(counts) / (time.perf_counter() - t), sum(errors)


# =========================================================================== report


def blas_name() -> str:
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001
        return "unknown BLAS"


def machine_facts() -> list[str]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        cpu = m.group(1).strip() if m else cpu
    mem = "?"
    with contextlib.suppress(Exception):
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    isa = "?"
    with contextlib.suppress(Exception):
        from ferromem import _core

        isa = _core.simd_isa()
    pkgs = [
        "ferromem",
        "numpy",
        "faiss-cpu",
        "usearch",
        "chromadb",
        "crewai",
        "lancedb",
        "qdrant-edge-py",
        "matplotlib",
    ]
    versions = ", ".join(f"{d} {version(d) or 'not installed'}" for d in pkgs)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return [
        f"- CPU: {cpu}; {os.cpu_count()} logical cores ({affinity} usable); memory {mem}; "
        f"load average at the end of the run {load} (1 / 5 / 15 min: other work on the machine slows every peer)",
        f"- {platform.system()} {platform.release()} {platform.machine()}, Python {platform.python_version()}",
        f"- numpy BLAS: {blas_name()}; ferromem SIMD path: {isa}",
        f"- packages: {versions}",
    ]


def render(figs: list[Figure], header: list[str]) -> dict[str, str]:
    """Markdown blocks: "machine" and one per figure key."""
    blocks = {"machine": "\n".join(header)}
    for f in figs:
        lines = [f"### ({f.key}) {f.title}", "", f.about + ".", ""]
        lines.append("| " + " | ".join(f.columns) + " |")
        lines.append("|" + "---|" * len(f.columns))
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in f.rows]
        lines += [""] + f.notes + ([""] if f.notes else [])
        if f.stamp:
            lines += [f"_{f.stamp}_", ""]
        if f.image:
            lines.append(f"![{f.title}](img/{f.image})")
        blocks[f.key] = "\n".join(lines).rstrip()
    return blocks


def save_plots(figs: list[Figure], out: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plots (pip install matplotlib)")
        return
    os.makedirs(os.path.join(out, "img"), exist_ok=True)
    for f in figs:
        if f.plot is None:
            continue
        n_axes = getattr(f, "plot_axes", 1)
        fig, axes = plt.subplots(1, n_axes, figsize=(9 if n_axes == 1 else 11, 4.5 if f.key in "de" else 3.6))
        try:
            f.plot(axes)
            fig.tight_layout()
            f.image = f"peers-{f.key}.png"
            fig.savefig(os.path.join(out, "img", f.image), dpi=110)
        except Exception as exc:  # noqa: BLE001 - a plot must not lose the table
            log(f"plot {f.key} failed: {type(exc).__name__}: {exc}")
        finally:
            plt.close(fig)


BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"


def write_markdown(path: str, blocks: dict[str, str]) -> None:
    """Replaces the figures' sub-blocks inside the peers markers (kept others stay)."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    inner, tail = rest.split(END, 1)
    old = dict(re.findall(r"<!-- peers:(\w+) -->\n(.*?)\n<!-- /peers:\1 -->", inner, re.S))
    old.update(blocks)
    order = ["machine"] + sorted(k for k in old if k != "machine")
    body = "\n\n".join(f"<!-- peers:{k} -->\n{old[k]}\n<!-- /peers:{k} -->" for k in order if k in old)
    with open(path, "w") as f:
        f.write(f"{head}{BEGIN}\n{body}\n{END}{tail}")


# =========================================================================== main


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick", action="store_true", help="small sizes for a smoke run (20k x 384, 2k CrewAI records)"
    )
    ap.add_argument("--only", default="a,b,c,d,e,f", help="comma-separated figures to run (default all)")
    ap.add_argument(
        "--n", type=int, help="rows of the random matrix for b, c, e (default 100000; quick 20000)"
    )
    ap.add_argument("--dim", type=int, help="its dimension (default 1536; quick 384)")
    ap.add_argument("--queries", type=int, help="random queries for b and e (default 200; quick 50)")
    ap.add_argument(
        "--minilm-n",
        type=int,
        help="use only the first N passages of the real set in d (ground truth then recomputed; quick 10000)",
    )
    ap.add_argument("--crewai-n", type=int, help="records for f (default --n; quick 2000)")
    ap.add_argument("--crewai-dim", type=int, help="dimension for f (default --dim)")
    ap.add_argument("--seconds", type=float, help="length of the 8-thread run in f (default 10; quick 3)")
    ap.add_argument(
        "--g-n", type=int, default=1_000_000, help="rows of the random matrix for g (default 1000000)"
    )
    ap.add_argument("--g-dim", type=int, default=384, help="its dimension (default 384)")
    ap.add_argument(
        "--peers",
        help="comma-separated name prefixes: run only the peers whose name starts with one "
        "(e.g. 'ferromem,faiss'; default every peer)",
    )
    ap.add_argument(
        "--data",
        default=os.environ.get("FERROMEM_DATA")
        or os.environ.get("FERROMEM_SHARED_DATA")
        or os.path.join(REPO, "..", "shared", "data"),
        help="folder with docs-minilm384.npz (default $FERROMEM_DATA, else $FERROMEM_SHARED_DATA as the "
        "asv suite reads it, else ../shared/data from the repo root)",
    )
    ap.add_argument(
        "--out",
        default=os.path.join(REPO, "docs"),
        help="writes <out>/benchmarks.md (between the peers markers) and <out>/img/peers-*.png",
    )
    a = ap.parse_args(argv)
    if a.peers:
        prefixes = tuple(x.strip().lower() for x in a.peers.split(",") if x.strip())
        keep = lambda factories: [f for f in factories if f().name.lower().startswith(prefixes)]  # noqa: E731
        EXACT_PEERS[:] = keep(EXACT_PEERS)
        ANN_PEERS[:] = keep(ANN_PEERS)
    q = a.quick
    n, dim = a.n or (20_000 if q else 100_000), a.dim or (384 if q else 1536)
    queries = a.queries or (50 if q else 200)
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    budget = 5.0 if q else 30.0
    figs: list[Figure] = []
    t0 = time.perf_counter()

    def done(fig: Figure) -> None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        fig.stamp = (
            f"{'quick' if q else 'full-size'} run, figure finished {time.strftime('%Y-%m-%d %H:%M')}, "
            f"1-minute load average then {load:.1f}"
        )
        figs.append(fig)

    limits: dict = {}
    if "a" in only or "b" in only or "c" in only:
        log("figure a: machine limits")
        fig_a, limits = machine_limits(q)
        if "a" in only:
            done(fig_a)

    if any(x in only for x in "bce"):
        ds = random_dataset(n, dim, max(queries, BATCH if "c" in only else 0))
        log(f"random data set {ds.shape}: exact ground truth")
        ds.ensure_truth()
        built = Built(ds)
        try:
            if "b" in only:
                done(exact_one_query(built.view(queries), limits, budget))
            if "c" in only:
                done(exact_batch(built, limits, reps=3 if q else 5))
            if "e" in only:
                done(ann(built.view(queries), "e", "ANN on random unit vectors", budget))
        finally:
            built.close()
        del ds
        gc.collect()

    if "d" in only:
        try:
            ds = minilm_dataset(a.data, a.minilm_n or (10_000 if q else None), 200 if q else None)
            built = Built(ds)
            try:
                done(ann(built, "d", "ANN on real embeddings", budget))
            finally:
                built.close()
        except Skip as exc:
            log(f"figure d skipped: {exc}")
            done(Figure("d", "ANN on real embeddings", f"skipped: {exc}", ["figure"], [[f"skipped: {exc}"]]))

    if "g" in only:
        ds = random_dataset(a.g_n, a.g_dim, queries)
        log(f"random data set {ds.shape}: exact ground truth")
        ds.ensure_truth()
        built = Built(ds)
        try:
            done(ann(built, "g", "ANN on random unit vectors, large", budget))
        finally:
            built.close()
        del ds
        gc.collect()

    if "f" in only:
        cn = a.crewai_n or (2_000 if q else n)
        done(
            crewai_figure(
                cn, a.crewai_dim or dim, 50 if q else 200, a.seconds or (3.0 if q else 10.0), budget
            )
        )

    figs.sort(key=lambda f: f.key)
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    save_plots(figs, out)
    header = [
        f"Run of `python asv_bench/peers.py{' --quick' if q else ''}"
        f"{'' if a.only == 'a,b,c,d,e,f' else ' --only ' + a.only}"
        f"{' --peers ' + a.peers if a.peers else ''}` on "
        f"{_dt.date.today().isoformat()}, {time.perf_counter() - t0:.0f} s in all. Machine:",
        "",
    ] + machine_facts()
    blocks = render(figs, header)
    for key in ["machine"] + [f.key for f in figs]:
        print(blocks[key] + "\n")
    write_markdown(os.path.join(out, "benchmarks.md"), blocks)
    log(f"wrote {os.path.join(out, 'benchmarks.md')} and {len([f for f in figs if f.image])} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
