"""ferromem.crewai.rag: CrewAI's RAG BaseClient on ferromem, checked against CrewAI's own
ChromaDB helpers and through a real CrewAI Knowledge with real knowledge sources.

No network: vectors come from ferromem's offline HashingEmbedder or from a fixed table.

The client's tests run on a local folder and again on a PostgreSQL URL given where the
path goes (the ``location`` fixture of tests/_postgres_fixtures.py; skipped with the
reason when no server is reachable). Checks of files are made on the folder; on the
database the same promises are checked on the stores the client made there.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time

import numpy as np
import pytest

crewai = pytest.importorskip("crewai", reason="CrewAI 1.x is not installed (pip install 'crewai>=1.15,<2')")

import ferromem  # noqa: E402
from _helpers import HOSTILE  # noqa: E402 - tests/ is on sys.path
from _postgres_fixtures import store_name_of, stores_named_after, with_store  # noqa: E402
from chromadb.api.types import EmbeddingFunction as ChromaEmbeddingFunction  # noqa: E402
from crewai.knowledge.knowledge import Knowledge  # noqa: E402
from crewai.knowledge.source.string_knowledge_source import StringKnowledgeSource  # noqa: E402
from crewai.knowledge.storage import factory as knowledge_factory  # noqa: E402
from crewai.knowledge.storage import knowledge_storage as crew_storage  # noqa: E402
from crewai.rag import factory as rag_factory  # noqa: E402
from crewai.rag.chromadb.client import ChromaDBClient  # noqa: E402
from crewai.rag.chromadb.utils import (  # noqa: E402
    _convert_distance_to_score,
    _prepare_documents_for_chromadb,
)
from crewai.rag.core.base_client import BaseClient  # noqa: E402
from crewai.rag.embeddings.providers.custom import CustomProvider  # noqa: E402
from crewai.rag.embeddings.providers.custom.embedding_callable import (  # noqa: E402
    CustomEmbeddingFunction,
)
from ferromem.crewai.rag import (  # noqa: E402
    CollectionExistsError,
    CollectionNotFoundError,
    InvalidDocumentError,
    KnowledgeStorage,
    RagClient,
    RagConfig,
    collection_file_name,
    create_rag_client,
    knowledge_storage_factory,
)
from ferromem.embedders import HashingEmbedder  # noqa: E402

DIM = 64
EMBED = HashingEmbedder(DIM)


class HashingEmbeddingFunction(CustomEmbeddingFunction, ChromaEmbeddingFunction):
    """HashingEmbedder as a CrewAI custom embedding function (what a user writes for
    ``{"provider": "custom", ...}``); also a Chroma EmbeddingFunction, the type CrewAI's own
    KnowledgeStorage validates the class against."""

    dim = DIM

    def __init__(self, **_: object) -> None:
        self._embedder = HashingEmbedder(self.dim)

    def __call__(self, input):  # noqa: A002 - the protocol's name
        return self._embedder.embed(input)


class WideHashingEmbeddingFunction(HashingEmbeddingFunction):
    dim = 2 * DIM


SPEC = {"provider": "custom", "config": {"embedding_callable": HashingEmbeddingFunction}}
WIDE_SPEC = {"provider": "custom", "config": {"embedding_callable": WideHashingEmbeddingFunction}}


class Table:
    """An embedding function with fixed vectors: text -> row of a table."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors

    def __call__(self, texts):
        return np.stack([self.vectors[t] for t in texts])


class Recorder:
    """Wraps an embedding function and records how many texts each call embedded."""

    def __init__(self, inner, fail_on_call: int | None = None):
        self.inner = inner
        self.calls: list[int] = []
        self.fail_on_call = fail_on_call

    def __call__(self, texts):
        self.calls.append(len(texts))
        if len(self.calls) == self.fail_on_call:
            raise RuntimeError("embedding service unavailable")
        return self.inner(texts)


@pytest.fixture
def client(location):
    c = RagClient(location("rag"), embedding_function=EMBED)
    yield c
    c.close()


def collections_made(c: RagClient, location_kind: str, where) -> list[str]:
    """What the client keeps on its storage: the store files of its folder, or the stores
    it made in the database (their names start with the URL's store name)."""
    if location_kind == "local":
        return ferro_files(c.path) if c.path.exists() else []
    return stores_named_after(where)


