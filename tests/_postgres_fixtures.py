"""Fixtures of the PostgreSQL tests: the server named by ``FERROMEM_TEST_POSTGRES_DSN``
(CI sets ``postgresql://postgres@127.0.0.1:5432/test``), a schema of this test session
(``ferromem_test_<random>``, dropped with everything in it at the end) so that test runs
never collide, and a factory of store URLs that are unique in it.

The server is probed once per session with psycopg and a short connect timeout; without
the variable, without a reachable server or without the native engine (the only one
with a PostgreSQL backend), every PostgreSQL test skips and says why.

A plugin of tests/conftest.py (``pytest_plugins``), like _gpu_fixtures.py. Its helpers
(:func:`postgres_server`, :class:`PostgresServer`) are also called outside fixtures: by
the state machine, whose store pairs are built per Hypothesis example, and by the child
processes of the load tests.
"""

from __future__ import annotations

import os
import re
import secrets
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from _helpers import REFERENCE_HAS_NO_POSTGRES, native_import_error

DSN_ENV = "FERROMEM_TEST_POSTGRES_DSN"
PROBE_TIMEOUT_S = 3
SCHEMA_PREFIX = "ferromem_test_"


def redact(dsn: str) -> str:
    """A DSN fit for a message: the password, if any, replaced by ``***``."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def with_query(dsn: str, **options: Any) -> str:
    """``dsn`` with ``options`` set in its query, replacing the same keys (values
    percent-encoded; None left out)."""
    parts = urllib.parse.urlsplit(dsn)
    query = [
        (k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k not in options
    ]
    query += [(key, str(value)) for key, value in options.items() if value is not None]
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe="")
    return urllib.parse.urlunsplit(parts._replace(query=encoded))


@dataclass
class PostgresServer:
    """The test server and this session's schema on it."""

    dsn: str
    schema: str
    # Extra schemas the tests made (hostile names, migration races): dropped at the end too.
    extra_schemas: set[str] = field(default_factory=set)

    def url(self, store: str | None = None, *, schema: str | None = None, **options: Any) -> str:
        """A ferromem URL of a store in this session's schema (or ``schema``): a fresh,
        unique store name unless ``store`` is given."""
        return with_query(
            self.dsn,
            schema=self.schema if schema is None else schema,
            store=new_store_name() if store is None else store,
            **options,
        )

    def connect(self, **kwargs: Any):
        """A psycopg connection to the test database (autocommit unless told otherwise)."""
        import psycopg

        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", PROBE_TIMEOUT_S)
        return psycopg.connect(self.dsn, **kwargs)

    def new_schema(self, label: str = "extra") -> str:
        """A schema name of this session (not created: ferromem creates it on first open)."""
        name = f"{self.schema}_{label}_{secrets.token_hex(3)}"
        self.extra_schemas.add(name)
        return name

    def drop_schemas(self) -> list[str]:
        """Drops this session's schemas; returns the problems met (never raises)."""
        from psycopg import sql

        problems = []
        try:
            with self.connect() as conn:
                # A ferromem connection left in a transaction must not hang the session's end.
                conn.execute("SET lock_timeout = '15s'")
                for schema in sorted({self.schema, *self.extra_schemas}):
                    try:
                        conn.execute(
                            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                        )
                    except Exception as exc:  # reported, the other schemas still go
                        problems.append(f"{schema}: {type(exc).__name__}: {exc}")
        except Exception as exc:
            problems.append(f"cannot connect to drop the test schemas: {type(exc).__name__}: {exc}")
        return problems


def new_store_name(label: str = "s") -> str:
    return f"{label}-{uuid.uuid4().hex}"


_probe: list[tuple[PostgresServer | None, str]] = []


def _native_reason() -> str | None:
    error = native_import_error()
    if error is None:
        return None
    return f"PostgreSQL tests need the native engine (the only one with a PostgreSQL backend): {error}"


