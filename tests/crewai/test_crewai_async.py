"""The CrewAI adapters' async methods await the native async store: the same answers as
their sync twins, 1,000 concurrent calls without a Python thread for the store's work,
and cancellation that leaves every save whole or absent.

No network: embeddings come from ferromem's offline HashingEmbedder.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

crewai = pytest.importorskip("crewai", reason="CrewAI 1.x is not installed (pip install 'crewai>=1.15,<2')")

import ferromem  # noqa: E402
import ferromem.postgres  # noqa: E402
from crewai.memory.types import MemoryRecord  # noqa: E402
from ferromem.crewai import MemoryStorage  # noqa: E402
from ferromem.crewai.rag import KnowledgeStorage, RagClient  # noqa: E402
from ferromem.embedders import HashingEmbedder  # noqa: E402

DIM = 64
EMBED = HashingEmbedder(DIM)
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)

pytestmark = pytest.mark.skipif(
    getattr(ferromem.store, "_core", None) is None, reason="the native engine is not built"
)


@pytest.fixture(params=["files", pytest.param("postgres", marks=pytest.mark.postgres)])
def where(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Callable[[str], Any]]:
    """``where(name)``: the path (a folder, or a PostgreSQL URL naming a store of this test's
    own) an adapter of this test is given; the test's PostgreSQL stores are dropped after."""
    if request.param == "files":
        yield lambda name: tmp_path / name
        return
    dsn = os.environ.get("FERROMEM_TEST_POSTGRES_DSN")
    if not dsn:
        pytest.skip("FERROMEM_TEST_POSTGRES_DSN is not set: no PostgreSQL server to test against")
    tag = f"async_{uuid.uuid4().hex[:12]}_"

    def url(name: str) -> str:
        return f"{dsn}{'&' if '?' in dsn else '?'}store={urllib.parse.quote(name, safe='')}"

    try:
        ferromem.postgres.migrate(dsn)
    except ferromem.StorageError as exc:
        pytest.skip(f"the PostgreSQL server of FERROMEM_TEST_POSTGRES_DSN is unreachable: {exc}")
    yield lambda name: url(tag + name)
    for name in ferromem.postgres.list_stores(dsn, tag):
        ferromem.postgres.drop_store(url(name))


def vec(text: str) -> list[float]:
    return EMBED([text])[0].tolist()


def records() -> list[MemoryRecord]:
    """Records with every shape the adapter treats specially: no embedding, a zero one,
    metadata only Python equality can filter (True, 1, None), nested scopes."""
    out = []
    for i in range(60):
        text = f"note {i} about {'tea' if i % 3 else 'coffee'}"
        embedding: list[float] | None = vec(text)
        if i % 17 == 5:
            embedding = None
        elif i % 19 == 7:
            embedding = [0.0] * DIM
        out.append(
            MemoryRecord(
                id=f"m{i}",
                content=text,
                embedding=embedding,
                scope=f"/crew/agent{i % 3}",
                categories=["even"] if i % 2 == 0 else ["odd"],
                metadata={"flag": i % 4 == 0, "n": i % 5, "maybe": None if i % 2 else "x"},
                importance=0.1 * (i % 10),
                created_at=T0 + timedelta(minutes=i),
                last_accessed=T0 + timedelta(minutes=i),
            )
        )
    return out


SEARCHES = [
    {"query_embedding": vec("note 4 about tea"), "limit": 5},
    {"query_embedding": vec("coffee"), "scope_prefix": "/crew/agent1", "limit": 3, "min_score": -1.0},
    {"query_embedding": vec("tea"), "categories": ["even"], "metadata_filter": {"flag": True}, "limit": 10},
    {"query_embedding": vec("tea"), "metadata_filter": {"n": 1, "maybe": None}, "limit": 4},
    {"query_embedding": [0.0] * DIM, "limit": 4},
    {"query_embedding": vec("x"), "limit": 0},
]

DELETES = [
    {"record_ids": ["m1", "m2", "absent"]},
    {"scope_prefix": "/crew/agent2", "metadata_filter": {"flag": True}},
    {"categories": ["odd"], "older_than": T0 + timedelta(minutes=20)},
    {"record_ids": []},
    {},
]


def test_memory_storage_async_methods_answer_as_the_sync_ones(where):
    sync_side = MemoryStorage(where("sync"))
    async_side = MemoryStorage(where("async"))
    sync_side.save(records())
    expected = [sync_side.search(**query) for query in SEARCHES]
    expected_deletes = [sync_side.delete(**criteria) for criteria in DELETES]

    async def main():
        await async_side.asave(records())
        await async_side.asave([])
        found = [await async_side.asearch(**query) for query in SEARCHES]
        deleted = [await async_side.adelete(**criteria) for criteria in DELETES]
        return found, deleted

    found, deleted = asyncio.run(main())
    assert found == expected
    assert any(found) and all(isinstance(score, float) for hits in found for _, score in hits)
    assert deleted == expected_deletes and deleted[-1] > 0
    assert async_side.count() == sync_side.count() == 0
    sync_side.close()
    async_side.close()