def docs_of(*contents: str) -> list[dict]:
    return [{"content": c} for c in contents]


def find(c: RagClient, name: str, query: str, **kwargs) -> list[dict]:
    """A search with no score threshold unless one is given."""
    kwargs.setdefault("score_threshold", None)
    return c.search(collection_name=name, query=query, **kwargs)


def found(c: RagClient, name: str, query: str, **kwargs) -> list[str]:
    return [r["content"] for r in find(c, name, query, **kwargs)]


def stored(c: RagClient, name: str) -> dict[str, tuple[str, dict]]:
    store = c.get_or_create_collection(collection_name=name)
    return {r.id: (r.content, r.metadata) for r in store.list()}


def ferro_files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".ferro"))


# ---------------------------------------------------------------- protocol


def test_implements_crewai_base_client_with_chroma_defaults(client):
    assert isinstance(client, BaseClient)
    for name in (
        "create_collection",
        "get_or_create_collection",
        "add_documents",
        "search",
        "delete_collection",
        "reset",
    ):
        assert callable(getattr(client, name))
        assert inspect.iscoroutinefunction(getattr(client, "a" + name))
    ours = inspect.signature(RagClient.__init__).parameters
    chroma = inspect.signature(ChromaDBClient.__init__).parameters
    for name in ("default_limit", "default_score_threshold", "default_batch_size"):
        assert ours[name].default == chroma[name].default
    defaults = (client.default_limit, client.default_score_threshold, client.default_batch_size)
    assert defaults == (5, 0.6, 100)