def probe() -> tuple[PostgresServer | None, str]:
    """(the server, "") when PostgreSQL tests can run, else (None, why not). Asked once."""
    if _probe:
        return _probe[0]
    dsn = os.environ.get(DSN_ENV, "").strip()
    if not dsn:
        result: tuple[PostgresServer | None, str] = (
            None,
            f"{DSN_ENV} is not set (CI sets postgresql://postgres@127.0.0.1:5432/test): "
            "no PostgreSQL server to test against",
        )
    elif (reason := _native_reason()) is not None:
        result = (None, reason)
    else:
        try:
            import psycopg
        except ImportError as exc:
            result = (None, f"psycopg is not installed ({exc}); pip install -e '.[test]'")
        else:
            try:
                with psycopg.connect(dsn, connect_timeout=PROBE_TIMEOUT_S) as conn:
                    conn.execute("SELECT 1")
            except Exception as exc:
                result = (None, f"PostgreSQL at {redact(dsn)} ({DSN_ENV}) is unreachable: {exc}".strip())
            else:
                schema = SCHEMA_PREFIX + secrets.token_hex(4)
                result = (PostgresServer(dsn=dsn, schema=schema), "")
    _probe.append(result)
    return result


def postgres_server() -> PostgresServer:
    """The server, or the calling test skipped with the reason there is none."""
    server, reason = probe()
    if server is None:
        pytest.skip(reason)
    return server


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The PostgreSQL test server (skips without one); this session's schemas are dropped
    at the end of the session."""
    server = postgres_server()
    yield server
    problems = server.drop_schemas()
    if problems:
        import warnings

        warnings.warn("could not drop the test schemas: " + "; ".join(problems), stacklevel=1)


@pytest.fixture(scope="session")
def postgres_dsn(postgres: PostgresServer) -> str:
    """The DSN of the test server (FERROMEM_TEST_POSTGRES_DSN), probed reachable."""
    return postgres.dsn


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Callable[..., str]:
    """A factory of URLs of fresh stores in this session's schema:
    ``postgres_url()``, ``postgres_url(pool_size=1)``, ``postgres_url(store="name")``."""
    return postgres.url


# The storages of the suites that run in memory and again on PostgreSQL (exactness, state
# machine): ``@pytest.mark.parametrize("engine", ...)`` plus the ``storage_kind`` fixture.
STORAGE_KINDS = ["memory", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORAGE_KINDS)
def storage_kind(request: pytest.FixtureRequest) -> str:
    """The storage: "memory" or "postgres" (skipped without a server, and with the reference engine
    when the test is parametrised by ``engine``)."""
    if request.param == "postgres":
        if "engine" in request.fixturenames and request.getfixturevalue("engine") == "reference":
            pytest.skip(REFERENCE_HAS_NO_POSTGRES)
        request.getfixturevalue("postgres")
    return request.param


def location_of(storage_kind: str, name: str) -> str | None:
    """The location a test opens for ``storage_kind``: None (in memory), or the URL of the
    store ``name`` in this session's schema (the same URL for the same name)."""
    if storage_kind == "memory":
        return None
    if storage_kind == "postgres":
        return postgres_server().url(store=name)
    raise ValueError(f"unknown storage kind {storage_kind!r}")


# The adapters' suites (CrewAI memory and RAG) run on a local directory and again on a
# PostgreSQL URL given where a path goes: the ``location`` fixture.
LOCATION_KINDS = ["local", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=LOCATION_KINDS)
def location_kind(request: pytest.FixtureRequest) -> str:
    """ "local" (a folder of tmp_path) or "postgres" (a URL; skipped without a server, and
    for tests marked ``local_files``, which are about files)."""
    if request.param == "postgres":
        if request.node.get_closest_marker("local_files"):
            pytest.skip(
                "about local files (paths, file damage, disk full, store images): not a PostgreSQL test"
            )
        request.getfixturevalue("postgres")
    return request.param


