"""The CrewAI adapters on PostgreSQL: a ``postgresql://`` URL wherever they take a path
(MemoryStorage, RagClient and KnowledgeStorage, install(), the 0.x storages, the
importers), through CrewAI's real Memory, Knowledge and Crew.

The tests that need a server use the one named by ``FERROMEM_TEST_POSTGRES_DSN`` (CI sets
``postgresql://postgres@127.0.0.1:5432/test``) and skip, saying why, without it or when it
cannot be reached. Each test gets a schema of its own, created by ferromem on first open
and dropped with everything in it at the end of the session. The tests at the top need
no server: what the adapters do with a URL before they connect (names, checks, repr).

Where a test reads what another client or process wrote, the reader's URL sets
``max_staleness=0`` (check the database before every read), so it sees every committed
write at once and no test waits on a clock.
"""

from __future__ import annotations

import multiprocessing
import secrets
import threading
import urllib.parse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

crewai = pytest.importorskip("crewai", reason="CrewAI 1.x is not installed (pip install 'crewai>=1.15,<2')")

import ferromem  # noqa: E402
import ferromem.postgres  # noqa: E402
from _postgres_fixtures import DSN_ENV, PostgresServer, with_query  # noqa: E402
from chromadb.api.types import EmbeddingFunction as ChromaEmbeddingFunction  # noqa: E402
from crewai import Memory  # noqa: E402
from crewai.memory.types import MemoryRecord  # noqa: E402
from crewai.rag.embeddings.providers.custom.embedding_callable import (  # noqa: E402
    CustomEmbeddingFunction,
)
from ferromem._location import MAX_STORE_NAME, DatabaseLocation, store_path  # noqa: E402
from ferromem.crewai import KnowledgeStorage, MemoryStorage, RagClient, RagConfig  # noqa: E402
from ferromem.crewai._names import database_store_name  # noqa: E402
from ferromem.crewai.rag import CollectionExistsError, CollectionNotFoundError  # noqa: E402
from ferromem.crewai.v0 import LTMStorage, RAGStorage  # noqa: E402
from ferromem.embedders import HashingEmbedder  # noqa: E402

DIM = 64
EMBED = HashingEmbedder(DIM)
# A password no server here checks (the test server trusts local connections), put in
# the URLs of the tests that look for it in everything shown.
SECRET = "Pw-" + secrets.token_hex(6)


class HashingEmbeddingFunction(CustomEmbeddingFunction, ChromaEmbeddingFunction):
    """HashingEmbedder as CrewAI's custom embedding function, for embedder specs."""

    def __init__(self, **_: object) -> None:
        self._embedder = HashingEmbedder(DIM)

    def __call__(self, input):  # noqa: A002 - the protocol's name
        return self._embedder.embed(input)


SPEC = {"provider": "custom", "config": {"embedding_callable": HashingEmbeddingFunction}}


def vec(text: str) -> list[float]:
    return EMBED([text])[0].tolist()


def memory_on(storage: Any) -> Memory:
    # Explicit scope, categories and importance skip CrewAI's LLM analysis, and
    # consolidation_threshold=1.0 its consolidation: nothing here calls an LLM.
    return Memory(storage=storage, embedder=EMBED, consolidation_threshold=1.0, llm="stub")


def with_password(url: str, password: str) -> str | None:
    """``url`` with ``password`` as its password; None when the URL names no user."""
    scheme, _, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    user = userinfo.partition(":")[0]
    if not at or not user:
        return None
    return f"{scheme}://{user}:{urllib.parse.quote(password, safe='')}@{hostport}{slash}{tail}"


def utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def files_under(root: Path) -> list[str]:
    """The files under ``root`` (CrewAI itself may make its empty storage directory)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


# ------------------------------------------------------------------------- the server


@pytest.fixture
def url(postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """``url(**options)``: a URL of a schema of this test (``store=`` and the other options
    as given). The test runs in an empty folder with CrewAI's storage directory in it, so
    that whatever an adapter wrote on disk shows up in ``files_under(tmp_path)``."""
    schema = postgres.new_schema("crewai")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "crewai-home"))

    def make(**options: Any) -> str:
        return with_query(postgres.dsn, schema=schema, **options)

    return make


@pytest.fixture
def secret_url(url: Callable[..., str]) -> Callable[..., str]:
    """Like ``url``, with SECRET as the password (the server does not check it)."""

    def make(**options: Any) -> str:
        out = with_password(url(**options), SECRET)
        if out is None:
            pytest.skip(f"{DSN_ENV} names no user, so its URL cannot carry a password")
        return out

    return make


# ---------------------------------------------------------------- no server needed


def test_url_options_are_read_and_replaced_as_the_core_reads_them():
    location = store_path("postgresql://u:pw@h:5432/db?schema=s&store=a%2Fb+c&pool_size=2")
    assert isinstance(location, DatabaseLocation)
    assert location.store == "a/b c"
    other = location.with_store("k/é x+&=%")
    assert other.store == "k/é x+&=%"
    assert other.url.startswith("postgresql://u:pw@h:5432/db?")
    assert sorted(other.url.partition("?")[2].split("&"))[:2] == ["pool_size=2", "schema=s"]
    assert "pw" not in other.shown and "pool_size" not in other.shown
    assert store_path("postgres://h/db").store is None
    for bad in ("store=%zz", "store=%C3", "store=a&store=b"):
        with pytest.raises(ferromem.InvalidInputError):
            _ = store_path("postgresql://h/db?" + bad).store
    for name in ("", "x" * (MAX_STORE_NAME + 1), "a\0b", "\ud800"):
        with pytest.raises(ferromem.InvalidInputError):
            location.with_store(name)


def test_collection_store_names_stay_distinct_and_fit_the_database():
    assert database_store_name("docs", "knowledge") == "knowledge/docs"
    assert database_store_name("Docs und Ä/ü", None) == "Docs und Ä/ü"
    fits = "x" * (MAX_STORE_NAME - len("knowledge/") - 1)
    assert database_store_name(fits, "knowledge") == "knowledge/" + fits
    awkward = [
        fits + "y",  # the whole would be 200 characters: never kept as it is
        "x" * 500,
        "x" * 499 + "y",
        "a\0b",
        "a\\x00b",  # what a NUL is escaped to, as a name of its own
        "lone \ud800 surrogate",
        "lone \udc00 surrogate",
        # A short name shaped like the shortened form of another.
        "x" * 80 + "~" + "0" * 64,
    ]
    names = [database_store_name(n, "knowledge") for n in [*awkward, "docs"]]
    assert len(set(names)) == len(names)
    for original, name in zip(awkward, names):
        assert name.startswith("knowledge/")
        assert "\0" not in name
        name.encode("utf-8")  # no lone surrogate left
        if len("knowledge/" + original) >= MAX_STORE_NAME or "\0" in original or not utf8(original):
            assert len(name) == MAX_STORE_NAME and name[-65] == "~"
        else:
            assert name == "knowledge/" + original and len(name) < MAX_STORE_NAME
    with pytest.raises(ferromem.InvalidInputError):
        database_store_name("", "knowledge")


def test_adapters_never_show_the_password_and_refuse_bad_locations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "crewai-home"))
    # Opening connects only on first use: no server is needed to build these.
    url = f"postgresql://alice:{SECRET}@db.invalid:5432/mem?schema=s&store=team&pool_size=2"
    client = RagClient(url, embedding_function=EMBED)
    config = RagConfig(path=url, embedding_function=EMBED)
    storage = KnowledgeStorage(path=url, embedder=SPEC, collection_name="kb")
    assert client.path is None and client.collection_path("docs") is None
    assert client.location == "postgresql://alice@db.invalid:5432/mem?schema=s&store=team"
    assert client.collection_location("docs").endswith("store=team%2Fdocs")
    for shown in (
        repr(client),
        str(client),
        client.collection_location("docs"),
        repr(config),
        repr(storage),
        str(storage.model_dump()),
    ):
        assert "alice@db.invalid:5432/mem" in shown and SECRET not in shown
    # KnowledgeStorage keeps the URL's shown form once its client has the URL.
    assert storage.path == storage.client.location
    # Mistyped or unknown locations are typed errors, never a folder named after them.
    for bad, error in (
        ("postgresql:/db.invalid/mem", ferromem.InvalidInputError),
        ("postgres:db.invalid", ferromem.InvalidInputError),
        ("mysql://db.invalid/mem", ferromem.UnsupportedStoreError),
        ("memory:", ferromem.InvalidInputError),
    ):
        for make in (
            MemoryStorage,
            lambda where: RagClient(where, embedding_function=EMBED),
            lambda where: RAGStorage("short_term", path=where, embedder=EMBED),
            LTMStorage,
        ):
            with pytest.raises(error):
                make(bad)
    # A RagClient's store option is the prefix of its collections: one path segment.
    for prefix in ("a/b", "x" * 101):
        with pytest.raises(ferromem.InvalidInputError, match="prefix"):
            RagClient(with_query(url, store=prefix), embedding_function=EMBED)
    assert files_under(tmp_path) == []


# ---------------------------------------------------------------- MemoryStorage


@pytest.mark.postgres
def test_memory_storage_is_one_store_of_the_database(url):
    default = MemoryStorage(url())
    table = MemoryStorage(url(), table_name="crew_a")
    named = MemoryStorage(url(store="team/one"), table_name="ignored")
    try:
        assert ferromem.postgres.list_stores(url()) == ["crew_a", "memories", "team/one"]
        for storage, store in ((default, "memories"), (table, "crew_a"), (named, "team%2Fone")):
            assert storage.path is None and storage.store.path is None
            assert storage.location == storage.store.location
            assert storage.location.startswith("postgresql://") and storage.location.endswith(
                "store=" + store
            )
            assert repr(storage) == f"MemoryStorage(location={storage.location!r})"
        default.save([MemoryRecord(content="one", embedding=vec("one"), scope="/a")])
        named.save([MemoryRecord(content="two", embedding=vec("two"), scope="/b")])
        assert (default.count(), table.count(), named.count()) == (1, 0, 1)
        # close() lets the store go; the next call opens the same database store again.
        default.close()
        assert [r.content for r in default.list_records()] == ["one"]
    finally:
        for storage in (default, table, named):
            storage.close()
    assert files_under(Path.cwd()) == []


def _scenario(memory: Memory) -> dict:
    """One workload through CrewAI's Memory; returns what a user observes."""
    out: dict = {}
    memory.remember(
        "The deploy key rotates every Monday", scope="/ops/deploy", categories=["ops"], importance=0.9
    )
    memory.remember_many(
        [f"Customer {i} prefers email contact" for i in range(8)],
        scope="/crm/customers",
        categories=["crm"],
        importance=0.4,
    )
    memory.remember(
        "Alice's private note",
        scope="/crm/notes",
        categories=["crm"],
        importance=0.5,
        source="alice",
        private=True,
    )
    memory.remember("The tenant next door", scope="/crmx", categories=["crm"], importance=0.5)
    memory.drain_writes()
    out["recall"] = [m.record.content for m in memory.recall("deploy key rotation", depth="shallow", limit=1)]
    out["scoped"] = sorted(
        m.record.content for m in memory.recall("customer email", scope="/crm", depth="shallow", limit=50)
    )
    out["private"] = sorted(
        m.record.content
        for m in memory.recall("private note", depth="shallow", limit=50, source="alice")
        if m.record.private
    )
    out["scopes"] = memory.list_scopes("/")
    out["crm_scopes"] = memory.list_scopes("/crm")
    out["categories"] = memory.list_categories()
    out["info"] = memory.info("/crm").record_count
    out["tree"] = memory.tree()
    target = memory.list_records(scope="/ops")[0]
    memory.update(target.id, content="The deploy key rotates every Friday")
    out["updated"] = memory._storage.get_record(target.id).content
    out["forgot"] = memory.forget(scope="/crm/customers", categories=["crm"])
    one = memory.list_records(scope="/crmx")[0]
    out["forgot_by_id"] = memory.forget(record_ids=[one.id])
    out["after_forget"] = sorted(r.content for r in memory.list_records(limit=1000))
    memory.reset(scope="/ops")
    out["after_scoped_reset"] = sorted(r.scope for r in memory.list_records(limit=1000))
    memory.reset()
    out["after_reset"] = memory.list_records(limit=1000)
    return out