def test_default_path_and_lazy_default_embedder(tmp_path, monkeypatch):
    for var in ("OPENAI_API_KEY", "CHROMA_OPENAI_API_KEY", "EMBEDDINGS_OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "home"))
    c = RagClient()  # CrewAI's default embedder needs a key: it is built on first use only
    assert c.path == tmp_path / "home" / "knowledge_ferromem"
    assert callable(c.embedding_function)
    c.create_collection(collection_name="k")
    c.delete_collection(collection_name="k")
    assert c.search(collection_name="missing", query="q") == []
    c.close()


# ---------------------------------------------------------------- documents


def test_document_ids_and_upserts_match_chroma(client):
    docs = [
        {"content": "alpha"},
        {"content": "alpha", "metadata": {"b": 2, "a": 1}},
        {"content": "beta", "doc_id": 42},
        {"content": "gamma", "metadata": {"doc_id": "meta-id", "x": "y"}},
        {"content": "delta", "metadata": [{"first": True}, {"second": 1}]},
        {"content": "epsilon", "metadata": [{}]},
        {"content": "zeta", "metadata": {}},
        {"content": "alpha"},
        {"content": "beta, second version", "doc_id": "42"},
    ]
    prepared = _prepare_documents_for_chromadb(docs)
    expected = {
        doc_id: (text, dict(metadata))
        for doc_id, text, metadata in zip(prepared.ids, prepared.texts, prepared.metadatas)
    }
    client.add_documents(collection_name="docs", documents=docs)
    assert stored(client, "docs") == expected
    assert expected["42"][0] == "beta, second version"  # duplicate ids: the last one wins
    client.add_documents(collection_name="docs", documents=docs)  # same content: upserted
    assert stored(client, "docs") == expected
    again = [{"content": "alpha", "metadata": {"v": 2}}]
    client.add_documents(collection_name="docs", documents=again)
    assert len(stored(client, "docs")) == len(expected) + 1  # the metadata is in the hash


def test_batch_size_is_documents_per_embedding_and_transaction(location):
    recorder = Recorder(EMBED)
    c = RagClient(location("b"), embedding_function=recorder, default_batch_size=40)
    docs = docs_of(*(f"document number {i}" for i in range(250)))
    c.add_documents(collection_name="b", documents=docs, batch_size=100)
    assert recorder.calls == [100, 100, 50]
    recorder.calls.clear()
    c.add_documents(collection_name="b", documents=docs[:90])
    assert recorder.calls == [40, 40, 10]

    c.embedding_function = Recorder(EMBED, fail_on_call=3)
    with pytest.raises(RuntimeError, match="unavailable"):
        c.add_documents(collection_name="f", documents=docs, batch_size=100)
    assert len(stored(c, "f")) == 200  # each batch is its own transaction, as in ChromaDB
    c.close()


@pytest.mark.parametrize(
    "bad, error",
    [
        ("a plain string", TypeError),
        ({"content": 7}, TypeError),
        ({"metadata": {"k": "v"}}, TypeError),
        ({"content": "x", "metadata": {"s": {1, 2}}}, ferromem.InvalidMetadataError),
        ({"content": "x", "metadata": "not a dict"}, ferromem.InvalidMetadataError),
        ({"content": "x", "doc_id": ""}, ferromem.InvalidIdError),
        ({"content": "lone \ud800 surrogate"}, ferromem.InvalidInputError),
    ],
)
def test_a_bad_document_raises_a_typed_error_and_nothing_is_written(location, location_kind, bad, error):
    recorder = Recorder(EMBED)
    c = RagClient(location("bad"), embedding_function=recorder)
    with pytest.raises(error):  # the bad document comes last, after two full batches
        c.add_documents(collection_name="c", documents=docs_of("a", "b", "c", "d") + [bad], batch_size=2)
    assert recorder.calls == []
    assert collections_made(c, location_kind, location("bad")) == []
    c.close()


def test_bad_documents_arguments(client, location, location_kind):
    with pytest.raises(ValueError):
        client.add_documents(collection_name="c", documents=[])
    with pytest.raises(TypeError):
        client.add_documents(collection_name="c", documents="not a list")
    with pytest.raises(ferromem.InvalidInputError):
        client.add_documents(collection_name="c", documents=docs_of("x"), batch_size=0)
    assert collections_made(client, location_kind, location("rag")) == []
    # The protocol promises TypeError, ChromaDB raises ValueError: both callers are served.
    assert issubclass(InvalidDocumentError, TypeError)
    assert issubclass(InvalidDocumentError, ValueError)


# ---------------------------------------------------------------- search


FILTERS = [  # (filter, the equalities it means)
    (None, {}),
    ({"color": "red"}, {"color": "red"}),
    ({"n": 1}, {"n": 1}),
    ({"flag": True}, {"flag": True}),
    ({"flag": 1}, {"flag": 1}),  # Python equality, as CrewAI compares: True == 1
    ({"n": 3, "color": "blue"}, {"n": 3, "color": "blue"}),
    ({"tag": "t7"}, {"tag": "t7"}),
    ({"maybe": None}, {"maybe": None}),
    ({"missing": None}, {"missing": None}),
    ({"$and": [{"color": "red"}, {"n": {"$eq": 2}}]}, {"color": "red", "n": 2}),
    ({"color": {"$eq": "green"}, "n": 0}, {"color": "green", "n": 0}),
    ({"color": "purple"}, {"color": "purple"}),
]


def test_filtered_search_is_exact_against_numpy(location):
    rng = np.random.default_rng(7)
    n, dim = 90, 16
    matrix = rng.standard_normal((n + 4, dim)).astype(np.float32)
    texts = [f"doc {i}" for i in range(n)]
    queries = [f"query {j}" for j in range(4)]
    c = RagClient(location("exact"), embedding_function=Table(dict(zip(texts + queries, matrix))))
    metadatas = [
        {
            "color": ("red", "green", "blue")[i % 3],
            "n": i % 5,
            "flag": i % 2 == 0,
            "maybe": None if i % 4 == 0 else "x",
            "tag": f"t{i}",
        }
        for i in range(n)
    ]
    docs = [
        {"doc_id": f"d{i:03}", "content": text, "metadata": metadata}
        for i, (text, metadata) in enumerate(zip(texts, metadatas))
    ]
    c.add_documents(collection_name="exact", documents=docs, batch_size=32)
    unit = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float64)
    for flt, equalities in FILTERS:
        matching = [i for i in range(n) if all(metadatas[i].get(k) == v for k, v in equalities.items())]
        for j, query in enumerate(queries):
            scores = np.clip((1 + unit[matching] @ unit[n + j]) / 2, 0, 1)
            for limit in (1, 5, 100):
                for threshold in (None, 0.5, 0.56):
                    expected = sorted(
                        (
                            (f"d{i:03}", s)
                            for i, s in zip(matching, scores)
                            if not threshold or s >= threshold
                        ),
                        key=lambda pair: (-pair[1], pair[0]),
                    )[:limit]
                    got = find(c, "exact", query, limit=limit, metadata_filter=flt, score_threshold=threshold)
                    assert [r["id"] for r in got] == [i for i, _ in expected], (flt, limit)
                    assert np.allclose([r["score"] for r in got], [s for _, s in expected], atol=1e-6)
                    if threshold is None:
                        assert len(got) == min(limit, len(matching))
                    for r in got:
                        assert r["metadata"] == metadatas[int(r["id"][1:])]
                        assert r["content"] == texts[int(r["id"][1:])]
    contradiction = {"color": "red", "$and": [{"color": "green"}]}
    assert find(c, "exact", "query 0", limit=100, metadata_filter=contradiction) == []
    c.close()