@pytest.fixture
def location(location_kind: str, tmp_path, monkeypatch) -> Iterator[Callable[[str], Any]]:
    """``location(name)``: where the test keeps the thing called ``name``: ``tmp_path /
    name``, or the URL of a store of this session's schema (the same URL for the same name
    within a test, a fresh store for every test)."""
    if location_kind == "local":
        yield lambda name: tmp_path / name
        return
    server = postgres_server()
    # A URL mistaken for a relative path makes folders in the working directory: let that
    # happen under tmp_path, never in the checkout, and fail the test when it did.
    monkeypatch.chdir(tmp_path)
    # CrewAI keeps its default storage under a folder named after the working directory;
    # keep whatever it makes (and any default store) in tmp_path too.
    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "crewai-storage"))
    urls: dict[str, str] = {}

    def url(name: str) -> str:
        if name not in urls:
            urls[name] = server.url(store=new_store_name(re.sub(r"[^A-Za-z0-9]+", "-", name)))
        return urls[name]

    yield url
    made = sorted(p.name for p in tmp_path.iterdir() if p.name.lower().startswith("postgres"))
    if made:
        pytest.fail(f"a PostgreSQL URL was taken for a local path: {made} appeared in the working directory")


def store_name_of(url: str) -> str:
    """The ``store`` option of a URL."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    return query["store"][0]


def stores_named_after(url: str) -> list[str]:
    """The stores of the URL's schema whose name starts with the URL's store name (what an
    adapter given this URL made: the store itself, or one store per collection)."""
    from ferromem import postgres as pg

    return pg.list_stores(url, store_name_of(url))


def with_store(url: str, store: str) -> str:
    """The URL with its ``store`` option replaced."""
    parts = urllib.parse.urlsplit(url)
    query = [
        (k, store if k == "store" else v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urllib.parse.urlunsplit(
        parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe=""))
    )


# ------------------------------------------------------------------------------ reading the tables


def read_records(conn, schema: str, store: str):
    """Every record of a store, read from ferromem's tables with psycopg (not through
    ferromem): {id: Rec}. The text columns are UTF-8 in bytea, vectors little-endian
    float32 (src_rust/ferromem-core/src/storage/postgres.rs, MIGRATIONS). Values are
    inlined as literals: with parameters, psycopg would read a '%' in a schema's name as a
    placeholder."""
    import json

    import numpy as np
    from _helpers import Rec
    from psycopg import sql

    rows = conn.execute(
        sql.SQL(
            "SELECT r.id, r.content, r.scope, r.categories, r.metadata, r.importance, r.created_at, "
            "r.last_accessed, r.source, r.private, r.vector FROM {}.ferromem_records r "
            "JOIN {}.ferromem_stores s ON s.id = r.store_id WHERE s.name = {}"
        ).format(sql.Identifier(schema), sql.Identifier(schema), sql.Literal(store))
    ).fetchall()
    records = {}
    for (
        rid,
        content,
        scope,
        categories,
        metadata,
        importance,
        created,
        accessed,
        source,
        private,
        vector,
    ) in rows:
        rec = Rec(
            id=bytes(rid).decode("utf-8"),
            vector=np.frombuffer(bytes(vector), dtype="<f4").astype(np.float32),
            content=bytes(content).decode("utf-8"),
            scope=bytes(scope).decode("utf-8"),
            categories=tuple(json.loads(categories)),
            metadata=json.loads(metadata),
            importance=importance,
            created_at=created,
            last_accessed=accessed,
            source=None if source is None else bytes(source).decode("utf-8"),
            private=private,
        )
        records[rec.id] = rec
    return records


def store_row(conn, schema: str, store: str) -> tuple[int, int, int | None] | None:
    """(epoch, seq, dim) of a store's row in ferromem_stores, or None when there is none."""
    from psycopg import sql

    return conn.execute(
        sql.SQL("SELECT epoch, seq, dim FROM {}.ferromem_stores WHERE name = {}").format(
            sql.Identifier(schema), sql.Literal(store)
        )
    ).fetchone()
