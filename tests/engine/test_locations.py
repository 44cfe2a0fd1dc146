"""Store locations (``ferromem.open(location)``): a path, an os.PathLike, ``sqlite:PATH``,
``sqlite:///ABSOLUTE/PATH``, ``memory:`` and None, on both engines; and the typed error
of a location this build cannot open. The native core parses the same locations
(``_core.Engine(location)``) with the same messages."""

from __future__ import annotations

import os
import pathlib

import ferromem
import numpy as np
import pytest
from conftest import NATIVE_AVAILABLE, NATIVE_SKIP_REASON

native_only = pytest.mark.skipif(not NATIVE_AVAILABLE, reason=NATIVE_SKIP_REASON)

VECTORS = np.eye(3, dtype=np.float32)

# Locations that open nothing, and the class each raises.
BAD_LOCATIONS = [
    ("postgresql://user:secret@db.example/memories?sslmode=verify-full", ferromem.UnsupportedStoreError),
    ("postgresql://user:secret@db.example/memories?bogus=1", ferromem.InvalidInputError),
    ("postgresql:db.example", ferromem.InvalidInputError),
    ("mysql://db.example/memories", ferromem.UnsupportedStoreError),
    ("sqlite:", ferromem.InvalidInputError),
    ("sqlite://", ferromem.InvalidInputError),
    ("sqlite://otherhost/x.db", ferromem.InvalidInputError),
    ("memory:x.db", ferromem.InvalidInputError),
]


def write_three(store: ferromem.Store) -> None:
    for i, name in enumerate("abc"):
        store.add(name, VECTORS[i], contents=f"content {name}")


def assert_three(store: ferromem.Store) -> None:
    assert len(store) == 3
    assert store.get("b").content == "content b"
    assert list(store.search(VECTORS[2], k=1).ids) == ["c"]


@pytest.mark.parametrize("location", ["memory:", "MEMORY:", "memory://", None])
def test_memory_locations_open_an_in_memory_store(engine_name, location):
    with ferromem.open(location, engine=engine_name) as store:
        assert store.path is None
        write_three(store)
        assert_three(store)


def test_memory_location_refuses_precisions_that_need_a_disk(engine_name):
    with pytest.raises(ferromem.InvalidInputError, match="has no disk"):
        ferromem.open("memory:", engine=engine_name, precision="f16")


@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(lambda p: str(p), id="path"),
        pytest.param(lambda p: p, id="pathlike"),
        pytest.param(lambda p: f"sqlite:{p}", id="sqlite:PATH"),
        pytest.param(lambda p: f"sqlite://{p}", id="sqlite:///ABS"),
        pytest.param(lambda p: f"SQLite:{p}", id="scheme-case"),
    ],
)
def test_every_spelling_of_a_file_opens_the_same_store(engine_name, tmp_path, spell):
    path = tmp_path / "store.ferro"
    with ferromem.open(spell(path), engine=engine_name) as store:
        assert store.path == str(path)
        write_three(store)
    # Written under one spelling, read under the plain path and the URL.
    for other in (str(path), f"sqlite:{path}"):
        with ferromem.open(other, engine=engine_name) as store:
            assert store.path == str(path)
            assert_three(store)


def test_relative_locations_are_files_of_the_working_directory(engine_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with ferromem.open("sqlite:rel.ferro", engine=engine_name) as store:
        write_three(store)
    with ferromem.open("rel.ferro", engine=engine_name) as store:
        assert store.path == str(tmp_path / "rel.ferro")
        assert_three(store)
    # A prefix that is no known scheme, without '//', is part of a file name.
    with ferromem.open("notes:v2.ferro", engine=engine_name) as store:
        write_three(store)
    assert (tmp_path / "notes:v2.ferro").is_file()


@pytest.mark.parametrize(("location", "error"), BAD_LOCATIONS)
def test_locations_this_build_cannot_open_raise_a_typed_error(
    engine_name, tmp_path, monkeypatch, location, error
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as raised:
        ferromem.open(location, engine=engine_name)
    assert isinstance(raised.value, ferromem.InvalidInputError)
    assert isinstance(raised.value, ValueError)
    assert "secret" not in str(raised.value)
    assert os.listdir(tmp_path) == [], "nothing is created for a location that cannot be opened"


def test_a_postgresql_store_needs_the_native_engine():
    with pytest.raises(ferromem.UnsupportedStoreError, match="native engine") as raised:
        ferromem.open("postgresql://user:secret@db.example/memories", engine="reference")
    assert "secret" not in str(raised.value)


@native_only
def test_an_unreachable_postgresql_server_is_a_typed_error_without_the_password():
    # Port 9 (discard) refuses at once; reconnect_timeout=0: no retries.
    url = "postgresql://user:s3cret-pw@127.0.0.1:9/memories?reconnect_timeout=0&connect_timeout=2"
    with pytest.raises(ferromem.StorageUnavailableError) as raised:
        ferromem.open(url)
    assert isinstance(raised.value, ferromem.StorageError)
    assert "s3cret-pw" not in str(raised.value) and "s3cret-pw" not in repr(raised.value)
    assert "127.0.0.1:9" in str(raised.value)


@native_only
def test_the_native_core_parses_the_same_locations(tmp_path, monkeypatch):
    from ferromem import _core

    memory = _core.Engine("memory:")
    assert memory.path is None
    memory.close()
    path = tmp_path / "core.ferro"
    for location in (f"sqlite:{path}", f"sqlite://{path}", str(path), path, pathlib.PurePath(path)):
        engine = _core.Engine(location)
        assert engine.path == str(path)
        engine.close()
    monkeypatch.chdir(tmp_path)
    for location, error in BAD_LOCATIONS:
        with pytest.raises(error) as from_core:
            _core.Engine(location)
        with pytest.raises(error) as from_facade:
            ferromem.open(location)
        assert str(from_core.value) == str(from_facade.value), location