@pytest.mark.postgres
def test_crewai_memory_on_a_url_answers_as_on_a_local_store(url, tmp_path):
    on_database = memory_on(MemoryStorage(url()))
    local = memory_on(MemoryStorage(tmp_path / "local"))
    try:
        got, expected = _scenario(on_database), _scenario(local)
    finally:
        on_database.close()
        local.close()
    assert got == expected
    assert got["recall"] == ["The deploy key rotates every Monday"]
    assert got["scoped"] == sorted(f"Customer {i} prefers email contact" for i in range(8))
    assert got["forgot"] == 8 and got["forgot_by_id"] == 1
    assert got["after_scoped_reset"] == ["/crm/notes"] and got["after_reset"] == []
    assert all(name.startswith("local/") for name in files_under(tmp_path)), files_under(tmp_path)


def _other_host(location: str, results: Any) -> None:
    """Another host: reads what the first one remembered, then remembers something."""
    memory = memory_on(MemoryStorage(location))
    try:
        seen = [m.record.content for m in memory.recall("launch date", scope="/plans", depth="shallow")]
        memory.remember(
            "Bob's team owns the release notes", scope="/owners", categories=["people"], importance=0.6
        )
        memory.drain_writes()
        results.put(("ok", seen))
    except BaseException as exc:  # reported to the test, which fails with it
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        memory.close()


