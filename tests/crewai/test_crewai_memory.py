"""ferromem.crewai.MemoryStorage under CrewAI 1.x's real Memory, side by side with CrewAI's
built-in LanceDB backend.

No network: embeddings come from ferromem's offline HashingEmbedder, and every remember()
passes scope, categories and importance explicitly, which is how CrewAI skips its LLM
analysis; consolidation (an LLM call) is disabled with consolidation_threshold=1.0 except
where a stub LLM is given.

The storage's own tests and those through Memory run on a local folder and again on a
PostgreSQL store, the URL given where the path goes (the ``location`` fixture of
tests/_postgres_fixtures.py; skipped with the reason when no server is reachable).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

crewai = pytest.importorskip("crewai", reason="CrewAI 1.x is not installed (pip install 'crewai>=1.15,<2')")

import ferromem  # noqa: E402
from _helpers import HOSTILE  # noqa: E402 - tests/ is on sys.path
from crewai import Memory  # noqa: E402
from crewai.memory.storage.backend import EmbeddingDimensionMismatchError, StorageBackend  # noqa: E402
from crewai.memory.storage.lancedb_storage import LanceDBStorage  # noqa: E402
from crewai.memory.types import MemoryRecord, ScopeInfo  # noqa: E402
from ferromem.crewai import MemoryStorage  # noqa: E402
from ferromem.embedders import HashingEmbedder  # noqa: E402

DIM = 64
EMBED = HashingEmbedder(DIM)


def vec(text: str) -> list[float]:
    return EMBED([text])[0].tolist()


def record(content: str, **fields) -> MemoryRecord:
    return MemoryRecord(content=content, embedding=vec(content), **fields)


def memory_on(storage) -> Memory:
    return Memory(storage=storage, embedder=EMBED, consolidation_threshold=1.0, llm="stub")


def on_database(storage: MemoryStorage) -> bool:
    """Whether the storage's store lives in PostgreSQL (it has a URL, and no file)."""
    location = storage.store.location or ""
    return storage.store.path is None and location.startswith("postgresql://")


@pytest.fixture
def storage(location, location_kind):
    s = MemoryStorage(location("mem"))
    if location_kind == "postgres" and not on_database(s):
        s.close()
        pytest.fail(
            f"MemoryStorage(<postgresql:// URL>) did not open a PostgreSQL store: "
            f"path={s.path!r}, store.location={s.store.location!r}"
        )
    yield s
    s.close()


@pytest.fixture
def lance(tmp_path):
    return LanceDBStorage(path=tmp_path / "lance", compact_every=0)


def test_implements_crewai_storage_backend(storage):
    assert isinstance(storage, StorageBackend)
    for name in ("touch_records", "close", "optimize", "asave", "asearch", "adelete"):
        assert callable(getattr(storage, name))
    if not on_database(storage):
        assert storage.path.endswith("memories.ferro")


def test_default_path_honours_crewai_storage_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "crewai-home"))
    s = MemoryStorage()
    try:
        assert s.path == str(tmp_path / "crewai-home" / "memory" / "memories.ferro")
    finally:
        s.close()
    explicit = MemoryStorage(tmp_path / "one.ferro")
    assert explicit.path == str(tmp_path / "one.ferro")
    explicit.close()


# ---------------------------------------------------------------- round trips


