"""``ferromem import``: CrewAI's LanceDB memory store and ChromaDB knowledge store copied
into ferromem, checked record by record, through the real CLI in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime

import numpy as np
import pytest

pytest.importorskip("crewai", reason="CrewAI 1.x is not installed (pip install 'crewai>=1.15,<2')")

from crewai.memory.storage.lancedb_storage import LanceDBStorage  # noqa: E402
from crewai.memory.types import MemoryRecord  # noqa: E402
from ferromem.crewai import MemoryStorage  # noqa: E402
from ferromem.crewai.migrate import MigrationError, import_lancedb  # noqa: E402

DIM = 32


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ferromem", "import", *args], capture_output=True, text=True, timeout=300
    )


def _lance_records(n: int) -> list[MemoryRecord]:
    rng = np.random.default_rng(3)
    out = [
        MemoryRecord(
            id=f"id-{i}-'%_\\é",
            content=f"memory {i} with 'quotes' and 東京",
            scope=f"/crew/a{i % 3}/it's",
            categories=[f"c{i % 4}", "all"],
            metadata={"turn": i, "note": "50% _off_", "nested": {"k": [i]}},
            importance=(i % 10) / 10,
            created_at=datetime(2025, 1, 1, 12, 0, i % 60, 123456),
            last_accessed=datetime(2025, 2, 1),
            embedding=rng.standard_normal(DIM).tolist(),
            source=f"user{i % 2}",
            private=bool(i % 5 == 0),
        )
        for i in range(n)
    ]
    out.append(MemoryRecord(id="blank", content=" ", scope="/crew", embedding=None))
    return out


def test_import_lancedb_through_the_cli(tmp_path):
    source = tmp_path / "lance"
    lance = LanceDBStorage(path=source, compact_every=0)
    records = _lance_records(2500)
    lance.save(records[:1200])
    lance.save(records[1200:])
    dest = tmp_path / "ferro"
    done = _cli("lancedb", str(source), "--to", str(dest))
    assert done.returncode == 0, done.stderr
    assert "imported 2,501 memories" in done.stdout and "2,501/2,501" in done.stderr
    storage = MemoryStorage(dest)
    assert storage.count() == 2501
    for original in records[::97] + [records[-1]]:
        got = storage.get_record(original.id)
        assert got.model_dump() == original.model_dump()
        if original.embedding is None:
            assert got.embedding is None
        else:
            assert np.allclose(got.embedding, original.embedding, atol=1e-6)
    # Same answers as the source for a filtered search, and exact where LanceDB is not.
    query = records[7].embedding
    hits = storage.search(query, scope_prefix="/crew/a1", limit=3)
    assert hits[0][0].id == records[7].id
    storage.close()
    again = _cli("lancedb", str(source), "--to", str(dest))  # idempotent: upserts by id
    assert again.returncode == 0, again.stderr
    assert MemoryStorage(dest).count() == 2501


def test_import_lancedb_default_destination_is_memorystorage_default(tmp_path):
    source = tmp_path / "memory"
    LanceDBStorage(path=source, compact_every=0).save(_lance_records(10))
    report = import_lancedb(source, progress=None)
    assert report == {"source": 11, "imported": 11, "destination_total": 11}
    assert MemoryStorage(source).count() == 11  # <dir>/memories.ferro beside the Lance table


def test_import_errors_are_clear(tmp_path):
    done = _cli("lancedb", str(tmp_path / "nope"), "--to", str(tmp_path / "d"))
    assert done.returncode == 1 and "no LanceDB directory" in done.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(MigrationError, match="cannot open LanceDB table"):
        import_lancedb(tmp_path / "empty", tmp_path / "d", progress=None)


def test_import_chromadb_through_the_cli(tmp_path):
    import chromadb
    from chromadb.config import Settings
    from ferromem.crewai import RagClient
    from ferromem.embedders import HashingEmbedder

    source = tmp_path / "chroma"
    client = chromadb.PersistentClient(path=str(source), settings=Settings(anonymized_telemetry=False))
    embed = HashingEmbedder(DIM)
    docs = {
        "knowledge": [f"fact number {i} about 'quoted' 100%_things 東京" for i in range(1500)],
        "knowledge_Other-Name.v2": ["a tiny collection", "with two documents"],
    }
    for name, texts in docs.items():
        col = client.create_collection(name, metadata={"hnsw:space": "cosine"}, embedding_function=None)
        col.add(
            ids=[f"{name}-{i}" for i in range(len(texts))],
            documents=texts,
            embeddings=[v.tolist() for v in embed(texts)],
            metadatas=[{"i": i, "parity": "even" if i % 2 == 0 else "odd"} for i in range(len(texts))],
        )
    del client
    dest = tmp_path / "ferro-knowledge"
    done = _cli("chromadb", str(source), "--to", str(dest))
    assert done.returncode == 0, done.stderr
    assert "imported 1,500 documents" in done.stdout and "2 collections" in done.stdout
    rag = RagClient(dest, embedding_function=embed)
    hits = rag.search(
        collection_name="knowledge", query=docs["knowledge"][42], limit=3, metadata_filter={"parity": "even"}
    )
    assert hits[0]["id"] == "knowledge-42" and hits[0]["content"] == docs["knowledge"][42]
    assert hits[0]["metadata"] == {"i": 42, "parity": "even"}
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert (
        len(rag.search(collection_name="knowledge_Other-Name.v2", query="tiny", limit=5, score_threshold=0))
        == 2
    )
    rag.close()
    one = _cli("chromadb", str(source), "--to", str(tmp_path / "one"), "--collection", "nope")
    assert one.returncode == 1 and "no collection ['nope']" in one.stderr