def test_scores_use_chroma_cosine_scale_and_threshold(location):
    e1, e2 = np.eye(2, dtype=np.float32)
    diagonal = (e1 + e2) / np.sqrt(2)
    table = Table({"q": e1, "same": e1, "opposite": -e1, "orthogonal": e2, "diagonal": diagonal})
    c = RagClient(location("scores"), embedding_function=table)
    names = ("same", "opposite", "orthogonal", "diagonal")
    c.add_documents(collection_name="s", documents=[{"content": t, "doc_id": t} for t in names])

    def scores(**kwargs):
        return {r["id"]: r["score"] for r in c.search(collection_name="s", query="q", **kwargs)}

    everything = scores(score_threshold=None)
    assert list(everything) == ["same", "diagonal", "orthogonal", "opposite"]  # best first
    cosines = {"same": 1.0, "diagonal": float(diagonal @ e1), "orthogonal": 0.0, "opposite": -1.0}
    for doc, cosine in cosines.items():
        chroma_score = _convert_distance_to_score(1.0 - cosine, "cosine")
        assert everything[doc] == pytest.approx(chroma_score, abs=1e-6)
    assert (everything["same"], everything["orthogonal"], everything["opposite"]) == (1, 0.5, 0)
    assert scores(score_threshold=0) == everything  # 0 is no threshold, as in Chroma
    assert list(scores()) == ["same", "diagonal"]  # the default threshold: 0.6
    assert list(scores(score_threshold=0.5)) == ["same", "diagonal", "orthogonal"]
    assert list(scores(score_threshold=0.86)) == ["same"]
    assert list(scores(score_threshold=None, limit=2)) == ["same", "diagonal"]
    c.close()


@pytest.mark.parametrize(
    "flt",
    [
        {"n": {"$gt": 1}},
        {"$or": [{"a": 1}, {"a": 2}]},
        {"n": {"$eq": 1, "$ne": 2}},
        "color=red",
        {1: "x"},
        {"$and": {"a": 1}},
    ],
)
def test_unsupported_filters_raise_invalid_filter_error(client, flt):
    client.add_documents(collection_name="f", documents=docs_of("x"))
    with pytest.raises(ferromem.InvalidFilterError):
        client.search(collection_name="f", query="x", metadata_filter=flt)


def test_bad_search_arguments(client):
    client.add_documents(collection_name="f", documents=docs_of("x"))
    for kwargs in ({"limit": 0}, {"limit": True}, {"score_threshold": "high"}, {"query": ["x"]}):
        with pytest.raises(ferromem.InvalidInputError):
            client.search(**{"collection_name": "f", "query": "x", **kwargs})
    for name in ("", None, 3):
        with pytest.raises(ferromem.InvalidInputError):
            client.search(collection_name=name, query="x")


# ---------------------------------------------------------------- hostile strings