def test_every_field_round_trips_exactly(storage, location):
    created = datetime(2024, 2, 29, 23, 59, 59, 999999)
    accessed = datetime(2025, 1, 1, 0, 0, 0, 1)
    original = MemoryRecord(
        id="id/with 'quotes' and %_\\",
        content="the content",
        scope="/team/it's/100%_/x",
        categories=["b", "a", "ünïcode"],
        metadata={"n": 1, "f": 0.25, "t": True, "none": None, "list": [1, "x"], "d": {"k": "v"}},
        importance=0.875,
        created_at=created,
        last_accessed=accessed,
        embedding=vec("the content"),
        source="user:42",
        private=True,
    )
    storage.save([original])
    got = storage.get_record(original.id)
    assert got.model_dump() == original.model_dump()
    assert np.allclose(got.embedding, original.embedding, atol=1e-7)
    reopened = MemoryStorage(location("mem"))
    assert reopened.get_record(original.id).model_dump() == original.model_dump()
    reopened.close()


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_round_trip_and_never_widen_a_filter(storage, text):
    rid = "id:" + text
    # The hostile text sits inside the path: a prefix ending in a symbol matches as a plain
    # string prefix by contract (docs/architecture.md), so the sibling differs after "end".
    scope = "/tenant/" + text + "/end"
    storage.save(
        [
            record(
                "hostile " + text,
                id=rid,
                scope=scope,
                categories=[text or "empty"],
                metadata={text: text},
                source=text,
            ),
            # Neighbours a string-built LIKE or a careless escape would match too.
            record(
                "sibling",
                id=rid + "x",
                scope=scope + "x",
                categories=[(text or "empty") + "x"],
                metadata={text: text + "x"},
            ),
            record(
                "wildcard sibling",
                id="w" + rid,
                scope="/tenant/" + text.replace("%", "a").replace("_", "b") + "%",
                metadata={text: "other"},
            ),
        ]
    )
    got = storage.get_record(rid)
    assert (got.content, got.scope, got.categories, got.metadata, got.source) == (
        "hostile " + text,
        scope,
        [text or "empty"],
        {text: text},
        text,
    )
    hits = storage.search(vec("hostile " + text), scope_prefix=scope, limit=10, min_score=-1)
    assert [r.id for r, _ in hits] == [rid]
    hits = storage.search(vec("x"), categories=[text or "empty"], limit=10, min_score=-1)
    assert [r.id for r, _ in hits] == [rid]
    hits = storage.search(vec("x"), metadata_filter={text: text}, limit=10, min_score=-1)
    assert [r.id for r, _ in hits] == [rid]
    assert storage.count(scope) == 1
    assert storage.delete(scope_prefix=scope) == 1
    assert storage.count() == 2


def test_scopes_without_leading_slash_mean_the_same_path(storage):
    storage.save([record("raw", id="raw", scope="crew/x"), record("canon", id="canon", scope="/crew/y")])
    assert storage.get_record("raw").scope == "crew/x"  # byte for byte
    assert storage.count("crew") == 2 and storage.count("/crew/x") == 1
    assert storage.list_scopes("crew") == ["/crew/x", "/crew/y"]
    assert [r.id for r, _ in storage.search(vec("raw"), scope_prefix="crew/x/", min_score=-1)] == ["raw"]


def test_records_without_embedding_are_kept_but_never_ranked(storage):
    storage.save([MemoryRecord(content="   ", id="blank", scope="/a"), record("real", id="real", scope="/a")])
    assert storage.get_record("blank").embedding is None
    assert storage.count("/a") == 2
    for limit in (1, 5):
        assert [r.id for r, _ in storage.search(vec("real"), limit=limit, min_score=-1)] == ["real"]


# ---------------------------------------------------------------- contract details


def test_dimension_change_raises_crewai_error_and_writes_nothing(storage):
    storage.save([record("first", id="a")])
    with pytest.raises(EmbeddingDimensionMismatchError) as info:
        storage.save([record("ok", id="b"), MemoryRecord(content="big", id="c", embedding=[0.5] * (DIM + 1))])
    assert (info.value.stored_dim, info.value.new_dim) == (DIM, DIM + 1)
    with pytest.raises(EmbeddingDimensionMismatchError):
        storage.search([1.0] * 3)
    with pytest.raises(EmbeddingDimensionMismatchError):
        storage.update(MemoryRecord(content="x", id="a", embedding=[1.0] * 3))
    assert storage.count() == 1 and storage.get_record("b") is None


def test_unserializable_metadata_is_a_type_error_and_nothing_is_written(storage):
    with pytest.raises(TypeError, match="not JSON serializable"):
        storage.save([record("good", id="g"), record("bad", id="b", metadata={"when": object()})])
    assert storage.count() == 0