def test_memory_storage_a_thousand_concurrent_calls(where):
    """500 asave and 500 asearch at once: no error, every save stored, every search as the
    sync store answers it, and no Python thread started for the store's work."""
    storage = MemoryStorage(where("mem"))
    storage.save(records())
    queries = [vec(f"query {i}") for i in range(500)]
    expected = [storage.search(q, scope_prefix="/crew", limit=5) for q in queries]

    async def main():
        await storage.asearch(queries[0], limit=1)  # the runtime's pool is up
        before = threading.active_count()

        async def save(i):
            await storage.asave([MemoryRecord(id=f"new{i}", content=f"new {i}", embedding=vec(f"new {i}"))])

        results = await asyncio.gather(
            *(
                storage.asearch(queries[i // 2], scope_prefix="/crew", limit=5)
                if i % 2 == 0
                else save(i // 2)
                for i in range(1000)
            )
        )
        return results, before, threading.active_count()

    results, before, after = asyncio.run(main())
    assert results[0::2] == expected
    assert after == before
    assert storage.count() == 60 + 500
    storage.close()


def test_cancelled_saves_are_whole_or_absent(where):
    storage = MemoryStorage(where("mem"), durability="full")
    rng = random.Random(5)

    def batch(i):
        return [
            MemoryRecord(id=f"c{i}-{j}", content=f"c {i} {j}", embedding=vec(f"c {i} {j}")) for j in range(4)
        ]

    async def main():
        handled = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: handled.append(context))
        tasks = [asyncio.ensure_future(storage.asave(batch(i))) for i in range(80)]
        for _ in range(20):
            for task in tasks:
                if rng.random() < 0.04:
                    task.cancel()
            await asyncio.sleep(0 if rng.random() < 0.6 else 0.001)
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.3)  # a cancelled save that had started is still finishing
        hits = await storage.asearch(vec("c 3 1"), limit=1)
        return tasks, handled, hits

    tasks, handled, hits = asyncio.run(main())
    assert handled == []
    assert (hits and hits[0][0].id == "c3-1") or tasks[3].cancelled()
    for i, task in enumerate(tasks):
        present = [storage.get_record(f"c{i}-{j}") is not None for j in range(4)]
        assert present in ([True] * 4, [False] * 4), (i, present)
        if not task.cancelled():
            assert present == [True] * 4
    storage.close()


def test_rag_client_and_knowledge_storage_async_answer_as_the_sync_ones(where):
    docs = [
        {
            "content": f"passage {i} on {'green' if i % 2 else 'black'} tea",
            "metadata": {"n": i % 3, "ok": i % 2 == 0},
        }
        for i in range(30)
    ] + [{"content": ""}]
    sync_client = RagClient(where("sync"), embedding_function=EMBED)
    async_client = RagClient(where("async"), embedding_function=EMBED)
    queries = [
        {"query": "green tea", "limit": 4, "score_threshold": None},
        {"query": "black tea", "metadata_filter": {"n": 2}, "score_threshold": 0.1},
        {"query": "tea", "metadata_filter": {"ok": True}, "limit": 10, "score_threshold": None},
        {"query": "tea", "metadata_filter": {"$and": [{"n": 1}, {"n": 2}]}},
    ]
    sync_client.add_documents(collection_name="c", documents=docs, batch_size=7)
    expected = [sync_client.search(collection_name="c", **q) for q in queries]
    expected.append(sync_client.search(collection_name="missing", query="tea"))
    sync_knowledge = KnowledgeStorage(client=sync_client, collection_name="k")
    sync_knowledge.save(["a cup of tea", "a mug of coffee"])
    expected_knowledge = sync_knowledge.search(["tea"], score_threshold=0.0)

    async def main():
        await async_client.aadd_documents(collection_name="c", documents=docs, batch_size=7)
        found = [await async_client.asearch(collection_name="c", **q) for q in queries]
        found.append(await async_client.asearch(collection_name="missing", query="tea"))
        knowledge = KnowledgeStorage(client=async_client, collection_name="k")
        await knowledge.asave(["a cup of tea", "a mug of coffee"])
        await knowledge.asave([])
        knowledge_found = await knowledge.asearch(["tea"], score_threshold=0.0)
        empty = await knowledge.asearch([])
        await knowledge.areset()
        await knowledge.areset()  # a collection that is gone: nothing to do
        after_reset = await knowledge.asearch(["tea"])
        return found, knowledge_found, empty, after_reset

    found, knowledge_found, empty, after_reset = asyncio.run(main())
    assert found == expected
    assert any(found)
    assert knowledge_found == expected_knowledge and knowledge_found
    assert empty == [] and after_reset == []
    sync_client.close()
    async_client.close()
