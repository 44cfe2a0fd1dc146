"""The main job, side by side: a real CrewAI ``Memory`` workload on ferromem and on CrewAI's
default storage (LanceDB), with a table of timings and of results that differ.

The workload needs no LLM and no network: every memory is remembered with an explicit
scope, categories and importance (how CrewAI skips its LLM analysis), consolidation is
off (``consolidation_threshold=1.0``; it would ask an LLM about near-duplicates), recalls
are shallow (one embedding, one vector search), and texts are embedded offline by
:class:`ferromem.embedders.HashingEmbedder`. Embeddings are computed once up front and
served from a table, so both backends get identical vectors and the timings hold CrewAI's
own work plus the storage's, not the embedder's.

Timed operations, each on both backends:

- through ``Memory``: ``remember`` (one item), ``remember_many`` (a batch, until its
  background save is done), ``recall`` shallow with no filter, with a scope, with
  categories, with both (a distinct query each time), ``recall`` of the same query again
  (ferromem answers it from its result cache), ``forget`` by id and by scope,
  ``list_scopes``;
- on the storage itself (what ferromem replaces, without CrewAI's flow machinery around
  it): ``save`` of one record, ``search``, ``search`` with scope and categories, ``delete``
  of one id.

Used by ``python -m ferromem demo`` and by ``asv_bench/crewai_table.py``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .._workload import AGENTS, memories

# Set before CrewAI is imported. Its trace collection would try the network, and its
# tracing handler waits 5 s for a parent span on every Memory save run in Memory's
# background thread, whatever the storage (CrewAI 1.15): the demo would time that wait.
for _name, _value in (
    ("CREWAI_TRACING_ENABLED", "false"),
    ("CREWAI_DISABLE_TELEMETRY", "true"),
    ("OTEL_SDK_DISABLED", "true"),
):
    os.environ.setdefault(_name, _value)

__all__ = ["run", "print_report", "QUERIES"]

QUERIES = [
    "customer asked about the refund and the invoice",
    "courier delivery delay at the warehouse",
    "engineer reported a bug before the launch",
    "the manager prefers the subscription plan",
    "vendor confirmed the tracking of the parcel",
    "partner feedback on the roadmap and pricing",
    "support escalated the card charge",
    "team noted the customs address",
]


class _TableEmbedder:
    """Serves precomputed embeddings (computing and caching any text it has not seen), so
    that both backends time CrewAI and the storage, not the embedder."""

    def __init__(self, embedder: Any, texts: list[str]):
        self._embedder = embedder
        self._table = dict(zip(texts, (v.tolist() for v in embedder.embed(texts))))

    def __call__(self, input: list[str]) -> list[list[float]]:  # noqa: A002 - protocol name
        missing = [t for t in input if t not in self._table]
        if missing:
            self._table.update(zip(missing, (v.tolist() for v in self._embedder.embed(missing))))
        return [self._table[t] for t in input]


def _timed(samples: dict[str, list[float]], name: str, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
    start = time.perf_counter()
    out = fn(*a, **kw)
    samples.setdefault(name, []).append(time.perf_counter() - start)
    return out


def _groups(items: list[dict], batch: int) -> list[list[dict]]:
    """remember_many gives one scope/categories/importance to a whole batch: group items
    that share them, then cut into batches."""
    by_key: dict[tuple, list[dict]] = {}
    for item in items:
        by_key.setdefault((item["scope"], tuple(item["categories"]), item["importance_band"]), []).append(
            item
        )
    out: list[list[dict]] = []
    for group in by_key.values():
        out.extend(group[i : i + batch] for i in range(0, len(group), batch))
    return out


def recall_texts(items: list[dict], recalls: int) -> list[str]:
    """One distinct query per recall (a topic question plus a stored memory's words), so
    that the recall and search rows time searches, not ferromem's result cache, which has
    a row of its own."""
    return [
        f"{QUERIES[i % len(QUERIES)]}: {items[(i * 7919) % len(items)]['content']}" for i in range(recalls)
    ]


def _workload(
    memory: Any,
    storage: Any,
    items: list[dict],
    embed: _TableEmbedder,
    recalls: int,
    step: Callable[[str], Any] = lambda _: None,
) -> tuple[dict, dict]:
    """Runs the workload on one Memory; returns (timings, observed results). ``step`` is
    called with the name of each phase as it starts."""
    from crewai.memory.types import MemoryRecord

    t: dict[str, list[float]] = {}
    seen: dict[str, Any] = {}
    singles, batched = items[:20], items[20:]
    step(f"remember {len(items):,} memories")
    for item in singles:
        _timed(
            t,
            "Memory.remember (1 item)",
            memory.remember,
            item["content"],
            scope=item["scope"],
            categories=item["categories"],
            importance=item["importance"],
        )
    for group in _groups(batched, 100):
        head = group[0]

        def remember_batch(group: list[dict] = group, head: dict = head) -> None:
            memory.remember_many(
                [g["content"] for g in group],
                scope=head["scope"],
                categories=head["categories"],
                importance=head["importance"],
            )
            memory.drain_writes()

        _timed(t, "Memory.remember_many (<=100, saved)", remember_batch)
    seen["stored"] = storage.count()

    kinds: dict[str, dict[str, Any]] = {
        "recall": {},
        "recall scope": {"scope": "/crew/{agent}"},
        "recall categories": {"categories": ["decision"]},
        "recall scope+categories": {"scope": "/crew/{agent}/billing", "categories": ["decision"]},
    }
    step(f"recall {recalls} queries x {len(kinds) + 1} filter kinds")
    for kind, flt in kinds.items():
        results = []
        for i, query in enumerate(recall_texts(items, recalls)):
            agent = AGENTS[i % len(AGENTS)]
            kwargs = {k: (v.format(agent=agent) if isinstance(v, str) else v) for k, v in flt.items()}
            matches = _timed(t, f"Memory.{kind}", memory.recall, query, depth="shallow", limit=10, **kwargs)
            if i < len(QUERIES) * len(AGENTS):
                results.append([m.record.content for m in matches])
        seen[kind] = results

    # An agent asking the same thing again: ferromem answers from its result cache (a
    # recall's touch of its results does not invalidate it); LanceDB searches again.
    for _ in range(recalls):
        _timed(t, "Memory.recall (same query again)", memory.recall, QUERIES[0], depth="shallow", limit=10)

    # The storage alone: the calls CrewAI makes, without its flow machinery around them.
    step("storage search, save and delete; forget")
    probe_vectors = embed(recall_texts(items, recalls))
    for i, q in enumerate(probe_vectors):
        _timed(t, "storage.search", storage.search, q, limit=10)
        _timed(
            t,
            "storage.search scope+categories",
            storage.search,
            q,
            scope_prefix=f"/crew/{AGENTS[i % len(AGENTS)]}",
            categories=["decision"],
            limit=10,
        )
    extra = []
    for i in range(50):
        rec = MemoryRecord(
            id=f"probe-{i}",
            content=f"probe memory {i}",
            scope="/probe",
            categories=["probe"],
            embedding=embed([f"probe memory {i}"])[0],
        )
        _timed(t, "storage.save (1 record)", storage.save, [rec])
        extra.append(rec.id)
    for rid in extra:
        _timed(t, "storage.delete (1 id)", storage.delete, record_ids=[rid])

    victims = [r.id for r in memory.list_records(scope="/crew/writer", limit=20)]
    for rid in victims:
        _timed(t, "Memory.forget (1 id)", memory.forget, record_ids=[rid])
    _timed(t, "Memory.list_scopes", memory.list_scopes, "/crew")
    seen["scopes"] = memory.list_scopes("/crew")
    seen["forget scope"] = _timed(t, "Memory.forget (scope)", memory.forget, scope="/crew/planner")
    seen["left"] = storage.count()
    store = getattr(storage, "store", None)
    if store is not None:
        seen["cache"] = store.stats()["cache"]
    return t, seen


def _quiet_crewai_console() -> None:
    """CrewAI prints a panel for every memory save; thousands of them would bury the
    table. Its console listener has no public switch, so its verbose flag is turned off
    when it exists (nothing else changes: the events still fire)."""
    try:
        from crewai.events.event_listener import event_listener

        event_listener.formatter.verbose = False
    except (ImportError, AttributeError):
        pass


def _items(n: int) -> list[dict]:
    items = list(memories(n))
    for item in items:
        # remember_many shares one importance per batch: bands keep batches reasonably big.
        item["importance_band"] = round(item["importance"], 1)
        item["importance"] = item["importance_band"]
    return items


def run(
    n: int = 1000,
    dim: int = 1536,
    recalls: int = 100,
    backends: tuple[str, ...] = ("ferromem", "lancedb"),
    workdir: str | None = None,
    progress: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Runs the workload on each backend (a fresh store each) and returns
    ``{"timings": {backend: {op: [seconds]}}, "seen": {backend: {...}}, "n", "dim"}``.
    ``progress``, when given, is called with a line as each backend and phase starts."""
    from crewai import Memory
    from crewai.memory.storage.backend import StorageBackend
    from crewai.memory.storage.lancedb_storage import LanceDBStorage

    _quiet_crewai_console()

    from ..embedders import HashingEmbedder
    from .memory import MemoryStorage

    items = _items(n)
    texts = [i["content"] for i in items] + QUERIES + recall_texts(items, recalls)
    embed = _TableEmbedder(HashingEmbedder(dim), texts)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ferromem-crewai-demo-")
        root = tmp.name
    else:
        root = workdir
    factories: dict[str, Callable[[], StorageBackend]] = {
        "ferromem": lambda: MemoryStorage(os.path.join(root, "ferromem")),
        "lancedb": lambda: LanceDBStorage(path=os.path.join(root, "lancedb"), compact_every=100),
    }
    out: dict[str, Any] = {"n": n, "dim": dim, "timings": {}, "seen": {}}
    try:
        for name in backends:
            storage = factories[name]()
            memory = Memory(
                storage=storage, embedder=embed, llm="offline-no-llm", consolidation_threshold=1.0
            )
            started = time.perf_counter()

            def step(phase: str, name: str = name, started: float = started) -> None:
                if progress is not None:
                    progress(f"  [{time.perf_counter() - started:6.1f} s] {name}: {phase}")

            try:
                out["timings"][name], out["seen"][name] = _workload(
                    memory, storage, items, embed, recalls, step
                )
                step("done")
            finally:
                memory.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return out


def _ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1e3, q))