def test_metadata_filter_uses_python_equality_like_crewai(storage, lance):
    records = [
        record("one", id="int1", metadata={"v": 1}),
        record("true", id="true", metadata={"v": True}),
        record("float1", id="float1", metadata={"v": 1.0}),
        record("none", id="none", metadata={"v": None}),
        record("missing", id="missing", metadata={}),
        record("list", id="list", metadata={"v": [1, 2]}),
        record("str", id="str", metadata={"v": "1"}),
        record("seven", id="seven", metadata={"v": 7}),
    ]
    storage.save(records)
    lance.save(records)
    for value in (1, True, None, [1, 2], "1", 7, 7.0, 0):
        ours = sorted(
            r.id for r, _ in storage.search(vec("q"), metadata_filter={"v": value}, limit=20, min_score=-1)
        )
        theirs = sorted(r.id for r, _ in lance.search(vec("q"), metadata_filter={"v": value}, limit=20))
        assert ours == theirs, value


def test_filtered_search_is_exact_where_lancedb_loses_results(storage, lance):
    """A category held by 5 of 300 records: ferromem returns all 5 (min(limit, matches));
    LanceDB fetches 3 * limit neighbours first and filters afterwards."""
    rng = np.random.default_rng(7)
    records = []
    for i in range(300):
        rare = i % 60 == 0
        records.append(
            MemoryRecord(
                id=f"r{i}",
                content=f"memory {i}",
                scope="/s",
                categories=["rare"] if rare else ["common"],
                metadata={"bucket": "rare" if rare else "common"},
                embedding=rng.standard_normal(DIM).tolist(),
            )
        )
    storage.save(records)
    lance.save(records)
    query = rng.standard_normal(DIM).tolist()
    ours = storage.search(query, categories=["rare"], limit=10, min_score=-1)
    assert {r.id for r, _ in ours} == {f"r{i}" for i in range(0, 300, 60)}
    assert len(storage.search(query, metadata_filter={"bucket": "rare"}, limit=10, min_score=-1)) == 5
    theirs = lance.search(query, categories=["rare"], limit=10)
    assert len(theirs) < 5  # the built-in backend's post-filter recall loss
    # Ranking is exact: scores equal a brute-force cosine over the matching records.
    matrix = np.array([r.embedding for r in records if "rare" in r.categories])
    q = np.asarray(query)
    expected = np.sort(matrix @ q / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q)))[::-1]
    assert np.allclose([s for _, s in ours], expected, atol=1e-5)


def test_scope_prefix_respects_boundaries_where_lancedb_leaks(storage, lance):
    records = [
        record("alpha", id="a", scope="/tenant/a"),
        record("alpha b", id="ab", scope="/tenant/ab"),
        record("root", id="root", scope="/"),
    ]
    storage.save(records)
    lance.save(records)
    assert [r.id for r, _ in storage.search(vec("alpha"), scope_prefix="/tenant/a", min_score=-1)] == ["a"]
    assert {r.id for r, _ in lance.search(vec("alpha"), scope_prefix="/tenant/a")} == {"a", "ab"}
    assert storage.delete(scope_prefix="/tenant/a") == 1
    assert {r.id for r in storage.list_records()} == {"ab", "root"}
    # LanceDB's scoped delete also removes the root-scope record and the sibling.
    assert lance.delete(scope_prefix="/tenant/a") == 3


def test_delete_ands_every_criterion(storage):
    old = datetime(2020, 1, 1)
    storage.save(
        [
            record("old a", id="oa", scope="/a", created_at=old, categories=["x"]),
            record("new a", id="na", scope="/a", categories=["x"]),
            record("old b", id="ob", scope="/b", created_at=old, categories=["x"]),
        ]
    )
    assert storage.delete(record_ids=["oa", "ob"], scope_prefix="/a") == 1
    assert storage.delete(scope_prefix="/a", older_than=datetime(2021, 1, 1)) == 0
    assert storage.delete(categories=["x"], older_than=datetime(2021, 1, 1)) == 1
    assert [r.id for r in storage.list_records()] == ["na"]
    assert storage.delete() == 1 and storage.count() == 0
    assert storage.delete(record_ids=[]) == 0