def test_hostile_collection_names_stay_in_the_directory_and_apart(client, location, location_kind):
    # Collection names must be non-empty; duplicates would share a file by design.
    names = list(
        dict.fromkeys(
            [h for h in HOSTILE if h]
            + [
                ".",
                "..",
                "../escape",
                "../../etc/passwd",
                "/absolute",
                "a/b",
                "C:\\windows",
                "~",
                "UPPER",
                "upper",
                "Upper",
                "%41",
                "A",
                "%",
                "x" * 300,
                "x" * 299 + "y",
                "\ud800lone",
            ]
        )
    )
    for i, name in enumerate(names):
        docs = [{"content": f"document {i}", "doc_id": "only"}]
        client.add_documents(collection_name=name, documents=docs)
    if location_kind == "local":
        files = {client.collection_path(name) for name in names}
        assert len(files) == len(names)
        assert len({f.name.casefold() for f in files}) == len(names)  # case-insensitive systems
        for f in files:
            assert f.parent == client.path and f.exists() and len(f.name.encode()) < 220
    assert len(collections_made(client, location_kind, location("rag"))) == len(names)
    for i, name in enumerate(names):
        got = find(client, name, f"document {i}")
        assert [(r["id"], r["content"]) for r in got] == [("only", f"document {i}")]
    assert collection_file_name("Hello world") == "%48ello%20world.ferro"


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_ids_content_and_metadata_round_trip_and_never_widen(client, text):
    docs = [
        {"doc_id": "id:" + text, "content": "content:" + text, "metadata": {"k": text, text: 1}},
        {"doc_id": "plain", "content": "plain content", "metadata": {"k": "plain"}},
        {"doc_id": "near", "content": "near content", "metadata": {"k": text + "x"}},
    ]
    name = "c:" + text  # a collection name may not be empty
    client.add_documents(collection_name=name, documents=docs)
    got = find(client, name, "content " + text, metadata_filter={"k": text})
    assert [(r["id"], r["content"], r["metadata"]) for r in got] == [
        ("id:" + text, "content:" + text, {"k": text, text: 1})
    ]
    assert [r["id"] for r in find(client, name, "x", metadata_filter={text: 1})] == ["id:" + text]
    upper = text.upper() if text.upper() != text else "Z"
    for pattern in {"%", "_", "%%", "*", "' OR '1'='1", text[:-1], upper} - {text}:
        assert find(client, name, "x", metadata_filter={"k": pattern}) == []


# ---------------------------------------------------------------- dimensions


def test_collections_have_their_own_dimension_and_changes_are_refused(location):
    narrow = RagClient(location("dims"), embedding_function=HashingEmbedder(8))
    wide = RagClient(location("dims"), embedding_function=HashingEmbedder(16))
    narrow.add_documents(collection_name="small", documents=docs_of("tea with milk"))
    wide.add_documents(collection_name="large", documents=docs_of("coffee black"))
    assert narrow.get_or_create_collection(collection_name="small").dim == 8
    assert wide.get_or_create_collection(collection_name="large").dim == 16
    assert found(narrow, "small", "tea") == ["tea with milk"]
    assert found(wide, "large", "coffee") == ["coffee black"]

    before = stored(narrow, "small")
    with pytest.raises(ferromem.DimensionMismatchError) as info:
        wide.add_documents(collection_name="small", documents=docs_of("new", "tea with milk"))
    assert "dimension mismatch" in str(info.value).lower()
    assert (info.value.expected, info.value.got) == (8, 16)
    assert stored(narrow, "small") == before
    with pytest.raises(ferromem.DimensionMismatchError, match="dimension mismatch"):
        wide.search(collection_name="small", query="tea")
    narrow.close()
    wide.close()


def test_embedding_function_forms(location):
    forms = {
        "matrix": EMBED.embed,
        "list_of_arrays": EMBED,
        "list_of_lists": lambda texts: EMBED.embed(texts).tolist(),
        "spec": SPEC,
        "provider": CustomProvider(embedding_callable=HashingEmbeddingFunction),
    }
    results = set()
    for form, function in forms.items():
        c = RagClient(location(form), embedding_function=function)
        c.add_documents(collection_name="e", documents=docs_of("refund the invoice", "courier"))
        hits = find(c, "e", "invoice refund")
        results.add(tuple((r["id"], round(r["score"], 6)) for r in hits))
        c.close()
    assert len(results) == 1 and len(next(iter(results))) == 2
    bad_functions = (
        lambda texts: EMBED.embed(texts)[:1],  # one vector for two texts
        lambda texts: [[1.0, 2.0], [1.0]],  # ragged
        lambda texts: "vectors",
    )
    for bad in bad_functions:
        c = RagClient(location("bad"), embedding_function=bad)
        with pytest.raises(ferromem.InvalidVectorError):
            c.add_documents(collection_name="e", documents=docs_of("a", "b"))
        c.close()
    with pytest.raises(ferromem.InvalidInputError):
        RagClient(location("forty-two"), embedding_function=42)