@pytest.mark.postgres
def test_memories_are_shared_by_every_host_on_the_url(url):
    first = memory_on(MemoryStorage(url(max_staleness=0)))
    second_storage = MemoryStorage(url(max_staleness=0))
    try:
        first.remember(
            "The launch date moved to Friday", scope="/plans", categories=["dates"], importance=0.7
        )
        first.drain_writes()
        # Another MemoryStorage in this process: its own replica, caught up from the database.
        assert [r.content for r in second_storage.list_records()] == ["The launch date moved to Friday"]
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        host = ctx.Process(target=_other_host, args=(url(), results))
        host.start()
        status, seen = results.get(timeout=300)
        host.join(60)
        assert (status, seen, host.exitcode) == ("ok", ["The launch date moved to Friday"], 0)
        # Both replicas of this process see what the other host wrote.
        hits = first.recall("who owns release notes", scope="/owners", depth="shallow")
        assert [m.record.content for m in hits] == ["Bob's team owns the release notes"]
        assert [r.content for r in second_storage.list_records(scope_prefix="/owners")] == [
            "Bob's team owns the release notes"
        ]
        assert second_storage.list_scopes("/") == ["/owners", "/plans"]
        # A delete on one host is a delete for all of them.
        assert second_storage.delete(scope_prefix="/plans") == 1
        assert first.recall("launch date", scope="/plans", depth="shallow") == []
    finally:
        first.close()
        second_storage.close()


# ---------------------------------------------------------------- RagClient


def docs_of(*contents: str) -> list[dict]:
    return [{"content": c} for c in contents]


def found(client: RagClient, collection: str, query: str, **kwargs: Any) -> list[str]:
    kwargs.setdefault("score_threshold", None)
    return [r["content"] for r in client.search(collection_name=collection, query=query, **kwargs)]