def test_listing_scope_info_categories_and_pagination(storage):
    base = datetime(2025, 6, 1)
    storage.save(
        [
            record(
                f"m{i}",
                id=f"m{i}",
                scope=f"/p/{'x' if i % 2 else 'y'}/{i}",
                categories=["even" if i % 2 == 0 else "odd", "all"],
                created_at=base + timedelta(minutes=i),
            )
            for i in range(10)
        ]
    )
    page = storage.list_records("/p", limit=3, offset=2)
    assert [r.id for r in page] == ["m7", "m6", "m5"]
    assert storage.list_records(limit=0) == [] and storage.list_records(offset=-1) == []
    info = storage.get_scope_info("/p/")
    assert isinstance(info, ScopeInfo)
    assert (info.path, info.record_count, info.categories, info.child_scopes) == (
        "/p",
        10,
        ["all", "even", "odd"],
        ["/p/x", "/p/y"],
    )
    assert (info.oldest_record, info.newest_record) == (base, base + timedelta(minutes=9))
    assert storage.get_scope_info("/nothing").record_count == 0
    assert storage.list_categories("/p/x") == {"odd": 5, "all": 5}
    assert storage.list_scopes("/") == ["/p"]
    assert storage.count("/p/y") == 5


def test_touch_update_and_aware_datetimes(storage):
    aware = datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    storage.save([record("t", id="t", created_at=aware, last_accessed=aware)])
    got = storage.get_record("t")
    assert got.created_at == datetime(2025, 3, 1, 10, 0)  # naive UTC, like CrewAI's own
    before = datetime.utcnow()
    storage.touch_records(["t", "missing"])
    assert storage.get_record("t").last_accessed >= before - timedelta(seconds=1)
    storage.update(got.model_copy(update={"content": "changed", "scope": "/moved"}))
    assert (storage.get_record("t").content, storage.count("/moved")) == ("changed", 1)


def test_reset_scope_and_all(storage):
    storage.save([record("a", id="a", scope="/a"), record("ab", id="ab", scope="/ab")])
    storage.reset("/a")
    assert [r.id for r in storage.list_records()] == ["ab"]
    storage.reset()
    assert storage.count() == 0
    storage.save([MemoryRecord(content="new dim", embedding=[1.0, 2.0])])  # dimension free again
    assert storage.store.dim == 2


def test_async_variants(storage):
    async def main():
        await storage.asave([record("async one", id="a1", categories=["c"]), record("async two", id="a2")])
        hits = await storage.asearch(vec("async one"), categories=["c"], min_score=-1)
        deleted = await storage.adelete(record_ids=["a2"])
        return hits, deleted

    hits, deleted = asyncio.run(main())
    assert [r.id for r, _ in hits] == ["a1"] and deleted == 1


def test_single_save_of_50k_records(location):
    storage = MemoryStorage(location("big"), vector_dim=16)
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((50_000, 16)).tolist()
    records = [
        MemoryRecord(id=f"r{i}", content=f"c{i}", scope=f"/s/{i % 7}", embedding=v)
        for i, v in enumerate(vectors)
    ]
    storage.save(records)
    assert storage.count() == 50_000 and storage.count("/s/3") == len(range(3, 50_000, 7))
    hit, score = storage.search(vectors[123], limit=1)[0]
    assert hit.id == "r123" and score == pytest.approx(1.0, abs=1e-5)
    storage.close()


# ---------------------------------------------------------------- through CrewAI's Memory