def print_report(result: dict[str, Any], write: Callable[[str], Any] = print) -> None:
    """The timing table (p50 / p95 ms and the p50 ratio) and the results that differ."""
    timings, seen = result["timings"], result["seen"]
    names = list(timings)
    ours = names[0]
    write(f"\nCrewAI Memory workload: {result['n']} memories, {result['dim']}-dim embeddings\n")
    header = f"{'operation':40s}" + "".join(f"{b + ' p50 / p95 ms':>26s}" for b in names)
    if len(names) > 1:
        header += f"{'speed-up p50':>14s}"
    write(header)
    for op in timings[ours]:
        row = f"{op:40s}"
        for b in names:
            s = timings[b].get(op, [])
            row += f"{_ms(s, 50):>13.3f} / {_ms(s, 95):>9.3f}" if s else f"{'-':>26s}"
        if len(names) > 1 and timings[names[1]].get(op):
            row += f"{_ms(timings[names[1]][op], 50) / _ms(timings[ours][op], 50):>13.1f}x"
        write(row)
    if len(names) < 2:
        return
    other = names[1]
    a, b = seen[ours], seen[other]
    write(f"\nresults ({ours} vs {other}):")
    write(f"  memories stored: {a['stored']} vs {b['stored']}; left at the end: {a['left']} vs {b['left']}")
    for kind in ("recall", "recall scope", "recall categories", "recall scope+categories"):
        pairs = list(zip(a[kind], b[kind]))
        same = sum(x == y for x, y in pairs)
        same_set = sum(x != y and sorted(x) == sorted(y) for x, y in pairs)
        got_a = sum(len(x) for x, _ in pairs) / max(len(pairs), 1)
        got_b = sum(len(y) for _, y in pairs) / max(len(pairs), 1)
        write(
            f"  {kind:26s} identical {same}/{len(pairs)}, same set in another order {same_set}, "
            f"results per recall {got_a:.1f} vs {got_b:.1f}"
        )
    if a["scopes"] != b["scopes"]:
        write(f"  list_scopes('/crew'): {a['scopes']} vs {b['scopes']}")
    write(f"  forget(scope='/crew/planner') deleted {a['forget scope']} vs {b['forget scope']}")
    if "cache" in a:
        c = a["cache"]
        write(f"  {ours} result cache: {c['hits']} hits, {c['misses']} misses ({100 * c['hit_rate']:.0f}%)")
    write(
        "  (orders differ where scores differ: ferromem scores cosine similarity, LanceDB "
        "1/(1+L2); with a filter, LanceDB filters after fetching 3x the limit, so it can return "
        "fewer results than match)"
    )
