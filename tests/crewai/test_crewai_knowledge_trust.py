"""All-zero embeddings and use after close in the knowledge (RAG) client, CrewAI's
KnowledgeStorage on it, and the CrewAI 0.x storages.

The 0.x storages import nothing from CrewAI, so they are exercised here directly with a
plain embedding function; tests/crewai/test_crewai_v0.py runs them under a real CrewAI 0.x.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("crewai", reason="CrewAI 1.x is not installed (pip install 'crewai>=1.15,<2')")

from ferromem.crewai.rag import KnowledgeStorage, RagClient  # noqa: E402
from ferromem.crewai.v0 import LTMStorage, RAGStorage  # noqa: E402
from ferromem.exceptions import DimensionMismatchError, InvalidMetadataError  # noqa: E402

DIM = 4
VECTORS = {"tea": [1.0, 0.0, 0.0, 0.0], "green tea": [1.0, 0.2, 0.0, 0.0], "coffee": [0.0, 1.0, 0.0, 0.0]}


def embed(texts: list[str]) -> list[list[float]]:
    """A fixed table; any other text (empty, odd) embeds to zeros, as some models do."""
    return [VECTORS.get(text, [0.0] * DIM) for text in texts]


def docs(*contents: str) -> list[dict]:
    return [{"content": c} for c in contents]


# ------------------------------------------------------------------ RAG client


def test_rag_zero_embeddings_are_stored_and_never_ranked(tmp_path):
    client = RagClient(tmp_path, embedding_function=embed)
    client.add_documents(collection_name="c", documents=docs("tea", "", "???", "coffee"))
    store = client.get_or_create_collection(collection_name="c")
    assert store.count() == 4
    hits = client.search(collection_name="c", query="tea", limit=10, score_threshold=None)
    assert [h["content"] for h in hits] == ["tea", "coffee"]
    assert all(0.0 <= h["score"] <= 1.0 for h in hits)
    # limit counts real results only, even with placeholders ranked high by the engine
    assert [h["content"] for h in client.search(collection_name="c", query="tea", limit=1)] == ["tea"]
    client.close()


def test_rag_zero_query_returns_nothing_but_checks_the_dimension(tmp_path):
    client = RagClient(tmp_path, embedding_function=embed)
    client.add_documents(collection_name="c", documents=docs("tea", "coffee"))
    assert client.search(collection_name="c", query="unknown", score_threshold=None) == []
    client.embedding_function = lambda texts: [[0.0] * (DIM + 2) for _ in texts]
    with pytest.raises(DimensionMismatchError, match="dimension mismatch"):
        client.search(collection_name="c", query="x")
    client.close()


def test_rag_reserved_metadata_keys_are_refused(tmp_path):
    client = RagClient(tmp_path, embedding_function=embed)
    with pytest.raises(InvalidMetadataError):
        client.add_documents(
            collection_name="c",
            documents=[{"content": "tea", "metadata": {"\x00ferromem.no_embedding": True}}],
        )
    assert client.search(collection_name="c", query="tea") == []
    client.close()


def test_knowledge_storage_with_a_zero_embedder_and_after_close(tmp_path):
    storage = KnowledgeStorage(embedder=embed, path=tmp_path, collection_name="k")
    storage.save(["tea", "", "coffee"])
    assert [r["content"] for r in storage.search(["tea"], score_threshold=0.0)] == ["tea", "coffee"]
    storage.close()
    assert [r["content"] for r in storage.search(["coffee"], limit=1)] == ["coffee"]
    storage.client.close()
    storage.reset()
    assert storage.search(["tea"]) == []
    storage.close()


def test_rag_client_reopens_after_close_from_many_threads(tmp_path):
    client = RagClient(tmp_path, embedding_function=embed)
    client.add_documents(collection_name="c", documents=docs("tea", "coffee"))
    client.close()
    results, errors = [], []

    def work():
        try:
            results.append(client.search(collection_name="c", query="tea", limit=1)[0]["id"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1 and len(results) == 8
    client.close()


# ------------------------------------------------------------------ CrewAI 0.x storages


def test_v0_rag_storage_zero_embeddings_and_zero_query(tmp_path):
    storage = RAGStorage("short_term", embedder=embed, path=tmp_path)
    for value in ("tea", "", "???", "coffee"):
        storage.save(value, {"kind": "fact"})
    assert storage.store.count() == 4
    hits = storage.search("tea", limit=10, score_threshold=None)
    assert [h["content"] for h in hits] == ["tea", "coffee"]
    assert [h["content"] for h in storage.search("tea", limit=1)] == ["tea"]
    assert storage.search("unknown", score_threshold=None) == []
    with pytest.raises(InvalidMetadataError):
        storage.save("tea", {"\x00ferromem.x": 1})
    storage.reset()
    assert storage.store.count() == 0
    storage.close()


def test_v0_storages_reopen_after_close(tmp_path):
    rag = RAGStorage("entities", embedder=embed, path=tmp_path)
    rag.save("tea", None)
    rag.close()
    rag.close()
    assert [h["content"] for h in rag.search("tea")] == ["tea"]
    rag.close()
    rag.save("coffee", None)
    assert rag.store.count() == 2
    rag.close()

    ltm = LTMStorage(tmp_path / "ltm.ferro")
    ltm.save("task", {"quality": 1}, "1700000000.0", 0.5)
    ltm.close()
    assert ltm.load("task", 1) == [{"metadata": {"quality": 1}, "datetime": "1700000000.0", "score": 0.5}]
    ltm.close()
    ltm.reset()
    assert ltm.load("task", 1) is None
    ltm.close()


def test_zero_rows_in_a_numpy_batch_keep_the_others_exact(tmp_path):
    vectors = {"a": [0.0, 0.0, 3.0, 4.0], "b": [0.0] * DIM, "c": [0.0, 1.0, 0.0, 0.0]}
    client = RagClient(
        tmp_path,
        embedding_function=lambda texts: np.array(
            [vectors.get(t, [0.0, 0.0, 3.0, 4.0]) for t in texts], dtype=np.float32
        ),
    )
    client.add_documents(collection_name="c", documents=docs("a", "b", "c"))
    store = client.get_or_create_collection(collection_name="c")
    ids = {r.content: r.id for r in store.list()}
    assert store.get(ids["a"]).vector.tolist() == [0.0, 0.0, 3.0, 4.0]
    hits = client.search(collection_name="c", query="a", limit=5, score_threshold=None)
    assert [(h["content"], round(h["score"], 6)) for h in hits] == [("a", 1.0), ("c", 0.5)]
    client.close()


@pytest.mark.parametrize("bad", [5, 1.5, None, object(), b"tea", [1], ("tea", 2)])
def test_knowledge_storage_wrong_arguments_raise_ferromem_errors(tmp_path, bad):
    from ferromem.exceptions import FerromemError

    storage = KnowledgeStorage(embedder=embed, path=tmp_path, collection_name="k")
    storage.save(["tea"])
    if bad is None:  # nothing to save or search, as before
        assert storage.search(bad) == [] and storage.save(bad) is None
    else:
        with pytest.raises(FerromemError):
            storage.search(bad)
        with pytest.raises(FerromemError):
            storage.save(bad)
    assert [r["content"] for r in storage.search(["tea"])] == ["tea"]
    storage.close()


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: __import__("ferromem.crewai", fromlist=["MemoryStorage"]).MemoryStorage(5),
        lambda tmp: __import__("ferromem.crewai", fromlist=["MemoryStorage"]).MemoryStorage(b"x"),
        lambda tmp: RagClient(5),
        lambda tmp: RAGStorage("x", embedder=embed, path=5),
        lambda tmp: LTMStorage(5),
        lambda tmp: __import__("ferromem.crewai.migrate", fromlist=["x"]).import_lancedb(5),
    ],
)
def test_adapters_refuse_a_path_that_is_not_a_path_with_a_ferromem_error(tmp_path, make):
    from ferromem.exceptions import FerromemError

    with pytest.raises(FerromemError):
        make(tmp_path)


def test_install_refuses_a_bad_path_and_changes_nothing():
    import ferromem.crewai
    from ferromem.exceptions import FerromemError

    was = ferromem.crewai.installed()
    with pytest.raises(FerromemError):
        ferromem.crewai.install(path=5)
    assert ferromem.crewai.installed() == was


def test_install_is_the_function_whichever_name_is_asked_first():
    import subprocess
    import sys

    code = (
        "import ferromem.crewai as c; c.installed(); c.install(); assert c.installed(); "
        "c.uninstall(); print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