def _scenario(memory: Memory) -> dict:
    """One workload through CrewAI's public Memory API; returns what a user observes."""
    out: dict = {}
    memory.remember(
        "The deploy key rotates every Monday",
        scope="/ops/deploy",
        categories=["security", "ops"],
        importance=0.9,
    )
    memory.remember_many(
        [f"Customer {i} prefers email contact" for i in range(12)],
        scope="/crm/customers",
        categories=["crm"],
        importance=0.4,
    )
    memory.remember(
        "Private note for alice",
        scope="/crm/notes",
        categories=["crm"],
        importance=0.5,
        source="alice",
        private=True,
    )
    memory.drain_writes()
    # Top hit only: below it, LanceDB also returns records with a negative cosine (its
    # 1/(1+L2) score is always > 0), which min_score=0.0 leaves out here (as in Qdrant Edge).
    out["recall"] = [
        m.record.content for m in memory.recall("deploy key rotation", depth="shallow", limit=3)
    ][:1]
    out["recall_scoped"] = sorted(
        m.record.content
        for m in memory.recall(
            "customer email", scope="/crm/customers", categories=["crm"], depth="shallow", limit=20
        )
    )
    out["private_hidden"] = [
        m.record.content
        for m in memory.recall("private note alice", depth="shallow", limit=20)
        if m.record.private
    ]
    out["private_owner"] = [
        m.record.content
        for m in memory.recall("private note alice", depth="shallow", limit=20, source="alice")
        if m.record.private
    ]
    out["scopes"] = memory.list_scopes("/")
    out["crm_scopes"] = memory.list_scopes("/crm")
    out["categories"] = memory.list_categories()
    out["info"] = memory.info("/crm").record_count
    out["tree"] = memory.tree()
    target = memory.list_records(scope="/ops")[0]
    updated = memory.update(target.id, content="The deploy key rotates every Friday", importance=0.95)
    out["updated"] = (memory._storage.get_record(target.id).content, updated.importance)
    out["scoped_view"] = sorted(
        m.record.content for m in memory.scope("/crm").recall("customer", depth="shallow", limit=50)
    )
    out["slice"] = sorted(
        m.record.content
        for m in memory.slice(["/ops", "/crm/notes"]).recall(
            "note deploy", depth="shallow", limit=50, include_private=True
        )
    )
    out["forgot"] = memory.forget(scope="/crm/customers", categories=["crm"])
    out["count_after_forget"] = len(memory.list_records(limit=1000))
    memory.reset(scope="/ops")
    out["after_scoped_reset"] = sorted(r.scope for r in memory.list_records(limit=1000))
    return out


def test_memory_behaves_like_crewai_builtin_backend(location, tmp_path):
    ours = memory_on(MemoryStorage(location("ferro")))
    theirs = memory_on(LanceDBStorage(path=tmp_path / "lance", compact_every=0))
    got, expected = _scenario(ours), _scenario(theirs)
    ours.close()
    theirs.close()
    assert got == expected
    assert got["recall"][0] == "The deploy key rotates every Monday"
    assert got["private_hidden"] == [] and got["private_owner"] == ["Private note for alice"]
    assert got["forgot"] == 12 and got["count_after_forget"] == 2


@pytest.mark.parametrize("precision", ["f16", "int8"])
def test_reduced_precision_stores_behave_like_f32_under_memory(tmp_path, precision):
    """CrewAI's Memory on a store holding f16 or int8 rows (int8 re-ranked with the exact
    vectors from the file) observes what it observes on the default f32 store."""
    store = ferromem.open(tmp_path / "small" / "memories.ferro", precision=precision)
    small = memory_on(MemoryStorage(store=store))
    full = memory_on(MemoryStorage(tmp_path / "full"))
    got, expected = _scenario(small), _scenario(full)
    small.close()
    full.close()
    store.close()
    assert got == expected
    assert got["recall"][0] == "The deploy key rotates every Monday"


def test_read_only_memory_changes_nothing(location):
    storage = MemoryStorage(location("ro"))
    writer = memory_on(storage)
    writer.remember("kept", scope="/a", categories=["c"], importance=0.5)
    before = storage.get_record(storage.list_records()[0].id)
    reader = Memory(storage=storage, embedder=EMBED, read_only=True, llm="stub")
    assert reader.remember("dropped", scope="/a", categories=["c"], importance=0.5) is None
    assert [m.record.content for m in reader.recall("kept", depth="shallow")] == ["kept"]
    assert reader.update(before.id, content="changed").content == "kept"
    after = storage.get_record(before.id)
    assert after.last_accessed == before.last_accessed and storage.count() == 1
    storage.close()