# ---------------------------------------------------------------- collections


def test_collection_lifecycle_like_chroma(client, location, location_kind):
    client.create_collection(collection_name="docs")
    assert len(collections_made(client, location_kind, location("rag"))) == 1
    with pytest.raises(CollectionExistsError):
        client.create_collection(collection_name="docs")
    with pytest.raises(ValueError):  # the protocol's error for an existing collection
        client.create_collection(collection_name="docs")
    store = client.get_or_create_collection(collection_name="docs")
    assert isinstance(store, ferromem.Store) and len(store) == 0
    client.add_documents(collection_name="docs", documents=docs_of("x"))
    client.delete_collection(collection_name="docs")
    if location_kind == "local":
        assert not any(client.path.glob(collection_file_name("docs") + "*"))
    assert collections_made(client, location_kind, location("rag")) == []
    with pytest.raises(CollectionNotFoundError):
        client.delete_collection(collection_name="docs")
    with pytest.raises(ValueError):
        client.delete_collection(collection_name="docs")
    assert client.search(collection_name="docs", query="x") == []
    assert collections_made(client, location_kind, location("rag")) == []  # searching creates nothing
    client.create_collection(collection_name="docs")  # free again


def test_reset_deletes_every_collection_and_nothing_else(client, location, location_kind):
    for name in ("a", "b", "c"):
        client.add_documents(collection_name=name, documents=docs_of(name))
    bystanders = []
    if location_kind == "local":
        (client.path / "notes.txt").write_text("not a collection")
    else:
        # Stores beside the client's: one whose name extends its prefix without a separator,
        # one of a name of its own. A reset that matched names carelessly would drop them.
        prefix = store_name_of(location("rag"))
        for name in (prefix + "x", "other-" + prefix):
            url = with_store(location("rag"), name)
            with ferromem.open(url) as store:
                store.add("kept", [1.0, 0.0])
            bystanders.append(url)
    client.reset()
    if location_kind == "local":
        assert sorted(p.name for p in client.path.iterdir()) == ["notes.txt"]
    else:
        left = set(stores_named_after(location("rag"))) - {prefix + "x"}
        assert not left, f"the reset left collections: {sorted(left)}"
    for url in bystanders:
        with ferromem.open(url) as reopened:
            assert reopened.get("kept") is not None, f"{url} lost its record to the client's reset"
    assert find(client, "a", "a") == []
    client.add_documents(collection_name="a", documents=docs_of("again"))
    assert found(client, "a", "again") == ["again"]


def test_a_client_notices_collections_deleted_by_another(location, location_kind):
    # On PostgreSQL the two clients are two replicas (as on two hosts): max_staleness=0
    # makes each check the database before every read, so the test does not wait.
    where = location("two") if location_kind == "local" else f"{location('two')}&max_staleness=0"
    one = RagClient(where, embedding_function=EMBED)
    two = RagClient(where, embedding_function=EMBED)
    two.add_documents(collection_name="shared", documents=docs_of("old"))
    one.delete_collection(collection_name="shared")
    assert find(two, "shared", "old") == []
    two.add_documents(collection_name="shared", documents=docs_of("new"))
    assert found(one, "shared", "new") == ["new"]
    one.close()
    two.close()


def test_reopen_from_disk_and_close(location):
    first = RagClient(location("reopen"), embedding_function=EMBED)
    first.add_documents(
        collection_name="facts", documents=docs_of(*(f"fact number {i} about tea" for i in range(20)))
    )
    before = find(first, "facts", "fact 7 tea", limit=5)
    first.close()
    first.close()  # idempotent
    second = RagClient(location("reopen"), embedding_function=EMBED)
    assert len(before) == 5 and find(second, "facts", "fact 7 tea", limit=5) == before
    second.close()
    # A closed client reopens on its next call (CrewAI keeps using objects it closed).
    assert find(first, "facts", "fact 7 tea", limit=5) == before
    first.close()
    first.delete_collection(collection_name="facts")
    assert find(first, "facts", "tea") == []
    first.close()


