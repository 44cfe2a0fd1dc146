"""fast_open=True: the store image written at close and mapped by the next open.

A store opened from its image must answer exactly like the same store read from its file:
every record and vector, every search (filtered or not, exact or through the graph),
including what other processes wrote after the image. Kills of real processes writing
and mapping images are in test_crash.py.
"""

from __future__ import annotations

import json
import os
import subprocess

import ferromem
import numpy as np
import pytest
from _helpers import (
    assert_records_same,
    child_command,
    child_env,
    derived_record,
    open_store,
    require_engine,
    shared_data_dir,
)
from ferromem.exceptions import InvalidInputError


@pytest.fixture(autouse=True)
def _native():
    require_engine("native")


def image_of(path) -> str:
    return os.fspath(path) + ".image"


def fill(store, n: int, dim: int, seed: int, start: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    ids = [f"r{i:06d}" for i in range(start, start + n)]
    store.upsert(
        ids,
        vectors,
        contents=[f"passage {i} — ünïcode" for i in range(start, start + n)],
        scopes=[f"/crew/agent{i % 4}" for i in range(start, start + n)],
        categories=[[f"c{i % 3}"] if i % 2 else [] for i in range(start, start + n)],
        metadata=[{"turn": i, "kind": "k" + str(i % 5), "ok": i % 7 == 0} for i in range(start, start + n)],
        sources=[None if i % 3 else f"doc{i % 11}" for i in range(start, start + n)],
        private=[i % 10 == 0 for i in range(start, start + n)],
    )
    return vectors


def assert_same_store(fast, plain, dim: int, seed: int = 3) -> None:
    a, b = fast.list(), plain.list()
    assert [r.id for r in a] == [r.id for r in b]
    for x, y in zip(a, b):
        assert_records_same(x, y)
    queries = np.random.default_rng(seed).standard_normal((6, dim), dtype=np.float32)
    for filters in ({}, {"scope": "/crew/agent1"}, {"categories": ["c2"]}, {"where": {"kind": "k3"}}):
        for q in queries:
            got, want = fast.search(q, k=10, **filters), plain.search(q, k=10, **filters)
            assert list(got.ids) == list(want.ids), filters
            assert np.array_equal(got.scores, want.scores), filters


def test_a_store_reopened_from_its_image_answers_like_its_file(tmp_path):
    path = tmp_path / "s.ferro"
    dim = 48
    with ferromem.open(path, fast_open=True, cache_size=0) as store:
        fill(store, 9000, dim, seed=1)  # several chunks of 4096 rows: mapped and copied
        store.delete(ids=["r000005", "r008999"])
        assert store.stats()["fast_open"] == {"enabled": True, "opened_from_image": False, "rejected": None}
    assert os.path.getsize(image_of(path)) > 9000 * dim * 6

    with (
        ferromem.open(path, fast_open=True, cache_size=0) as fast,
        ferromem.open(path, cache_size=0) as plain,
    ):
        assert fast.stats()["fast_open"] == {"enabled": True, "opened_from_image": True, "rejected": None}
        assert plain.stats()["fast_open"]["opened_from_image"] is False
        assert fast.stats()["disk_bytes"] >= os.path.getsize(image_of(path))
        assert_same_store(fast, plain, dim)
        # Writes to mapped rows and past them, through either store.
        fill(fast, 500, dim, seed=2, start=100)
        fill(plain, 300, dim, seed=4, start=9000)
        fast.update("r000200", scope="/moved", vector=np.ones(dim, np.float32))
        fast.delete(scope="/crew/agent2")
        assert_same_store(fast, plain, dim)

    with (
        ferromem.open(path, fast_open=True, cache_size=0) as again,
        ferromem.open(path, cache_size=0) as plain,
    ):
        assert again.stats()["fast_open"]["opened_from_image"]
        assert_same_store(again, plain, dim)


def test_another_process_writes_after_the_image(tmp_path):
    path = tmp_path / "s.ferro"
    with ferromem.open(path, fast_open=True) as store:
        fill(store, 200, 24, seed=5)
    # A second process without fast_open adds records and closes: the image stays, older
    # than the store.
    image = open(image_of(path), "rb").read()
    child = subprocess.run(
        child_command("store_server", path, "native"),
        input="\n".join(
            json.dumps(c)
            for c in (
                {"op": "add", "ids": ["p1", "p2", "p3"]},
                {"op": "close"},
            )
        )
        + "\n",
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    assert all("error" not in json.loads(line) for line in child.stdout.splitlines()), child.stdout
    assert open(image_of(path), "rb").read() == image
    with ferromem.open(path, fast_open=True) as fast, ferromem.open(path) as plain:
        assert fast.stats()["fast_open"]["opened_from_image"]
        assert fast.count() == 203
        for rid in ("p1", "p2", "p3"):
            assert_records_same(fast.get(rid), plain.get(rid))
            assert list(fast.search(derived_record(rid).vector, k=1).ids) == [rid]
        assert_same_store(fast, plain, 24)


def test_a_damaged_or_foreign_image_is_ignored(tmp_path):
    path, other = tmp_path / "s.ferro", tmp_path / "other.ferro"
    for p, seed in ((path, 6), (other, 7)):
        with ferromem.open(p, fast_open=True) as store:
            fill(store, 300, 16, seed=seed)
    # Another store's image, even at the same position, is not this store's.
    os.replace(image_of(other), image_of(path))
    with ferromem.open(path, fast_open=True) as fast, ferromem.open(path) as plain:
        assert not fast.stats()["fast_open"]["opened_from_image"]
        assert_same_store(fast, plain, 16)
    # Bytes flipped in the records: the checksum fails.
    raw = bytearray(open(image_of(path), "rb").read())
    raw[5000] ^= 0xFF
    open(image_of(path), "wb").write(raw)
    with pytest.warns(ferromem.DamagedCacheWarning, match="store image"):
        fast = ferromem.open(path, fast_open=True)
    with fast, ferromem.open(path) as plain:
        assert not fast.stats()["fast_open"]["opened_from_image"]
        assert "checksum" in fast.stats()["fast_open"]["rejected"]
        assert_same_store(fast, plain, 16)


def test_the_graph_and_the_image_reopen_together_on_real_embeddings(tmp_path):
    folder = shared_data_dir()
    if folder is None or not (folder / "docs-minilm384.npz").is_file():
        pytest.skip("real embeddings absent (FERROMEM_SHARED_DATA or <repo>/../shared/data)")
    with np.load(folder / "docs-minilm384.npz") as arrays:
        passages = arrays["passages"][:8000].astype(np.float32)
        queries = arrays["queries"][:50].astype(np.float32)
    path = tmp_path / "m.ferro"
    with ferromem.open(path, index="hnsw", fast_open=True, cache_size=0) as store:
        store.add([f"p{i}" for i in range(len(passages))], passages)
        assert store.wait_for_index(timeout=300)
    with (
        ferromem.open(path, index="hnsw", fast_open=True, cache_size=0) as fast,
        ferromem.open(path, index="hnsw", cache_size=0) as plain,
    ):
        stats = fast.stats()
        assert stats["fast_open"]["opened_from_image"]
        # The saved graph was installed at open: no rebuild, no exact fallback.
        assert stats["index"]["active"] == "hnsw" and stats["index"]["pending"] == 0
        assert stats["index"]["graph_nodes"] == len(passages)
        for q in queries:
            got, want = fast.search(q, k=10), plain.search(q, k=10)
            assert list(got.ids) == list(want.ids)
            assert np.array_equal(got.scores, want.scores)


def test_fast_open_with_f16_precision(tmp_path):
    path, twin = tmp_path / "h.ferro", tmp_path / "f.ferro"
    for p, precision in ((path, "f16"), (twin, "f32")):
        with ferromem.open(p, precision=precision, fast_open=True) as store:
            fill(store, 5000, 32, seed=8)
    # The same records: an f16 image lacks only the f32 rows (up to page padding).
    missing = os.path.getsize(image_of(twin)) - os.path.getsize(image_of(path))
    assert abs(missing - 5000 * 32 * 4) <= 4096, missing
    with (
        ferromem.open(path, precision="f16", fast_open=True) as fast,
        ferromem.open(path, precision="f16") as plain,
    ):
        assert fast.stats()["fast_open"]["opened_from_image"]
        assert_same_store(fast, plain, 32)


def test_fast_open_arguments(tmp_path):
    for bad in ("yes", 1, None):
        with pytest.raises(InvalidInputError, match="fast_open"):
            ferromem.open(tmp_path / "x.ferro", fast_open=bad)
    # Without a file there is no image: accepted, nothing written.
    with ferromem.open(None, fast_open=True) as store:
        store.add("a", [1.0, 0.0])
        assert store.stats()["fast_open"] == {"enabled": True, "opened_from_image": False, "rejected": None}
    # The reference engine reads the file whatever is asked, and leaves images alone.
    with ferromem.open(tmp_path / "n.ferro", fast_open=True) as store:
        store.add("a", [1.0, 0.0])
    before = open(image_of(tmp_path / "n.ferro"), "rb").read()
    with open_store("reference", tmp_path / "n.ferro", fast_open=True) as ref:
        assert ref.stats()["fast_open"] == {"enabled": False, "opened_from_image": False, "rejected": None}
        ref.add("b", [0.0, 1.0])
    assert open(image_of(tmp_path / "n.ferro"), "rb").read() == before
    with ferromem.open(tmp_path / "n.ferro", fast_open=True) as store:
        assert store.stats()["fast_open"]["opened_from_image"]
        assert sorted(r.id for r in store.list()) == ["a", "b"]