def test_consolidation_threshold_is_cosine(location):
    """A save whose cosine with an existing record is >= consolidation_threshold goes to
    the LLM; with cosine scores, Memory's 0.85 default keeps its meaning."""
    storage = MemoryStorage(location("c"))
    text = "the quarterly report is due on the first friday of april"
    storage.save([record(text, id="x", scope="/r")])
    [(hit, score)] = storage.search(vec(text + " please"), scope_prefix="/r", limit=1)
    cos = float(np.dot(vec(text), vec(text + " please")))
    assert score == pytest.approx(cos, abs=1e-6)
    storage.close()


# ---------------------------------------------------------------- concurrency


def test_background_saves_and_concurrent_recalls(location):
    storage = MemoryStorage(location("cc"))
    memory = memory_on(storage)
    errors: list[BaseException] = []
    stop = threading.Event()

    def recaller():
        try:
            while not stop.is_set():
                memory.recall("fact", depth="shallow", limit=5)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=recaller) for _ in range(4)]
    for t in threads:
        t.start()
    for batch in range(10):
        memory.remember_many(
            [f"fact {batch}-{i} about topic {i}" for i in range(20)],
            scope=f"/b/{batch}",
            categories=["fact"],
            importance=0.5,
        )
    memory.drain_writes()
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert storage.count() == 200
    memory.close()


def _process_writer(path: str, worker: int, n: int) -> None:
    storage = MemoryStorage(path)
    for i in range(n):
        storage.save([record(f"worker {worker} item {i}", id=f"w{worker}-{i}", scope=f"/w/{worker}")])
        storage.search(vec("item"), limit=3)
    storage.close()


def test_several_processes_write_one_path(location):
    path = str(location("shared"))
    MemoryStorage(path, vector_dim=DIM).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_writer, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    storage = MemoryStorage(path)
    assert storage.count() == 160
    assert storage.list_scopes("/w") == [f"/w/{w}" for w in range(4)]
    storage.close()


# ---------------------------------------------------------------- install()


def test_install_routes_memory_and_crew_through_ferromem(tmp_path, monkeypatch):
    import ferromem.crewai as fc
    from crewai import Agent, Crew, Task
    from crewai.memory.storage import factory

    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "home"))
    before = factory._factory
    fc.install()
    try:
        assert fc.installed()
        default = Memory(embedder=EMBED)
        assert isinstance(default._storage, MemoryStorage)
        assert default._storage.path == str(tmp_path / "home" / "memory" / "memories.ferro")
        other = Memory(storage=str(tmp_path / "elsewhere"), embedder=EMBED)
        assert other._storage.path == str(tmp_path / "elsewhere" / "memories.ferro")
        default.remember("shared fact", scope="/x", categories=["c"], importance=0.5)
        second = Memory(embedder=EMBED)  # shares the store (one replica per file)
        assert second._storage.store is default._storage.store
        default.close()  # must not close the store under `second`
        assert [m.record.content for m in second.recall("shared fact", depth="shallow")] == ["shared fact"]
        explicit = LanceDBStorage(path=tmp_path / "lance")
        assert Memory(storage=explicit, embedder=EMBED)._storage is explicit
        assert factory.resolve_memory_storage("qdrant-edge") is None  # left to CrewAI
        agent = Agent(role="r", goal="g", backstory="b", llm="gpt-4o-mini")
        task = Task(description="d", expected_output="e", agent=agent)
        crew = Crew(agents=[agent], tasks=[task], memory=True)
        assert isinstance(crew._memory._storage, MemoryStorage)
        # Knowledge and the "ferromem" RAG provider.
        from crewai.knowledge.knowledge import Knowledge
        from crewai.rag.factory import create_client
        from ferromem.crewai import KnowledgeStorage, RagClient, RagConfig

        assert isinstance(Knowledge(collection_name="docs", sources=[]).storage, KnowledgeStorage)
        assert isinstance(create_client(RagConfig(embedding_function=EMBED)), RagClient)
    finally:
        fc.uninstall()
    assert not fc.installed() and factory._factory is before
    from crewai.knowledge.knowledge import Knowledge
    from ferromem.crewai import KnowledgeStorage

    assert not isinstance(Knowledge(collection_name="docs", sources=[]).storage, KnowledgeStorage)
    assert not isinstance(Memory(storage=str(tmp_path / "lance2"), embedder=EMBED)._storage, MemoryStorage)