# ---------------------------------------------------------------- async and threads


def test_async_variants(client, location, location_kind):
    async def main():
        await client.acreate_collection(collection_name="a")
        with pytest.raises(CollectionExistsError):
            await client.acreate_collection(collection_name="a")
        store = await client.aget_or_create_collection(collection_name="a")
        await client.aadd_documents(collection_name="a", documents=docs_of("async tea", "coffee"))
        hits = await client.asearch(collection_name="a", query="async tea", limit=1, score_threshold=None)
        count = len(store)
        await client.adelete_collection(collection_name="a")
        await client.aadd_documents(collection_name="b", documents=docs_of("b"))
        await client.areset()
        return count, hits

    count, hits = asyncio.run(main())
    assert count == 2 and [r["content"] for r in hits] == ["async tea"]
    assert collections_made(client, location_kind, location("rag")) == []


def test_async_work_does_not_block_the_event_loop(tmp_path):
    def slow(texts):
        time.sleep(0.3)
        return EMBED.embed(texts)

    c = RagClient(tmp_path, embedding_function=slow)

    async def main():
        ticks = 0
        task = asyncio.create_task(c.aadd_documents(collection_name="s", documents=docs_of("x")))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.01)
        await task
        return ticks

    assert asyncio.run(main()) >= 5  # a blocked loop would tick once
    c.close()