@pytest.mark.postgres
def test_rag_collections_are_stores_of_the_database_shared_by_clients(url):
    one = RagClient(url(max_staleness=0), embedding_function=EMBED)
    two = RagClient(url(max_staleness=0), embedding_function=EMBED)
    prefix = "knowledge/"
    try:
        one.create_collection(collection_name="docs")
        for client in (one, two):  # exclusive, whichever client asks
            with pytest.raises(CollectionExistsError):
                client.create_collection(collection_name="docs")
        one.add_documents(collection_name="docs", documents=docs_of("green tea", "black coffee"))
        assert found(two, "docs", "green tea", limit=1) == ["green tea"]
        two.add_documents(collection_name="docs", documents=docs_of("fresh water"))
        assert sorted(found(one, "docs", "drink", limit=10)) == ["black coffee", "fresh water", "green tea"]
        store = two.get_or_create_collection(collection_name="notes")
        assert store.path is None and store.location == two.collection_location("notes")
        # Searching a collection that does not exist finds nothing and creates nothing.
        assert found(one, "nothing here", "tea") == []
        assert ferromem.postgres.list_stores(url(), prefix) == [prefix + "docs", prefix + "notes"]
        # Deleted by one client: the other finds it gone, and a write there makes it anew.
        two.delete_collection(collection_name="docs")
        assert found(one, "docs", "green tea") == []
        with pytest.raises(CollectionNotFoundError):
            one.delete_collection(collection_name="docs")
        one.add_documents(collection_name="docs", documents=docs_of("oolong"))
        assert found(two, "docs", "tea") == ["oolong"]
        one.create_collection(collection_name="fresh")
        two.delete_collection(collection_name="fresh")
        one.create_collection(collection_name="fresh")  # dropped meanwhile: created again
        # reset() drops every collection of the prefix, whichever client made it, and
        # nothing else in the database.
        outside = MemoryStorage(url())
        outside.close()
        one.reset()
        assert ferromem.postgres.list_stores(url(), prefix) == []
        assert ferromem.postgres.list_stores(url()) == ["memories"]
        assert found(two, "notes", "tea") == []
    finally:
        one.close()
        two.close()
    assert files_under(Path.cwd()) == []


@pytest.mark.postgres
def test_creating_one_collection_from_many_clients_at_once_succeeds_once(url):
    clients = [RagClient(url(), embedding_function=EMBED) for _ in range(8)]
    start = threading.Barrier(len(clients))
    outcomes: list[str] = []

    def create(client: RagClient) -> None:
        start.wait()
        try:
            client.create_collection(collection_name="race")
            outcomes.append("created")
        except CollectionExistsError:
            outcomes.append("exists")
        except BaseException as exc:  # reported by the assertion below
            outcomes.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=create, args=(c,)) for c in clients]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(outcomes) == ["created"] + ["exists"] * (len(clients) - 1)
        assert ferromem.postgres.list_stores(url()) == ["knowledge/race"]
    finally:
        for client in clients:
            client.close()


@pytest.mark.postgres
def test_rag_store_option_is_the_prefix_of_the_collections(url):
    team_a = RagClient(url(store="team-a"), embedding_function=EMBED)
    team_b = RagClient(url(store="team-b"), embedding_function=EMBED)
    try:
        team_a.add_documents(collection_name="docs", documents=docs_of("alpha"))
        team_b.add_documents(collection_name="docs", documents=docs_of("beta"))
        assert found(team_a, "docs", "x") == ["alpha"] and found(team_b, "docs", "x") == ["beta"]
        assert ferromem.postgres.list_stores(url()) == ["team-a/docs", "team-b/docs"]
        team_a.reset()
        assert ferromem.postgres.list_stores(url()) == ["team-b/docs"]
    finally:
        team_a.close()
        team_b.close()


@pytest.mark.postgres
def test_rag_collection_names_that_are_no_store_names_as_they_are(url):
    client = RagClient(url(), embedding_function=EMBED)
    names = ["x" * 300, "x" * 299 + "y", "a\0b", "a\\x00b", "lone \ud800", "Ünïcode / with slash", "x" * 189]
    try:
        for i, name in enumerate(names):
            client.add_documents(collection_name=name, documents=docs_of(f"document {i}"))
        for i, name in enumerate(names):
            assert found(client, name, "document") == [f"document {i}"]
        stores = ferromem.postgres.list_stores(url(), "knowledge/")
        assert len(stores) == len(names)
        assert all(len(s) <= MAX_STORE_NAME for s in stores)
        assert "knowledge/Ünïcode / with slash" in stores
        client.delete_collection(collection_name="x" * 300)
        assert found(client, "x" * 299 + "y", "document") == ["document 1"]
    finally:
        client.close()