@pytest.mark.postgres
def test_install_with_a_postgresql_url_routes_memory_and_crew_to_the_database(
    postgres, tmp_path, monkeypatch
):
    """install(path=URL): CrewAI's default Memory and a Crew's memory live in the database;
    the rows are there for any other process (read back with psycopg, not through ferromem)."""
    import ferromem.crewai as fc
    from crewai import Agent, Crew, Task

    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # a URL mistaken for a path must not land in the checkout
    url = postgres.url()
    fc.install(path=url)
    try:
        default = Memory(embedder=EMBED)
        assert isinstance(default._storage, MemoryStorage)
        assert on_database(default._storage), (default._storage.path, default._storage.store.location)
        default.remember("a fact kept in postgres", scope="/x", categories=["c"], importance=0.5)
        second = Memory(embedder=EMBED)
        assert on_database(second._storage)
        recalled = [m.record.content for m in second.recall("fact kept in postgres", depth="shallow")]
        assert recalled == ["a fact kept in postgres"]
        agent = Agent(role="r", goal="g", backstory="b", llm="gpt-4o-mini")
        task = Task(description="d", expected_output="e", agent=agent)
        crew = Crew(agents=[agent], tasks=[task], memory=True)
        assert isinstance(crew._memory._storage, MemoryStorage) and on_database(crew._memory._storage)
        default.close()
        second.close()
    finally:
        fc.uninstall()
    assert not (tmp_path / "home" / "memory").exists(), "install(path=URL) wrote a local memory store"
    from psycopg import sql

    with postgres.connect() as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT s.name FROM {}.ferromem_records r JOIN {}.ferromem_stores s ON s.id = r.store_id "
                "WHERE r.content = convert_to(%s, 'UTF8')"
            ).format(sql.Identifier(postgres.schema), sql.Identifier(postgres.schema)),
            ["a fact kept in postgres"],
        ).fetchall()
    assert len(rows) == 1, rows


def test_install_rejects_bad_switches():
    import ferromem.crewai as fc

    with pytest.raises(ferromem.InvalidInputError):
        fc.install(memory="yes")
    with pytest.raises(ferromem.InvalidInputError):
        fc.install(durability="fast")
    assert not fc.installed()


def test_bad_input_is_typed(storage):
    with pytest.raises(ferromem.InvalidInputError):
        storage.save("not a list")
    with pytest.raises(ferromem.InvalidInputError):
        storage.save([{"content": "dict, not a record"}])
    storage.save([record("x", id="x")])
    with pytest.raises(ferromem.InvalidInputError):
        storage.search(vec("x"), limit="3")
    with pytest.raises(ferromem.InvalidVectorError):
        storage.search([float("nan")] * DIM)
    with pytest.raises(ferromem.InvalidFilterError):
        storage.search(vec("x"), metadata_filter=["k"])
    with pytest.raises(ferromem.InvalidMetadataError, match="reserved"):
        storage.save([record("y", id="y", metadata={"\x00ferromem.scope": "/x"})])
    assert storage.count() == 1
    assert json.loads(json.dumps(storage.list_categories())) == {}


