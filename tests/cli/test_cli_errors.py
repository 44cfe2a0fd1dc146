"""The command line a newcomer meets, run as a user runs it (a new process): expected
errors give one line on stderr and a non-zero exit, never a traceback; an import source
that is not the kind named is left byte for byte as it was, with nothing created in it."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import ferromem
import numpy as np
import pytest


def _run(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ferromem", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
    )


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under root (folders too) with its bytes' SHA-256."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _one_line_error(done: subprocess.CompletedProcess, code: int = 1) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def _foreign_folder(root: Path) -> Path:
    """A folder of someone else's files: an app's SQLite database, text, a subfolder."""
    root.mkdir()
    with sqlite3.connect(root / "app.db") as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    db.close()
    (root / "readme.txt").write_text("not a vector store\n")
    (root / "sub").mkdir()
    (root / "sub" / "data.bin").write_bytes(os.urandom(4096))
    return root


def test_version():
    done = _run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"ferromem {ferromem.__version__}"


@pytest.mark.parametrize("kind", ["chromadb", "lancedb"])
def test_import_from_a_folder_of_another_kind_changes_nothing(tmp_path, kind):
    pytest.importorskip(kind)
    pytest.importorskip("crewai.memory.storage.backend")
    source = _foreign_folder(tmp_path / "src")
    before = _snapshot(source)
    line = _one_line_error(_run("import", kind, str(source), "--to", str(tmp_path / "dest")))
    assert line.startswith("ferromem import: ") and str(source) in line
    assert _snapshot(source) == before
    assert not (tmp_path / "dest").exists()


def test_import_chromadb_of_a_sqlite_file_that_is_not_chroma_changes_nothing(tmp_path):
    pytest.importorskip("chromadb")
    pytest.importorskip("crewai.memory.storage.backend")
    source = tmp_path / "src"
    source.mkdir()
    with sqlite3.connect(source / "chroma.sqlite3") as db:  # the name, not the content
        db.execute("CREATE TABLE other (x)")
    db.close()
    (source / "garbage").mkdir()
    before = _snapshot(source)
    line = _one_line_error(_run("import", "chromadb", str(source), "--to", str(tmp_path / "d")))
    assert "not a ChromaDB database" in line
    assert _snapshot(source) == before
    (source / "chroma.sqlite3").write_bytes(b"\x00" * 100)  # not SQLite at all
    before = _snapshot(source)
    line = _one_line_error(_run("import", "chromadb", str(source), "--to", str(tmp_path / "d")))
    assert "not a ChromaDB database" in line
    assert _snapshot(source) == before


def test_import_chromadb_without_a_source_on_a_default_folder_changes_nothing(tmp_path):
    pytest.importorskip("chromadb")
    pytest.importorskip("crewai.memory.storage.backend")
    # CrewAI's default ChromaDB folder is named after the working directory, under the
    # user data directory: point both at the test's own folders.
    home = tmp_path / "home"
    work = tmp_path / "project"
    work.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "data")}
    env.pop("CREWAI_STORAGE_DIR", None)
    default = home / "data" / "project"
    default.parent.mkdir(parents=True)
    _foreign_folder(default)
    before = _snapshot(home)
    line = _one_line_error(_run("import", "chromadb", cwd=work, env=env))
    assert "is not a ChromaDB directory" in line
    assert _snapshot(home) == before
    assert list(work.iterdir()) == []
    # A default folder that does not exist is reported, and not created.
    other = tmp_path / "elsewhere"
    other.mkdir()
    line = _one_line_error(_run("import", "chromadb", cwd=other, env=env))
    assert "no ChromaDB directory" in line
    assert _snapshot(home) == before


def test_import_of_a_real_chroma_store_leaves_it_byte_for_byte(tmp_path):
    chromadb = pytest.importorskip("chromadb")
    pytest.importorskip("crewai.memory.storage.backend")
    from chromadb.config import Settings

    source = tmp_path / "chroma"
    client = chromadb.PersistentClient(path=str(source), settings=Settings(anonymized_telemetry=False))
    col = client.create_collection("knowledge", metadata={"hnsw:space": "cosine"}, embedding_function=None)
    col.add(
        ids=["a", "b", "zero"],
        documents=["a", "b", ""],
        embeddings=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
    )
    del client, col
    before = _snapshot(source)
    done = _run("import", "chromadb", str(source), "--to", str(tmp_path / "dest"))
    assert done.returncode == 0, done.stderr
    assert "imported 3 documents" in done.stdout  # the zero vector too
    assert _snapshot(source) == before


def test_import_into_a_store_of_another_dimension_names_ferromems_situation(tmp_path):
    pytest.importorskip("lancedb")
    pytest.importorskip("crewai.memory.storage.backend")
    from crewai.memory.storage.lancedb_storage import LanceDBStorage
    from crewai.memory.types import MemoryRecord

    source = tmp_path / "lance"
    LanceDBStorage(path=source, vector_dim=8, compact_every=0).save(
        [MemoryRecord(content="x", embedding=np.ones(8).tolist())]
    )
    dest = tmp_path / "dest.ferro"
    with ferromem.open(dest, dim=4) as store:
        store.add("other", [1.0, 0.0, 0.0, 0.0])
    line = _one_line_error(_run("import", "lancedb", str(source), "--to", str(dest)))
    assert "4-dimensional" in line and "8-dimensional" in line and "--to" in line
    assert "text-embedding" not in line and "reset-memories" not in line


def test_demo_refuses_an_existing_store_unless_forced(tmp_path):
    path = tmp_path / "mine.ferro"
    with ferromem.open(path, dim=384) as store:
        store.add("keep", np.ones(384, dtype=np.float32), contents="my own memory")
    before = _snapshot(tmp_path)
    line = _one_line_error(
        _run("demo", "--store-only", "--path", str(path), "--n", "20", "--recalls", "4"), code=2
    )
    assert "--force" in line
    assert _snapshot(tmp_path) == before
    done = _run("demo", "--store-only", "--path", str(path), "--n", "20", "--recalls", "4", "--force")
    assert done.returncode == 0, done.stderr
    with ferromem.open(path) as store:
        assert store.get("keep").content == "my own memory"


@pytest.mark.parametrize(
    "args",
    [
        ["--dim", "0"],
        ["--dim", "-1"],
        ["--store-only", "--dim", "0"],
        ["--n", "-5"],
        ["--recalls", "0"],
        ["--dim", "x"],
    ],
)
def test_demo_rejects_bad_numbers_as_usage_errors(tmp_path, args):
    done = _run("demo", *args, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: argument" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_or_missing_path_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = _one_line_error(
        _run(
            "demo", "--store-only", "--n", "20", "--recalls", "4", "--path", str(blocker / "sub" / "s.ferro")
        )
    )
    assert line.startswith("ferromem demo: ")
    done = _run("stats", str(tmp_path / "missing.ferro"))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_default_demo_shows_progress(tmp_path):
    pytest.importorskip("crewai.memory.storage.backend")
    done = _run("demo", "--n", "40", "--dim", "16", "--recalls", "4", "--ferromem-only", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    progress = [line for line in done.stderr.splitlines() if "ferromem: " in line]
    assert any("remember 40 memories" in line for line in progress)
    assert any(line.endswith("ferromem: done") for line in progress)


def test_stats_and_check_never_write_to_what_they_look_at(tmp_path):
    # Someone else's SQLite database (Chroma's file, say): one line, untouched.
    foreign = tmp_path / "chroma.sqlite3"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE collections(id TEXT)")
    conn.close()
    before = _snapshot(tmp_path)
    for command in ("stats", "check"):
        line = _one_line_error(_run(command, str(foreign)))
        assert "not a ferromem store" in line
        assert _snapshot(tmp_path) == before
    # A store: stats reads it without changing a byte; check says it is whole.
    store_path = tmp_path / "s.ferro"
    with ferromem.open(store_path) as store:
        store.add(["a", "b"], np.eye(2, 8, dtype=np.float32) + 0.25, scopes="/x")
    store_bytes = store_path.read_bytes()
    done = _run("stats", str(store_path))
    assert done.returncode == 0, done.stderr
    assert '"records": 2' in done.stdout and '"read_only": true' in done.stdout
    done = _run("check", str(store_path))
    assert done.returncode == 0 and "whole" in done.stdout, done.stderr
    assert store_path.read_bytes() == store_bytes


def test_check_lists_damage_and_exits_1(tmp_path):
    store_path = tmp_path / "s.ferro"
    vectors = np.random.default_rng(8).standard_normal((4, 16)).astype(np.float32)
    with ferromem.open(store_path) as store:
        store.add(["a", "b", "c", "d"], vectors)
    data = bytearray(store_path.read_bytes())
    at = bytes(data).find(vectors[1].astype("<f4").tobytes())
    assert at > 0
    data[at + 9] ^= 0x04
    store_path.write_bytes(bytes(data))
    done = _run("check", str(store_path))
    assert done.returncode == 1
    assert "'b'" in done.stdout.replace('"', "'") and "checksum" in done.stdout
    assert "Traceback" not in done.stderr
    assert _run("check", str(tmp_path / "missing.ferro")).returncode == 2
