"""A PostgreSQL store when things go wrong, against the real server.

* A writer SIGKILLed while its large batch's transaction is open (seen in
  pg_stat_activity before the kill): none of the batch is stored, another writer proceeds,
  and a fresh open reads a consistent store.
* The pool exhausted: with ``pool_size=1&pool_timeout=0.5`` and the only connection held
  by a write waiting on the store's row lock (taken by the test with psycopg), another
  operation raises PoolTimeoutError (a StorageUnavailableError and a TimeoutError), and
  writes nothing.
* The migration run twice, and by several processes at once: every one succeeds, one
  version row. A schema at a newer version is refused and left as it is.
* Credentials: a URL with a password (the server trusts everyone, so it opens) and URLs
  that fail (a host that does not exist, a database that does not exist, a port where
  nothing listens, bad options): the password appears in no message, repr, stats, log
  record or output.
* Hostile store and schema names (quotes, semicolons, unicode, SQL): each works as that
  very name, or fails with a typed error; nothing else in the database changes.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import ferromem
import numpy as np
import pytest
from _helpers import child_env, derived_record, record_mismatches, store_records
from _pg_children import big_batch_ids, small_batch_ids
from _postgres_fixtures import read_records, store_name_of, store_row, with_query
from ferromem import postgres as pg_admin
from ferromem.exceptions import (
    FerromemError,
    InvalidInputError,
    PoolTimeoutError,
    StorageError,
    StorageUnavailableError,
)

pytestmark = pytest.mark.postgres

CHILDREN = Path(__file__).resolve().parent / "_pg_children.py"
WAIT_S = 120.0  # a shared, slow machine: generous deadlines, no timing asserted


def child(entry: str, args: dict, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(CHILDREN), entry, json.dumps(args)],
        env=child_env(),
        text=True,
        **popen,
    )


def poll(what: str, check, seconds: float = WAIT_S):
    """Calls ``check`` until it returns something true; fails saying ``what`` if it never does."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def activity(conn, application_name: str) -> list[dict]:
    rows = conn.execute(
        "SELECT pid, state, xact_start IS NOT NULL, wait_event_type, query FROM pg_stat_activity "
        "WHERE application_name = %s",
        [application_name],
    ).fetchall()
    keys = ("pid", "state", "in_transaction", "wait_event_type", "query")
    return [dict(zip(keys, row)) for row in rows]


def identifier(name: str):
    from psycopg import sql

    return sql.Identifier(name)


def table(postgres, schema: str, name: str):
    from psycopg import sql

    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def ferromem_sql(template: str, *parts):
    from psycopg import sql

    return sql.SQL(template).format(*parts)


# ------------------------------------------------------------------------------ SIGKILL