def test_search_results_skip_embeddings_and_update_keeps_the_vector(location):
    storage = MemoryStorage(location("e"))
    storage.save([record("vector kept", id="v", scope="/a")])
    [(hit, _)] = storage.search(vec("vector kept"), limit=1)
    assert hit.embedding is None  # as in Qdrant Edge; get_record has it
    storage.update(hit.model_copy(update={"content": "renamed"}))
    assert np.allclose(storage.get_record("v").embedding, vec("vector kept"), atol=1e-7)
    assert storage.get_record("v").content == "renamed"
    storage.close()
    with_vectors = MemoryStorage(location("e"), search_embeddings=True)
    [(hit, _)] = with_vectors.search(vec("vector kept"), limit=1)
    assert np.allclose(hit.embedding, vec("vector kept"), atol=1e-7)
    with_vectors.close()


def test_consolidation_through_a_stub_llm_updates_in_place(location):
    """CrewAI's consolidation: a new memory whose cosine with a stored one reaches 0.85 goes
    to the LLM, which here answers "update the old record, do not insert". The storage
    sees CrewAI's search (cosine scores), update and no extra insert."""
    import re

    from crewai.llms.base_llm import BaseLLM

    class ConsolidatingStub(BaseLLM):
        calls: int = 0

        def call(
            self,
            messages,
            tools=None,
            callbacks=None,
            available_functions=None,
            from_task=None,
            from_agent=None,
            response_model=None,
        ):
            self.calls += 1
            text = messages[-1]["content"] if isinstance(messages, list) else messages
            record_id = re.search(r"id=(\S+) \|", text).group(1)
            return json.dumps(
                {
                    "actions": [
                        {
                            "action": "update",
                            "record_id": record_id,
                            "new_content": "The office wifi password is tulip43",
                        }
                    ],
                    "insert_new": False,
                }
            )

    storage = MemoryStorage(location("consolidate"))
    llm = ConsolidatingStub(model="stub")
    memory = Memory(storage=storage, embedder=EMBED, llm=llm)  # consolidation_threshold 0.85
    memory.remember("The office wifi password is tulip42", scope="/office", categories=["it"], importance=0.5)
    first = storage.list_records()[0]
    new = "The office wifi password is tulip42 today"
    assert float(np.dot(vec(new), vec(first.content))) >= 0.85
    memory.remember(new, scope="/office", categories=["it"], importance=0.5)
    assert memory._llm_instance.calls == 1
    [only] = storage.list_records()
    assert (only.id, only.content) == (first.id, "The office wifi password is tulip43")
    memory.close()


def test_crew_with_offline_embedder_spec_after_install(tmp_path, monkeypatch):
    """The path a CrewAI user takes: install(), then a Crew with memory=True and an
    embedder *spec* (CrewAI's "custom" provider), and Knowledge with the same spec."""
    import ferromem.crewai as fc
    from crewai import Agent, Crew, Task
    from crewai.knowledge.knowledge import Knowledge
    from crewai.knowledge.source.string_knowledge_source import StringKnowledgeSource
    from ferromem.crewai import HashingEmbeddingFunction

    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "home"))
    spec = {"provider": "custom", "config": {"embedding_callable": HashingEmbeddingFunction.of_dim(DIM)}}
    fc.install()
    try:
        agent = Agent(role="r", goal="g", backstory="b", llm="gpt-4o-mini")
        crew = Crew(
            agents=[agent],
            tasks=[Task(description="d", expected_output="e", agent=agent)],
            memory=True,
            embedder=spec,
        )
        memory = crew._memory
        memory.remember("the launch moved to friday", scope="/plans", categories=["dates"], importance=0.7)
        [match] = memory.recall("launch friday", depth="shallow")
        assert match.record.scope == "/crew/crew/plans" and memory._storage.store.dim == DIM
        knowledge = Knowledge(
            collection_name="kb",
            embedder=spec,
            sources=[StringKnowledgeSource(content="The moon is made of rock.")],
        )
        knowledge.add_sources()
        [hit] = knowledge.query(["moon rock"], score_threshold=0.3)
        assert hit["content"] == "The moon is made of rock."
        assert (tmp_path / "home" / "knowledge_ferromem").is_dir()
    finally:
        fc.uninstall()