def test_threads_add_and_search_one_client_at_once(client):
    writers, calls, per_call = 4, 5, 8
    batches = {
        (w, k): docs_of(*(f"writer {w} call {k} doc {i}" for i in range(per_call)))
        for w in range(writers)
        for k in range(calls)
    }
    expected = {i for docs in batches.values() for i in _prepare_documents_for_chromadb(docs).ids}
    barrier = threading.Barrier(writers + 2)
    errors: list[BaseException] = []

    def write(w):
        barrier.wait()
        for k in range(calls):
            client.add_documents(collection_name="busy", documents=batches[w, k], batch_size=3)

    def search():
        barrier.wait()
        for _ in range(20):
            for content in found(client, "busy", "writer doc", limit=3):
                assert content.startswith("writer ")

    def run(target, *args):
        try:
            target(*args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(write, w)) for w in range(writers)]
    threads += [threading.Thread(target=run, args=(search,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert set(stored(client, "busy")) == expected and len(expected) == writers * calls * per_call


# ---------------------------------------------------------------- CrewAI knowledge

HANDBOOK = [
    "Refunds are issued to the original card within five business days.",
    "Parcels travel by courier; a delayed delivery is tracked with the order number.",
    "Passwords are reset from the account settings page.",
]


def sources(chunk_size: int = 4000) -> list[StringKnowledgeSource]:
    return [StringKnowledgeSource(content=text, chunk_size=chunk_size, chunk_overlap=0) for text in HANDBOOK]


@pytest.fixture
def crewai_home(tmp_path, monkeypatch):
    """CrewAI's storage directory under tmp_path, and no knowledge storage factory."""
    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "home"))
    previous = knowledge_factory._factory
    knowledge_factory.set_knowledge_storage_factory(None)
    yield tmp_path / "home" / "knowledge_ferromem"
    knowledge_factory.set_knowledge_storage_factory(previous)


def test_knowledge_with_explicit_ferromem_storage(location, location_kind):
    storage = KnowledgeStorage(embedder=SPEC, collection_name="handbook", path=location("kb"))
    knowledge = Knowledge(collection_name="handbook", sources=sources(), storage=storage)
    knowledge.add_sources()
    if location_kind == "local":
        assert storage.client.collection_path("knowledge_handbook").exists()
    else:
        assert len(stores_named_after(location("kb"))) == 1
    results = knowledge.query(["how do refunds work"], results_limit=2, score_threshold=0.0)
    assert results[0]["content"] == HANDBOOK[0]
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert all(0.0 <= r["score"] <= 1.0 for r in results)
    knowledge.add_sources()  # the same chunks again: upserted, not duplicated
    assert len(stored(storage.client, "knowledge_handbook")) == len(HANDBOOK)
    assert storage.search([]) == []  # CrewAI's contract for an empty query
    hits = storage.search(["delayed parcel", "courier"], score_threshold=0.0)
    assert hits[0]["content"] == HANDBOOK[1]

    async def async_round():
        await knowledge.areset()
        await knowledge.aadd_sources()
        return await knowledge.aquery(["reset my password"], results_limit=1, score_threshold=0.0)

    assert [r["content"] for r in asyncio.run(async_round())] == [HANDBOOK[2]]
    knowledge.reset()
    assert knowledge.query(["refunds"], score_threshold=0.0) == []
    knowledge.reset()  # nothing to reset: no error, as in CrewAI

    wide = KnowledgeStorage(embedder=WIDE_SPEC, collection_name="handbook", path=location("kb"))
    storage.save(["something"])
    with pytest.raises(ValueError, match=r"(?i)dimension mismatch"):
        wide.save(["something else"])
    with pytest.raises(ValueError, match="not both"):  # pydantic's ValidationError wraps it
        KnowledgeStorage(client=storage.client, embedder=SPEC)
    with pytest.raises(ValueError, match="must be a RagClient"):
        KnowledgeStorage(client="not a client")


def test_knowledge_through_the_storage_factory(crewai_home):
    knowledge_factory.set_knowledge_storage_factory(knowledge_storage_factory)
    knowledge = Knowledge(collection_name="policies", sources=sources(chunk_size=40), embedder=SPEC)
    unnamed = Knowledge(collection_name=None, sources=[], embedder=SPEC)
    assert isinstance(knowledge.storage, KnowledgeStorage)
    assert knowledge.storage.collection == "knowledge_policies"
    assert unnamed.storage.collection == "knowledge"
    assert knowledge.storage.client.path == crewai_home
    knowledge.add_sources()
    assert (crewai_home / "knowledge_policies.ferro").exists()
    results = knowledge.query(["password reset"], results_limit=3, score_threshold=0.0)
    assert "Passwords" in results[0]["content"]
    assert len(results) == 3


def test_crewai_knowledge_storage_with_ferromem_as_chromadb(crewai_home):
    previous = rag_factory._factories.get("chromadb")
    rag_factory.register_rag_client_factory("chromadb", create_rag_client)
    try:
        knowledge = Knowledge(collection_name="faq", sources=sources(), embedder=SPEC)
        wide = crew_storage.KnowledgeStorage(embedder=WIDE_SPEC, collection_name="faq")
    finally:
        if previous is None:
            rag_factory.unregister_rag_client_factory("chromadb")
        else:
            rag_factory.register_rag_client_factory("chromadb", previous)
    assert type(knowledge.storage) is crew_storage.KnowledgeStorage
    assert isinstance(knowledge.storage._client, RagClient)
    knowledge.add_sources()
    assert (crewai_home / "knowledge_faq.ferro").exists()
    results = knowledge.query(["courier delivery delayed"], results_limit=1, score_threshold=0.0)
    assert [r["content"] for r in results] == [HANDBOOK[1]]
    # CrewAI's KnowledgeStorage recognises ferromem's dimension error by its words.
    with pytest.raises(ValueError, match=r"^Embedding dimension mismatch"):
        wide.save(["another document"])


def test_rag_config_through_crewai_create_client(tmp_path):
    previous = rag_factory._factories.get("ferromem")
    rag_factory.register_rag_client_factory("ferromem", create_rag_client)
    try:
        c = rag_factory.create_client(
            RagConfig(
                path=tmp_path / "cfg",
                embedding_function=EMBED,
                limit=2,
                score_threshold=0.1,
                batch_size=7,
                durability="full",
            )
        )
    finally:
        if previous is None:
            rag_factory.unregister_rag_client_factory("ferromem")
        else:
            rag_factory.register_rag_client_factory("ferromem", previous)
    assert isinstance(c, RagClient) and c.path == tmp_path / "cfg"
    assert (c.default_limit, c.default_score_threshold, c.default_batch_size) == (2, 0.1, 7)
    assert RagConfig().provider == "ferromem"
    c.add_documents(collection_name="x", documents=docs_of(*(f"tea {i}" for i in range(4))))
    assert len(c.search(collection_name="x", query="tea")) == 2
    c.close()
    with pytest.raises(ferromem.InvalidInputError):
        create_rag_client({"provider": "ferromem"})