def test_a_writer_killed_inside_its_transaction_leaves_nothing_of_its_batch(postgres):
    schema = postgres.new_schema("kill")
    app = "ferromem-killed-writer-" + secrets.token_hex(4)
    url = postgres.url(schema=schema, application_name=app)
    big = 20_000
    proc = child("writer", {"url": url, "big": big}, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "ack", "the writer did not save its first batch"
        with postgres.connect(autocommit=False) as locker:
            # The batch's INSERT waits on this lock after its transaction began (the store's
            # row is locked, the write is numbered): the kill lands inside it, every time.
            locker.execute(
                ferromem_sql("LOCK TABLE {} IN SHARE MODE", table(postgres, schema, "ferromem_records"))
            )
            proc.stdin.write("go\n")
            proc.stdin.flush()
            with postgres.connect() as watcher:
                seen = poll(
                    "the large batch's INSERT waiting inside its transaction",
                    lambda: [
                        a
                        for a in activity(watcher, app)
                        if a["in_transaction"]
                        and a["wait_event_type"] == "Lock"
                        and a["query"].lstrip().upper().startswith("INSERT")
                        and "ferromem_records" in a["query"]
                    ],
                )
            assert len(seen) == 1 and seen[0]["state"] == "active"
            proc.send_signal(signal.SIGKILL)
            proc.wait(WAIT_S)
            locker.rollback()
        assert proc.returncode == -signal.SIGKILL

        # Another writer proceeds (the dead backend's transaction is rolled back and its
        # row lock released when the server sees the connection gone).
        other = ferromem.open(postgres.url(schema=schema, store=store_name_of(url)))
        store_records(other, [derived_record("after-the-kill")])
        with postgres.connect() as conn:
            poll("the killed writer's server process to end", lambda: not activity(conn, app))
            contents = read_records(conn, schema, store_name_of(url))
            epoch, seq, _ = store_row(conn, schema, store_name_of(url))
        expected = [*small_batch_ids(), "after-the-kill"]
        assert sorted(contents) == sorted(expected), f"{len(contents)} records, e.g. {sorted(contents)[:3]}"
        assert seq == 2, f"two writes were acknowledged; the store's sequence is at {seq}"
        for rid in expected:
            assert not record_mismatches(contents[rid], derived_record(rid))
        assert other.count() == len(expected)

        with ferromem.open(postgres.url(schema=schema, store=store_name_of(url))) as fresh:
            assert fresh.count() == len(expected)
            assert all(r is None for r in fresh.get_many(big_batch_ids(big)[:: big // 50]))
            for rid, got in zip(expected, fresh.get_many(expected)):
                assert not record_mismatches(got, derived_record(rid))
            hit = fresh.search(derived_record("small-3").vector, 1)
            assert list(hit.ids) == ["small-3"]
            store_records(fresh, [derived_record(i) for i in big_batch_ids(500)])  # writable
            assert fresh.count() == len(expected) + 500
        other.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------ pool


def test_an_exhausted_pool_raises_pool_timeout_and_writes_nothing(postgres):
    app = "ferromem-pool-" + secrets.token_hex(4)
    options = {"pool_size": 1, "pool_timeout": 0.5, "application_name": app, "max_staleness": 0}
    url_a, url_b = postgres.url(**options), postgres.url(**options)  # two stores, one pool of one
    a, b = ferromem.open(url_a), ferromem.open(url_b)
    a.add("seed", [1.0, 0.0, 0.0])
    b.add("seed", [1.0, 0.0, 0.0])
    outcome: list = []
    with postgres.connect(autocommit=False) as locker:
        locker.execute(
            ferromem_sql(
                "SELECT id FROM {} WHERE name = %s FOR UPDATE",
                table(postgres, postgres.schema, "ferromem_stores"),
            ),
            [store_name_of(url_a)],
        )

        def blocked_write():
            try:
                outcome.append(a.add("waited", [0.0, 1.0, 0.0]))
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                outcome.append(exc)

        writer = threading.Thread(target=blocked_write)
        writer.start()
        with postgres.connect() as watcher:
            poll(
                "the write holding the pool's only connection to wait on the store's row lock",
                lambda: [
                    x
                    for x in activity(watcher, app)
                    if x["wait_event_type"] == "Lock" and "FOR UPDATE" in x["query"].upper()
                ],
            )
        with pytest.raises(PoolTimeoutError) as info:
            b.add("refused", [0.0, 0.0, 1.0])
        error = info.value
        assert isinstance(error, StorageUnavailableError) and isinstance(error, TimeoutError)
        assert isinstance(error, StorageError) and isinstance(error, FerromemError)
        assert "pool" in str(error).lower()
        with pytest.raises(PoolTimeoutError):
            a.count()  # max_staleness=0: a read asks the database too
        assert outcome == [] and writer.is_alive()
        locker.rollback()
    writer.join(WAIT_S)
    assert outcome == [["waited"]], outcome
    with postgres.connect() as conn:
        assert sorted(read_records(conn, postgres.schema, store_name_of(url_b))) == ["seed"]
        assert sorted(read_records(conn, postgres.schema, store_name_of(url_a))) == ["seed", "waited"]
    assert b.get("refused") is None and b.count() == 1
    b.add("later", [0.0, 0.0, 1.0])  # the pool serves again
    assert b.count() == 2 and a.count() == 2
    a.close()
    b.close()


# ------------------------------------------------------------------------------ migration


def version_rows(postgres, schema: str) -> list[tuple]:
    with postgres.connect() as conn:
        return conn.execute(
            ferromem_sql(
                "SELECT version FROM {} ORDER BY version", table(postgres, schema, "ferromem_schema_versions")
            )
        ).fetchall()


def ferromem_tables(postgres, schema: str) -> list[str]:
    with postgres.connect() as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", [schema]
        ).fetchall()
    return [r[0] for r in rows]


TABLES = ["ferromem_records", "ferromem_schema_versions", "ferromem_stores", "ferromem_tombstones"]


def test_the_migration_run_twice_changes_nothing_the_second_time(postgres, tmp_path):
    schema = postgres.new_schema("twice")
    url = postgres.url(schema=schema)
    assert pg_admin.migrate(url) == 1
    assert pg_admin.migrate(url) == 1
    # And from another process, which has not seen the schema yet.
    start = tmp_path / "start"
    start.write_text("go")
    again = child(
        "open_and_add", {"url": url, "start_file": str(start), "migrate_only": True}, stdout=subprocess.PIPE
    )
    out, _ = again.communicate(timeout=WAIT_S)
    assert again.returncode == 0 and json.loads(out) == {"version": 1}
    assert version_rows(postgres, schema) == [(1,)]
    assert ferromem_tables(postgres, schema) == TABLES
    with ferromem.open(url) as store:
        store.add("x", [1.0, 2.0])
        assert store.count() == 1


@pytest.mark.parametrize("how", ["open", "migrate"])
def test_processes_migrating_one_schema_at_once_all_succeed_once(postgres, tmp_path, how):
    schema = postgres.new_schema("race")
    start = tmp_path / "start"
    procs = [
        child(
            "open_and_add",
            {
                "url": postgres.url(schema=schema, store=f"racer-{i}"),
                "id": f"r{i}",
                "start_file": str(start),
                "migrate_only": how == "migrate",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    time.sleep(0.5)  # let them import ferromem and wait at the start line: the opens overlap
    start.write_text("go")
    results = [p.communicate(timeout=WAIT_S) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    assert version_rows(postgres, schema) == [(1,)]
    assert ferromem_tables(postgres, schema) == TABLES
    if how == "open":
        assert [json.loads(out) for out, _ in results] == [{"count": 1}] * 4
        with postgres.connect() as conn:
            for i in range(4):
                assert list(read_records(conn, schema, f"racer-{i}")) == [f"r{i}"]


def test_a_schema_of_a_newer_version_is_refused_and_left_alone(postgres):
    schema = postgres.new_schema("newer")
    url = postgres.url(schema=schema)
    assert pg_admin.migrate(url) == 1
    with postgres.connect() as conn:
        conn.execute(
            ferromem_sql(
                "INSERT INTO {} (version, description) VALUES (99, 'from the future')",
                table(postgres, schema, "ferromem_schema_versions"),
            )
        )
    # Through a pool of other options: certainly one that has not seen the schema yet.
    with pytest.raises(ferromem.IncompatibleStoreError, match="99"):
        ferromem.open(postgres.url(schema=schema, pool_size=2))
    assert version_rows(postgres, schema) == [(1,), (99,)]
    assert ferromem_tables(postgres, schema) == TABLES


# ------------------------------------------------------------------------------ credentials


def assert_secret_absent(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text, f"the password appears in: {text[:500]!r}"


def exception_texts(exc: BaseException) -> list[str]:
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    for arg in exc.args:
        texts.append(repr(arg))
    return texts


def elsewhere(
    url: str, *, host: str | None = None, port: int | None = None, dbname: str | None = None
) -> str:
    """The URL with another host, port or database (its user, password and options kept)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    old_host = parts.hostname or "127.0.0.1"
    netloc = f"{host or old_host}:{port or parts.port or 5432}"
    if userinfo:
        netloc = f"{userinfo}@{netloc}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, path="/" + dbname if dbname else parts.path))


def password_url(postgres, password: str, **options) -> str:
    """The test DSN with a user and a password (trust authentication ignores it)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(postgres.dsn)
    user = parts.username or "postgres"
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port or 5432}"
    base = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return with_query(base, schema=postgres.schema, **options)


def test_a_password_never_shows(postgres, caplog, capfd):
    raw = "S3cret-" + secrets.token_hex(6)
    # The same secret, percent-encoded in the URL: neither form may be shown.
    encoded = raw[:3] + "%2F" + raw[3:]
    decoded = raw[:3] + "/" + raw[3:]
    caplog.set_level(logging.DEBUG)
    for password in (raw, encoded):
        url = password_url(postgres, password, store="creds-" + secrets.token_hex(4))
        with ferromem.open(url) as store:
            store.add("a", [1.0, 2.0, 3.0])
            texts = [repr(store), str(store), str(store.location), json.dumps(store.stats(), default=str)]
            assert store.location.startswith("postgresql://")
            assert_secret_absent(raw, *texts)
            assert_secret_absent(decoded, *texts)
        assert_secret_absent(raw, repr(store))

    failing = {
        "no such host": elsewhere(
            password_url(postgres, raw, store="x", connect_timeout=2, reconnect_timeout=1),
            host="no-such-host.invalid",
        ),
        "no such database": elsewhere(
            password_url(postgres, raw, store="x", reconnect_timeout=1),
            dbname=f"no_such_db_{secrets.token_hex(3)}",
        ),
        "refused port": elsewhere(
            password_url(postgres, raw, store="x", connect_timeout=2, reconnect_timeout=1), port=1
        ),
        "bad pool size": password_url(postgres, raw, store="x", pool_size=0),
        "unknown option": password_url(postgres, raw, store="x", nonsense=1),
        "bad staleness": password_url(postgres, raw, store="x", max_staleness=-1),
        "encoded, no such host": elsewhere(
            password_url(postgres, encoded, store="x", connect_timeout=2, reconnect_timeout=1),
            host="no-such-host.invalid",
        ),
    }
    for what, url in failing.items():
        assert raw in url or encoded in url
        with pytest.raises(FerromemError) as info:
            ferromem.open(url)
        texts = exception_texts(info.value)
        assert_secret_absent(raw, *texts)
        assert_secret_absent(decoded, *texts)
        if what.startswith(("bad", "unknown")):
            assert isinstance(info.value, InvalidInputError), (what, info.value)
        else:
            assert isinstance(info.value, StorageError), (what, info.value)
    for function in (pg_admin.migrate, pg_admin.list_stores, pg_admin.drop_store):
        with pytest.raises(FerromemError) as info:
            function(failing["refused port"])
        assert_secret_absent(raw, *exception_texts(info.value))
    out, err = capfd.readouterr()
    assert_secret_absent(raw, caplog.text, out, err)
    assert_secret_absent(decoded, caplog.text, out, err)


def test_a_password_from_pgpassword_never_shows(postgres, monkeypatch, caplog, capfd):
    secret = "PgPw-" + secrets.token_hex(6)
    monkeypatch.setenv("PGPASSWORD", secret)  # used when the URL has no password
    caplog.set_level(logging.DEBUG)
    with ferromem.open(postgres.url()) as store:
        store.add("a", [1.0, 2.0])
        assert_secret_absent(secret, repr(store), str(store.location), json.dumps(store.stats(), default=str))
    for url in (
        elsewhere(postgres.url(connect_timeout=2, reconnect_timeout=1), port=1),
        elsewhere(postgres.url(reconnect_timeout=1), dbname=f"no_such_db_{secrets.token_hex(3)}"),
    ):
        with pytest.raises(StorageError) as info:
            ferromem.open(url)
        assert_secret_absent(secret, *exception_texts(info.value))
    out, err = capfd.readouterr()
    assert_secret_absent(secret, caplog.text, out, err)


# ------------------------------------------------------------------------------ hostile names

HOSTILE_NAMES = [
    'it\'s "quoted"',
    "semi;colon",
    "'; DROP TABLE ferromem_records; --",
    'x"; DROP SCHEMA public CASCADE; --',
    "茶🍵 ✓",
    "עברית",
    "%",
    "_",
    "a&b=c",
    "q?x#y",
    "back\\slash",
    "with space",
    "+plus+",
    "MixedCase",
    "$1",
    "a" * 200,
]


def test_hostile_store_names_are_names(postgres):
    stores = {}
    for i, name in enumerate(HOSTILE_NAMES):
        url = postgres.url(store=name)
        with ferromem.open(url) as store:
            store.add(f"r{i}", np.eye(len(HOSTILE_NAMES), dtype=np.float32)[i])
            stores[name] = f"r{i}"
    with postgres.connect() as conn:
        for name, rid in stores.items():
            assert list(read_records(conn, postgres.schema, name)) == [rid], name
            assert store_row(conn, postgres.schema, name) is not None
    for name, rid in stores.items():
        with ferromem.open(postgres.url(store=name)) as store:
            assert [r.id for r in store.list()] == [rid], name
    assert ferromem_tables(postgres, postgres.schema) == TABLES
    for bad in ("", "nul\x00name", "a" * 201):
        with pytest.raises(InvalidInputError):
            ferromem.open(postgres.url(store=bad))


def test_hostile_schema_names_are_names_or_typed_errors(postgres):
    # A canary the injections in the names aim at: a schema of this session holding a
    # table called ferromem_records, and a table of its own.
    canary = postgres.new_schema("canary")
    with postgres.connect() as conn:
        conn.execute(ferromem_sql("CREATE SCHEMA {}", identifier(canary)))
        for name in ("ferromem_records", "victim"):
            conn.execute(ferromem_sql("CREATE TABLE {} (v int)", table(postgres, canary, name)))
            conn.execute(ferromem_sql("INSERT INTO {} VALUES (1)", table(postgres, canary, name)))
    outcomes = {}
    for i, hostile in enumerate(HOSTILE_NAMES[:-1]):
        schema = f"{postgres.schema}_{hostile}"
        assert len(schema.encode()) <= 63, schema
        postgres.extra_schemas.add(schema)
        try:
            with ferromem.open(postgres.url(schema=schema, store="s")) as store:
                store.add("x", [1.0, float(i)])
                outcomes[hostile] = store.count()
        except FerromemError as exc:
            outcomes[hostile] = f"{type(exc).__name__}: {exc}"
            continue
        # It is that very schema, with the tables in it, and the record in them.
        assert ferromem_tables(postgres, schema) == TABLES, schema
        with postgres.connect() as conn:
            assert list(read_records(conn, schema, "s")) == ["x"]
    print("\nhostile schema names:", json.dumps(outcomes, ensure_ascii=False, indent=1))
    assert set(outcomes.values()) <= {1} | {v for v in outcomes.values() if isinstance(v, str)}
    with postgres.connect() as conn:
        for name in ("ferromem_records", "victim"):
            assert conn.execute(
                ferromem_sql("SELECT v FROM {}", table(postgres, canary, name))
            ).fetchall() == [(1,)]
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'public'").fetchone() == (1,)
    for bad in ("", "x" * 64, "nul\x00schema"):
        with pytest.raises(InvalidInputError):
            ferromem.open(postgres.url(schema=bad))


# ------------------------------------------------------------------------------ lost connections


@pytest.fixture
def proxy(postgres):
    """A TCP proxy in front of the test server (tests/postgres/_tcp_proxy.py)."""
    import urllib.parse

    from _tcp_proxy import TcpProxy

    parts = urllib.parse.urlsplit(postgres.dsn)
    through = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield through
    through.close()


def url_through(postgres, proxy, **options) -> str:
    import urllib.parse

    parts = urllib.parse.urlsplit(postgres.url(**options))
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0] + "@" if len(netloc) == 2 else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))


def test_a_write_while_the_server_is_unreachable_fails_typed_and_writes_nothing(postgres, proxy):
    url = url_through(postgres, proxy, reconnect_timeout=1, connect_timeout=1, max_staleness=0)
    store = ferromem.open(url)
    store.add("before", [1.0, 0.0])
    proxy.cut()
    with pytest.raises(StorageUnavailableError) as info:
        store.add("during", [0.0, 1.0])
    assert not isinstance(info.value, PoolTimeoutError)
    with pytest.raises(StorageUnavailableError):
        store.count()  # max_staleness=0: a read must ask the database, which it cannot reach
    proxy.restore()
    store.add("after", [1.0, 1.0])
    assert sorted(r.id for r in store.list()) == ["after", "before"]
    with postgres.connect() as conn:
        assert sorted(read_records(conn, postgres.schema, store_name_of(url))) == ["after", "before"]
        assert store_row(conn, postgres.schema, store_name_of(url))[1] == 2
    store.close()


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_connection_lost_at_commit_neither_loses_nor_repeats_the_write(postgres, proxy, when):
    """The connection breaks as the COMMIT is sent: "before" the server got it (it rolls
    back: the write must be run again) or "after" (it committed, the client never heard:
    the write must not be run again). Either way it is acknowledged once and stored once."""
    url = url_through(postgres, proxy)
    store = ferromem.open(url)
    store_records(store, [derived_record("first")])
    proxy.lose_commit(when)
    store_records(store, [derived_record("second")])  # acknowledged: no error
    assert proxy.commits_lost == 1, "the proxy never saw the COMMIT it was to lose"
    store.add("third", derived_record("third").vector)
    with postgres.connect() as conn:
        contents = read_records(conn, postgres.schema, store_name_of(url))
        seq = store_row(conn, postgres.schema, store_name_of(url))[1]
    assert sorted(contents) == ["first", "second", "third"]
    assert seq == 3, f"3 writes acknowledged, the store's sequence is at {seq}: one was applied twice or lost"
    assert not record_mismatches(contents["second"], derived_record("second"))
    with ferromem.open(postgres.url(store=store_name_of(url))) as fresh:
        assert sorted(r.id for r in fresh.list()) == ["first", "second", "third"]
    store.close()
