"""The recall guard (docs/architecture.md, "Recall guard"): under index="auto" the graph
serves a search only while its recall@k, measured on probe queries at publish and on a
sample of the store's own searches, reaches ``recall_target``.

* On random vectors (no neighbourhood structure: the graph's recall is poor at every
  width the guard tries) the guard answers exactly, so recall@10 over a run of queries
  (half near a stored record, half random) is at least the target; index="hnsw" still
  forces the graph there, and its recall is what the guard saw.
* On real text embeddings (the shared MiniLM set) the graph keeps serving, at the
  narrowest width, with recall@10 at least the target over the set's 1,000 queries.
* ``recall_target`` is validated; the stats report has the same keys on both engines.

The stores here are small (20,000 x 512 random, 60,000 x 384 MiniLM), so they lower
``graph_min_values`` to 0: index="auto" builds its graph at any size.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import ferromem
import numpy as np
import pytest
from _helpers import load_minilm
from ferromem.exceptions import InvalidInputError

TARGET = 0.95
RECALL_KEYS = {
    "target",
    "verdict",
    "ladder",
    "exact_ms",
    "offered",
    "evaluated",
    "dropped",
    "sample_every",
    "auditor_share",
    "bootstraps",
    "bootstrap_ms",
}
RUNG_KEYS = {"ef", "samples", "mean", "stderr", "graph_ms"}

native = pytest.mark.skipif(
    getattr(ferromem.store, "_core", None) is None, reason="the native engine is not built"
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def random_store():
    """20,000 random 512-dimensional vectors under index="auto" with its graph built and
    judged; and 200 queries: 100 near a stored record, 100 random."""
    rng = np.random.default_rng(15)
    n, dim = 20_000, 512
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    store = ferromem.open(None, cache_size=0, recall_target=TARGET)
    store.set_index("auto", graph_min_values=0)
    for start in range(0, n, 5000):
        store.add([f"r{i}" for i in range(start, start + 5000)], vectors[start : start + 5000])
    assert store.wait_for_index(timeout=600)
    near = vectors[rng.choice(n, 100, replace=False)] + 0.5 * rng.standard_normal(
        (100, dim), dtype=np.float32
    )
    queries = np.concatenate([near, rng.standard_normal((100, dim), dtype=np.float32)])
    truth = _unit(queries) @ _unit(vectors).T
    yield store, queries, truth
    store.close()


def _recall(store, queries, truth, k=10) -> float:
    hits = 0
    for qi, q in enumerate(queries):
        got = store.search(q, k=k)
        cut = np.sort(truth[qi])[-k] - 1e-5  # a tie at rank k may go either way
        hits += sum(truth[qi, int(i[1:])] >= cut for i in got.ids)
    return hits / (k * len(queries))


@native
def test_the_guard_answers_exactly_where_the_graph_misses(random_store):
    store, queries, truth = random_store
    index = store.stats()["index"]
    recall = index["recall"]
    # The bootstrap judged the graph before any search: poor at every width.
    assert recall["bootstraps"] == 1 and recall["evaluated"] >= 32
    assert recall["verdict"] == "exact", recall
    assert [r["ef"] for r in recall["ladder"]] == [96, 192, 384, 768]
    # No width is confidently at the target and cheaper than exact (the verdict's rule).
    assert all(
        r["mean"] - 2 * r["stderr"] < TARGET or r["graph_ms"] * 1.1 > recall["exact_ms"]
        for r in recall["ladder"]
    ), recall
    assert (index["active"], index["serving_ef"]) == ("exact", None)
    assert _recall(store, queries, truth) >= TARGET
    # Each search the graph could have served was offered to the auditor.
    assert store.stats()["index"]["recall"]["offered"] >= len(queries)


@native
def test_hnsw_still_forces_the_graph(random_store):
    store, queries, truth = random_store
    store.set_index("hnsw")
    try:
        index = store.stats()["index"]
        assert (index["active"], index["serving_ef"]) == ("hnsw", 96)
        # The guard still measures, and says what "auto" would do.
        assert index["recall"]["verdict"] == "exact"
        forced = _recall(store, queries, truth)
    finally:
        store.set_index("auto")
    # What the guard kept the searches from: the graph's own recall here.
    assert forced < TARGET
    assert store.stats()["index"]["active"] == "exact"


@native
def test_a_new_ef_search_is_judged_anew(random_store):
    store, _, _ = random_store
    store.set_index(ef_search=300)
    try:
        assert store.wait_for_index(timeout=600)
        recall = store.stats()["index"]["recall"]
        assert [r["ef"] for r in recall["ladder"]] == [300, 600]
        assert recall["bootstraps"] == 2 and recall["verdict"] == "exact"
        assert all(r["samples"] >= 32 for r in recall["ladder"])
    finally:
        store.set_index(ef_search=96)
        assert store.wait_for_index(timeout=600)


@native
def test_a_target_the_graph_reaches_lets_it_serve(random_store):
    store, _, _ = random_store
    ladder = store.stats()["index"]["recall"]["ladder"]
    # Some width is confidently above a target of 0.3 on these vectors, and cheaper than
    # exact: the smallest such width serves. A target of 1.0 sends it back to exact.
    ok = [r for r in ladder if r["mean"] - 2 * r["stderr"] >= 0.3]
    store.set_index(recall_target=0.3)
    try:
        index = store.stats()["index"]
        assert index["recall"]["target"] == 0.3
        if ok and ok[0]["graph_ms"] * 1.1 <= index["recall"]["exact_ms"]:
            assert (index["active"], index["serving_ef"]) == ("hnsw", ok[0]["ef"])
        store.set_index(recall_target=1.0)
        assert store.stats()["index"]["active"] == "exact"
    finally:
        store.set_index(recall_target=TARGET)


@pytest.fixture(scope="module")
def minilm():
    passages, queries, top10_scores = load_minilm("passages", "queries", "queries_top10_scores")
    return passages.astype(np.float32), queries.astype(np.float32), top10_scores


@native
def test_the_graph_keeps_serving_real_embeddings(minilm):
    passages, queries, top10_scores = minilm
    store = ferromem.open(None, cache_size=0)
    try:
        store.set_index("auto", graph_min_values=0)
        for start in range(0, len(passages), 10_000):
            store.add([f"p{i}" for i in range(start, start + 10_000)], passages[start : start + 10_000])
        assert store.wait_for_index(timeout=600)
        index = store.stats()["index"]
        recall = index["recall"]
        assert recall["verdict"] == "graph", recall
        assert (index["active"], index["serving_ef"]) == ("hnsw", 96)
        unit = _unit(passages)
        hits = 0
        for qi, q in enumerate(queries):
            got = store.search(q, k=10)
            scores = unit[[int(i[1:]) for i in got.ids]] @ _unit(q)
            # The data set's rule: a hit scores at least the true 10th score - 1e-4.
            hits += int(np.sum(scores >= top10_scores[qi, 9] - 1e-4))
        assert hits / (10 * len(queries)) >= TARGET
        assert store.stats()["index"]["active"] == "hnsw"
    finally:
        store.close()


@pytest.mark.parametrize(
    "bad", [0, 0.0, -0.5, 1.0001, 2, math.nan, math.inf, -math.inf, "0.9", None, True, 10**400]
)
def test_recall_target_is_validated(bad):
    with pytest.raises(InvalidInputError, match="recall_target"):
        ferromem.open(None, recall_target=bad)
    store = ferromem.open(None)
    try:
        if bad is not None:  # None keeps the current target in set_index
            with pytest.raises(InvalidInputError, match="recall_target"):
                store.set_index(recall_target=bad)
        assert store.stats()["index"]["recall"]["target"] == TARGET
    finally:
        store.close()


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True])
def test_graph_min_values_is_validated(bad):
    store = ferromem.open(None)
    try:
        with pytest.raises(InvalidInputError, match="graph_min_values"):
            store.set_index(graph_min_values=bad)
        assert store.stats()["index"]["graph_min_values"] == 2**25
    finally:
        store.close()


@pytest.mark.parametrize("engine", ["native", "reference"])
def test_stats_report_the_guard(engine):
    if engine == "native" and getattr(ferromem.store, "_core", None) is None:
        pytest.skip("the native engine is not built")
    store = ferromem.open(None, engine=engine, recall_target=0.9)
    try:
        store.add(["a", "b"], np.eye(2, 8, dtype=np.float32))
        index = store.stats()["index"]
        recall = index["recall"]
        assert set(recall) == RECALL_KEYS
        assert recall["target"] == 0.9
        # No graph at this size: nothing judged, exact searches.
        assert recall["verdict"] in ("unknown", "exact")
        assert (index["active"], index["serving_ef"]) == ("exact", None)
        assert index["graph_min_values"] == 2**25
        for rung in recall["ladder"]:
            assert set(rung) == RUNG_KEYS and rung["samples"] == 0 and rung["mean"] is None
        store.set_index(recall_target=1)
        assert store.stats()["index"]["recall"]["target"] == 1.0
    finally:
        store.close()


_AUDITOR_SCRIPT = """
import time
from pathlib import Path

import ferromem
import numpy as np


def auditors():
    count = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            count += (task / "comm").read_text().strip() == "ferromem-recall"
        except OSError:  # the thread ended meanwhile
            pass
    return count


assert auditors() == 0
store = ferromem.open(None, index="hnsw")
store.add([f"r{i}" for i in range(500)], np.random.default_rng(1).standard_normal((500, 16), dtype=np.float32))
assert store.wait_for_index(timeout=600)
# The bootstrap judged the graph, then started the store's auditor (a thread that names
# itself as it starts: wait for it a little).
assert store.stats()["index"]["recall"]["bootstraps"] == 1
deadline = time.monotonic() + 5
while auditors() != 1 and time.monotonic() < deadline:
    time.sleep(0.01)
assert auditors() == 1, auditors()
store.close()
deadline = time.monotonic() + 5
while auditors() and time.monotonic() < deadline:
    time.sleep(0.01)
assert auditors() == 0, "the auditor outlived close()"
print("ok")
"""


@native
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from /proc (Linux)")
def test_the_auditor_runs_per_store_and_stops_at_close():
    # In a process of its own: other tests' stores have auditors of their own.
    done = subprocess.run(
        [sys.executable, "-c", _AUDITOR_SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