@pytest.mark.postgres
def test_knowledge_on_a_url(url):
    from crewai.knowledge.knowledge import Knowledge
    from crewai.knowledge.source.string_knowledge_source import StringKnowledgeSource

    storage = KnowledgeStorage(path=url(), embedder=SPEC, collection_name="handbook")
    knowledge = Knowledge(
        collection_name="handbook",
        sources=[StringKnowledgeSource(content="Refunds are issued within 14 days.")],
        storage=storage,
    )
    knowledge.add_sources()
    [hit] = knowledge.query(["refund policy"], score_threshold=0.0)
    assert hit["content"] == "Refunds are issued within 14 days."
    assert ferromem.postgres.list_stores(url()) == ["knowledge/knowledge_handbook"]
    knowledge.reset()
    assert ferromem.postgres.list_stores(url()) == []
    knowledge.reset()  # nothing to reset: no error, as in CrewAI
    storage.close()
    assert files_under(Path.cwd()) == []


# ---------------------------------------------------------------- install()


@pytest.mark.postgres
def test_install_with_a_url_routes_memory_and_knowledge_to_the_database(url, secret_url, tmp_path, capfd):
    import ferromem.crewai as fc
    from crewai import Agent, Crew, Task
    from crewai.knowledge.knowledge import Knowledge
    from crewai.knowledge.source.string_knowledge_source import StringKnowledgeSource
    from crewai.knowledge.storage import knowledge_storage as crew_storage
    from crewai.rag.factory import create_client

    location = secret_url()
    fc.install(path=location, chromadb=True)
    try:
        default = Memory(embedder=EMBED, consolidation_threshold=1.0, llm="stub")
        assert isinstance(default._storage, MemoryStorage)
        assert default._storage.location.endswith("store=memories") and default._storage.path is None
        default.remember("The office opens at nine", scope="/facts", categories=["office"], importance=0.5)
        default.drain_writes()
        second = Memory(embedder=EMBED, consolidation_threshold=1.0, llm="stub")
        assert second._storage.store is default._storage.store  # one replica per store in a process
        default.close()  # must not close the store under `second`
        assert [m.record.content for m in second.recall("office hours", depth="shallow")] == [
            "The office opens at nine"
        ]
        spec = Memory(storage=with_query(location, store="by-spec"), embedder=EMBED)
        assert spec._storage.location.endswith("store=by-spec")
        agent = Agent(role="r", goal="g", backstory="b", llm="gpt-4o-mini")
        crew = Crew(
            agents=[agent], tasks=[Task(description="d", expected_output="e", agent=agent)], memory=True
        )
        assert crew._memory._storage.store is second._storage.store
        knowledge = Knowledge(
            collection_name="docs",
            embedder=SPEC,
            sources=[StringKnowledgeSource(content="The moon is made of rock.")],
        )
        knowledge.add_sources()
        [hit] = knowledge.query(["moon rock"], score_threshold=0.3)
        assert hit["content"] == "The moon is made of rock."
        client = create_client(RagConfig(embedding_function=EMBED))
        assert isinstance(client, RagClient) and client.path is None
        # CrewAI's own KnowledgeStorage asks the "chromadb" provider, served by ferromem.
        theirs = crew_storage.KnowledgeStorage(embedder=SPEC, collection_name="faq")
        theirs.save(["Parcels ship on Tuesdays."])
        stores = ferromem.postgres.list_stores(url())
        assert stores == ["by-spec", "knowledge/knowledge_docs", "knowledge/knowledge_faq", "memories"]
        for shown in (repr(default._storage), repr(client), repr(knowledge), repr(crew._memory._storage)):
            assert SECRET not in shown
        for memory in (second, spec, crew._memory):
            memory.close()
        client.close()
    finally:
        fc.uninstall()
    # Nothing on local disk but the file where CrewAI's Crew keeps its task outputs.
    assert files_under(tmp_path) == ["crewai-home/latest_kickoff_task_outputs.db"]
    out, err = capfd.readouterr()
    assert SECRET not in out and SECRET not in err


# ---------------------------------------------------------------- CrewAI 0.x storages


