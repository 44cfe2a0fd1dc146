"""Shared fixtures: a ``store`` for every engine (native, reference) and every storage
(in-memory, on disk, PostgreSQL), plus helpers to compare a store's whole content before and after
a call."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import ferromem
import numpy as np
import pytest
from _helpers import REFERENCE_HAS_NO_POSTGRES

# The GPU path's backend fixtures (make_backend, cupy_ready): tests/_gpu_fixtures.py.
# The PostgreSQL server, this session's schema and store URLs: tests/_postgres_fixtures.py.
pytest_plugins = ["_gpu_fixtures", "_postgres_fixtures"]

# CrewAI tests run offline. CrewAI's trace collection would try the network, and its
# tracing handler waits 5 s for a parent span on every Memory save run in Memory's
# background thread, whatever the storage; the demo turns it off the same way.
for _name, _value in (
    ("CREWAI_TRACING_ENABLED", "false"),
    ("CREWAI_DISABLE_TELEMETRY", "true"),
    ("OTEL_SDK_DISABLED", "true"),
):
    os.environ.setdefault(_name, _value)

# The planner's calibration cache goes to a folder of this test run, never the user's.
if "FERROMEM_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["FERROMEM_CACHE_DIR"] = tempfile.mkdtemp(prefix="ferromem-test-cache-")
# The tests choose their device themselves: a FERROMEM_DEVICE of the caller's must not
# change what they test.
os.environ.pop("FERROMEM_DEVICE", None)


def _native_engine_status() -> tuple[bool, str]:
    try:
        from ferromem import _core
    except ImportError as exc:
        return False, f"ferromem._core is not importable ({exc}); build it with a Rust toolchain"
    if not hasattr(_core, "Engine"):
        return False, "ferromem._core has no Engine yet (partial build)"
    return True, ""


NATIVE_AVAILABLE, NATIVE_SKIP_REASON = _native_engine_status()

ENGINES = ["native", "reference"]
# PostgreSQL runs the same tests, marked ``postgres``; it skips with the reason when no
# server is reachable (FERROMEM_TEST_POSTGRES_DSN), and for the reference engine, which
# has no PostgreSQL backend.
STORAGES = ["memory", "disk", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    if request.param == "native" and not NATIVE_AVAILABLE:
        pytest.skip(NATIVE_SKIP_REASON)
    return request.param


@pytest.fixture(params=STORAGES)
def store_path(request: pytest.FixtureRequest, tmp_path) -> str | None:
    """Where the parametrised storage keeps the store: None (in memory), a file, or the URL
    of a fresh PostgreSQL store in this session's schema."""
    if request.param == "memory":
        return None
    if request.param == "disk":
        return str(tmp_path / "store.ferro")
    if "engine_name" in request.fixturenames and request.getfixturevalue("engine_name") == "reference":
        pytest.skip(REFERENCE_HAS_NO_POSTGRES)
    return request.getfixturevalue("postgres_url")()


@pytest.fixture
def open_store(engine_name: str, store_path: str | None) -> Callable[..., ferromem.Store]:
    """Opens a store of the parametrised engine and storage (closed at teardown)."""
    opened: list[ferromem.Store] = []

    def factory(**kwargs: Any) -> ferromem.Store:
        store = ferromem.open(store_path, engine=engine_name, **kwargs)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[..., ferromem.Store]) -> ferromem.Store:
    return open_store()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """n random float32 vectors of length dim, none of them zero."""
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def snapshot(store: ferromem.Store) -> list[tuple]:
    """Everything a store holds, in a comparable form (vectors as bytes)."""
    rows = []
    for record in store.list():
        rows.append(
            (
                record.id,
                record.content,
                record.scope,
                record.categories,
                repr(sorted(record.metadata.items())),
                record.importance,
                record.created_at,
                record.last_accessed,
                record.source,
                record.private,
                record.vector.tobytes(),
            )
        )
    return sorted(rows)