@pytest.mark.postgres
def test_crewai0_storages_on_a_url(url):
    short_term = RAGStorage("short_term", path=url(), embedder=EMBED)
    entities = RAGStorage("entities", path=url(store="team/entities"), embedder=EMBED)
    ltm = LTMStorage(url())
    try:
        assert short_term.path == store_path(url()).shown and short_term.store.path is None
        short_term.save("The standup is at ten", {"agent": "pm"})
        entities.save("Alice leads the platform team", {"kind": "person"})
        [hit] = short_term.search("standup time", score_threshold=0)
        assert (hit["content"], hit["metadata"]) == ("The standup is at ten", {"agent": "pm"})
        assert (
            entities.search("standup time", score_threshold=0)[0]["content"]
            == "Alice leads the platform team"
        )
        ltm.save("write the report", {"quality": 8}, "1700000000.0", 0.9)
        ltm.save("write the report", {"quality": 9}, "1700000100.0", 0.7)
        assert [e["metadata"]["quality"] for e in ltm.load("write the report", 5)] == [9, 8]
        assert ferromem.postgres.list_stores(url()) == [
            "long_term_memory_storage",
            "memory_short_term",
            "team/entities",
        ]
        reader = RAGStorage("short_term", path=url(max_staleness=0), embedder=EMBED)
        assert [r["content"] for r in reader.search("standup", score_threshold=0)] == [
            "The standup is at ten"
        ]
        short_term.reset()
        assert reader.search("standup", score_threshold=0) == []
        reader.close()
        short_term.close()  # the next call opens the database store again
        short_term.save("After a close", {})
        again = LTMStorage(url())
        assert [e["score"] for e in again.load("write the report", -1)] == [0.7, 0.9]
        again.close()
    finally:
        for storage in (short_term, entities, ltm):
            storage.close()
    assert files_under(Path.cwd()) == []


# ---------------------------------------------------------------- ferromem import


@pytest.mark.postgres
def test_import_lancedb_and_chromadb_into_a_database(url, secret_url, tmp_path):
    import subprocess
    import sys

    import chromadb
    from chromadb.config import Settings
    from crewai.memory.storage.lancedb_storage import LanceDBStorage

    source = tmp_path / "lance"
    records = [
        MemoryRecord(
            id=f"m{i}",
            content=f"memory {i}",
            scope=f"/crew/{i % 2}",
            embedding=vec(f"memory {i}"),
            created_at=datetime(2025, 1, 1, 12, 0, i),
        )
        for i in range(20)
    ]
    LanceDBStorage(path=source, compact_every=0).save(records)
    done = subprocess.run(
        [sys.executable, "-m", "ferromem", "import", "lancedb", str(source), "--to", secret_url()],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "imported 20 memories" in done.stdout
    assert SECRET not in done.stdout + done.stderr
    storage = MemoryStorage(url())
    assert storage.count() == 20
    got = storage.get_record("m3")
    assert got.model_dump() == records[3].model_dump()
    assert np.allclose(got.embedding, records[3].embedding, atol=1e-6)
    storage.close()

    chroma_dir = tmp_path / "chroma"
    chroma = chromadb.PersistentClient(path=str(chroma_dir), settings=Settings(anonymized_telemetry=False))
    texts = [f"fact {i}" for i in range(10)]
    col = chroma.create_collection(
        "knowledge_facts", metadata={"hnsw:space": "cosine"}, embedding_function=None
    )
    col.add(ids=[f"f{i}" for i in range(10)], documents=texts, embeddings=[vec(t) for t in texts])
    del chroma
    from ferromem.crewai.migrate import import_chromadb

    report = import_chromadb(chroma_dir, url(store="imported"), progress=None)
    assert report == {"knowledge_facts": {"source": 10, "imported": 10, "destination_total": 10}}
    client = RagClient(url(store="imported"), embedding_function=EMBED)
    assert found(client, "knowledge_facts", "fact 4", limit=1) == ["fact 4"]
    client.close()
    assert ferromem.postgres.list_stores(url()) == ["imported/knowledge_facts", "memories"]
