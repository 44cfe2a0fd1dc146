"""PostgreSQL benchmark: ferromem on PostgreSQL beside ferromem's embedded store and CrewAI's
default storage (LanceDB), in one run, as one group of markdown tables per size.

    python asv_bench/postgres_table.py --dsn postgresql://postgres@127.0.0.1:5432/test
    python asv_bench/postgres_table.py --sizes 10000 --out build/pg      # a quick run
    FERROMEM_BENCH_POSTGRES_DSN=postgresql://... python asv_bench/postgres_table.py

The database comes from --dsn, else $FERROMEM_BENCH_POSTGRES_DSN, else
$FERROMEM_TEST_POSTGRES_DSN. Each size runs in a fresh process:

1. Through CrewAI's StorageBackend (as figure f of peers.py), for ferromem on PostgreSQL,
   ferromem embedded (its SQLite file) and CrewAI's LanceDBStorage: fill to N records
   (save() of 1,000 MemoryRecords a call; the fill time is reported), search(limit=10) of
   probe vectors (p50/p95, recall@10 against numpy's exact top-10), save() of one record
   (p50/p95), and 8 threads doing 90% search / 10% save() for --seconds. Both ferromem
   stores are opened with index="exact" (CrewAI's LanceDB table has no vector index: it
   scans exactly too) and cache_size=0 (repeated probes time scans, not cache hits).
2. Visibility: a second process (spawned) writes one record at a time into the filled
   store; this process searches for it (a scope only these records have, so the scan is
   tiny) until it shows. Latency = when it showed - when the writer's add() returned, both
   on CLOCK_MONOTONIC, which the processes share. PostgreSQL at the default max_staleness
   (LISTEN/NOTIFY wakes the replica) and at max_staleness=0 (the database is asked before
   every read, so notifications cannot help); the embedded file as the yardstick.
3. First open: a fresh process times ferromem.open() and the first search, on the
   PostgreSQL store and on the embedded file without and with fast_open (its image written
   by an earlier open).

The stores go into --schema (default ferromem_bench), which must not exist yet: the run
creates it and drops it at the end (with psql; without psql it empties its stores through
ferromem and says so). Timings are wall-clock on whatever machine runs it: compare the
ratios taken in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import numpy as np
from peers import (
    FerromemCrew,
    K,
    LanceCrew,
    Skip,
    _crewai_records,
    _row_of,
    exact_topk,
    fmt,
    log,
    machine_facts,
    mixed_load,
    need,
    p,
    ratio,
    recall_at_k,
    timed,
    unit_rows,
)

FILL_BATCH = 1000
VIS_SCOPE = "/bench/visibility"
# ferromem's own URL options (src_rust/ferromem-core/src/storage/postgres.rs); psql gets the
# URL without them.
FERROMEM_OPTIONS = ("store", "schema", "pool_size", "pool_timeout", "reconnect_timeout", "max_staleness")
DSN_VARIABLES = ("FERROMEM_BENCH_POSTGRES_DSN", "FERROMEM_TEST_POSTGRES_DSN")
# Children get their location through the environment: a URL may hold a password, which
# must not show in a process list.
LOCATION_VARIABLE = "FERROMEM_BENCH_LOCATION"


# =========================================================================== locations


def location(dsn: str, schema: str, store: str, **options: Any) -> str:
    """The DSN with this run's schema and store (and ``options``) in its query, replacing
    any the DSN gave; its other options stay as written."""
    base, _, query = dsn.partition("?")
    ours = {"schema", "store", *options}
    pairs = [pair for pair in query.split("&") if pair and pair.split("=", 1)[0] not in ours]
    pairs += [f"schema={quote(schema, safe='')}", f"store={quote(store, safe='')}"]
    pairs += [f"{key}={quote(str(value), safe='')}" for key, value in options.items()]
    return f"{base}?{'&'.join(pairs)}"


def shown(dsn: str) -> str:
    """The DSN without its password, for logs and tables."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))


class Sql:
    """Runs a statement through psql, with the password in PGPASSWORD rather than argv.
    ``available`` is False when psql is not on PATH."""

    def __init__(self, dsn: str):
        parts = urlsplit(dsn)
        query = "&".join(
            pair for pair in parts.query.split("&") if pair and pair.split("=", 1)[0] not in FERROMEM_OPTIONS
        )
        netloc = parts.netloc
        self.env = dict(os.environ)
        if parts.password is not None:
            self.env["PGPASSWORD"] = unquote(parts.password)
            netloc = f"{parts.username}@{netloc.rsplit('@', 1)[1]}"
        self.uri = urlunsplit(("postgresql", netloc, parts.path, query, ""))
        self.psql = shutil.which("psql")
        self.available = self.psql is not None

    def __call__(self, statement: str) -> list[list[str]]:
        assert self.psql is not None
        res = subprocess.run(
            [
                self.psql,
                "-X",
                "-q",
                "-A",
                "-t",
                "-F",
                "\t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.uri,
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )
        if res.returncode != 0:
            raise RuntimeError(f"psql failed ({shown(self.uri)}): {res.stderr.strip()}")
        return [line.split("\t") for line in res.stdout.splitlines() if line]


# =========================================================================== child processes


def vis_vector(run: int, i: int, dim: int) -> np.ndarray:
    """The vector of visibility write ``i`` of run ``run``: the same in both processes, and
    a different one in each run (so an older run's record never ties with the new one)."""
    return unit_rows(np.random.default_rng([run, i]), 1, dim)[0]


def vis_writer(run: int, dim: int) -> None:
    """The writing process: opens the store, says "ready", then for each index read from
    stdin adds one record and prints the index, when add() was called and when it returned."""
    import ferromem

    store = ferromem.open(os.environ[LOCATION_VARIABLE], cache_size=0, index="exact")
    print("ready", flush=True)
    for line in sys.stdin:
        i = int(line)
        vector = vis_vector(run, i, dim)
        called = time.monotonic()
        store.add(f"vis-{run}-{i}", vector, contents="visibility probe", scopes=VIS_SCOPE)
        acked = time.monotonic()
        print(i, called, acked, flush=True)
    store.close()


def open_probe(dim: int, fast_open: bool) -> None:
    """A fresh process's first open of the store and its first search, as one JSON line."""
    import ferromem

    query = unit_rows(np.random.default_rng(5), 1, dim)[0]
    kw = {"fast_open": True} if fast_open else {}
    t0 = time.perf_counter()
    store = ferromem.open(os.environ[LOCATION_VARIABLE], cache_size=0, index="exact", **kw)
    t1 = time.perf_counter()
    store.search(query, K)
    t2 = time.perf_counter()
    stats = store.stats()
    out = {
        "open_s": t1 - t0,
        "first_search_s": t2 - t1,
        "records": stats["records"],
        "from_image": bool(stats["fast_open"]["opened_from_image"]),
    }
    store.close()
    print(json.dumps(out))


def child_env(where: str) -> dict[str, str]:
    return dict(os.environ, **{LOCATION_VARIABLE: where})


# =========================================================================== measurements


class PostgresCrew(FerromemCrew):
    """ferromem's MemoryStorage on a store in PostgreSQL, opened as the embedded row is."""

    def __init__(self, url: str):
        super().__init__("exact")
        self.url = url
        self.name = "ferromem on PostgreSQL"

    def make(self, root):
        need("crewai")
        import ferromem
        from ferromem.crewai import MemoryStorage

        self.store = ferromem.open(self.url, cache_size=0, index="exact")
        return MemoryStorage(store=self.store)


def single_saves(storage: Any, first_id: int, dim: int, saves: int, budget_s: float) -> dict:
    """p50/p95 of save() of one new record. Each has an id of its own (an id saved twice
    would be a replace for ferromem and a second row for LanceDB); two go untimed first."""
    from crewai.memory.types import MemoryRecord

    vectors = unit_rows(np.random.default_rng(first_id), saves + 2, dim).tolist()
    records = [
        MemoryRecord(
            id=str(uuid.UUID(int=first_id + i)),
            content=f"one more memory {i}",
            scope="/crew/bench/saves",
            categories=["fact"],
            embedding=v,
        )
        for i, v in enumerate(vectors)
    ]
    for r in records[:2]:
        storage.save([r])
    secs, _ = timed(lambda r: storage.save([r]), records[2:], warmup=0, budget_s=budget_s)
    return {"save_p50_ms": p(secs, 50), "save_p95_ms": p(secs, 95), "saves": len(secs)}


def full_durability_saves(file: str, first_id: int, dim: int, saves: int, budget_s: float) -> dict:
    """The embedded file's one-record saves with durability="full" (an fsync per commit,
    as a PostgreSQL commit waits for its WAL flush): the like-for-like save."""
    import ferromem
    from ferromem.crewai import MemoryStorage

    row: dict[str, Any] = {"name": "ferromem embedded, durability='full'", "save_only": True}
    try:
        with ferromem.open(file, cache_size=0, index="exact", durability="full") as store:
            row.update(single_saves(MemoryStorage(store=store), first_id, dim, saves, budget_s))
        log(f"  {row['name']}: save p50 {row['save_p50_ms']:.2f} ms")
    except Exception as exc:  # noqa: BLE001
        row["skipped"] = f"{type(exc).__name__}: {exc}"
    return row


def storage_row(backend: Any, root: str, data: dict, saves: int, seconds: float, budget_s: float) -> dict:
    """Fill, search, save and the 8-thread run on one StorageBackend; a failure is a row."""
    vectors, queries, kth, items = data["vectors"], data["queries"], data["kth"], data["items"]
    n, dim = vectors.shape
    row: dict[str, Any] = {"name": backend.name}
    storage = None
    try:
        storage = backend.make(root)
        log(f"fill {backend.name}: {n:,} records")
        fill = 0.0
        for s in range(0, n, FILL_BATCH):
            records = _crewai_records(items, vectors, s, min(s + FILL_BATCH, n))
            t = time.perf_counter()
            storage.save(records)
            fill += time.perf_counter() - t
            if (s // FILL_BATCH) % 20 == 19:
                log(f"  {s + FILL_BATCH:,} saved, {fill:.0f} s")
        backend.ready(storage)
        row["fill_s"] = fill
        qlists = queries.tolist()
        secs, raw = timed(lambda q: storage.search(q, limit=K), qlists, budget_s=budget_s)
        found = [np.array([_row_of(r) for r, _ in res], dtype=np.int64) for res in raw]
        row["recall"] = recall_at_k(found, vectors, queries[: len(found)], kth[: len(found)])
        row["search_p50_ms"], row["search_p95_ms"], row["searches"] = p(secs, 50), p(secs, 95), len(secs)
        row.update(single_saves(storage, n + 1, dim, saves, budget_s))
        row["ops_8t"], row["errors_8t"] = mixed_load(storage, queries, seconds)
        log(
            f"  fill {fill:.1f} s, save p50 {row['save_p50_ms']:.2f} ms, search p50 {row['search_p50_ms']:.2f} ms "
            f"(recall {row['recall']:.3f}), {row['ops_8t']:,.0f} ops/s, {row['errors_8t']} errors"
        )
    except Exception as exc:  # noqa: BLE001 - a failing backend is a row, never a crash
        reason = str(exc) if isinstance(exc, Skip) else f"{type(exc).__name__}: {exc}"
        log(f"  skipped {backend.name}: {reason}")
        row["skipped"] = reason
    finally:
        if storage is not None:
            with contextlib.suppress(Exception):
                backend.close(storage)
        gc.collect()
    return row


def visibility(
    writer_at: str, reader_at: str, run: int, writes: int, dim: int, label: str, staleness: str
) -> dict:
    """p50/p95 of how long after the writer's acknowledgement its record shows in this
    process's searches (see the module's docstring)."""
    import ferromem

    row: dict[str, Any] = {"name": label, "staleness": staleness}
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--vis-writer", str(run), "--dim", str(dim)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(writer_at),
    )
    assert proc.stdin is not None and proc.stdout is not None
    store = None
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the writing process did not start (exit status {proc.wait()})")
        store = ferromem.open(reader_at, cache_size=0, index="exact")
        jitter = np.random.default_rng(run)
        after_ack, after_call, write_s, timeouts = [], [], [], 0
        for i in range(writes):
            # A random gap between writes, so that the writes do not fall in step with any
            # periodic work of the reader (its staleness poll).
            time.sleep(float(jitter.uniform(0, 0.005)))
            vector, wanted = vis_vector(run, i, dim), f"vis-{run}-{i}"
            proc.stdin.write(f"{i}\n")
            proc.stdin.flush()
            deadline = time.monotonic() + 30.0
            seen = None
            while seen is None:
                found = store.search(vector, 1, scope=VIS_SCOPE)
                now = time.monotonic()
                if len(found) and found.ids[0] == wanted:
                    seen = now
                elif now > deadline:
                    break
                else:
                    time.sleep(0.0002)  # the poll's resolution; it leaves the cores to the writer
            _, called, acked = proc.stdout.readline().split()
            if seen is None:
                timeouts += 1
                continue
            after_ack.append(seen - float(acked))
            after_call.append(seen - float(called))
            write_s.append(float(acked) - float(called))
        row.update(
            writes=writes,
            timeouts=timeouts,
            ack_p50_ms=p(np.asarray(after_ack), 50),
            ack_p95_ms=p(np.asarray(after_ack), 95),
            ack_max_ms=float(np.max(after_ack)) * 1e3,
            call_p50_ms=p(np.asarray(after_call), 50),
            call_p95_ms=p(np.asarray(after_call), 95),
            write_p50_ms=p(np.asarray(write_s), 50),
        )
        log(
            f"  visibility {label} ({staleness}): p50 {row['ack_p50_ms']:.2f} ms, p95 {row['ack_p95_ms']:.2f} ms "
            f"after the ack, {timeouts} timeouts"
        )
    except Exception as exc:  # noqa: BLE001 - a failing measurement is a row, never a crash
        log(f"  visibility {label} failed: {type(exc).__name__}: {exc}")
        row["skipped"] = f"{type(exc).__name__}: {exc}"
    finally:
        if store is not None:
            store.close()
        proc.stdin.close()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return row


def first_open(where: str, dim: int, label: str, reps: int, fast_open: bool = False) -> dict:
    """Median over ``reps`` fresh processes of open and first-search time."""
    row: dict[str, Any] = {"name": label}
    try:
        runs = []
        for _ in range(reps):
            cmd = [sys.executable, os.path.abspath(__file__), "--open-probe", "--dim", str(dim)]
            res = subprocess.run(
                cmd + (["--fast-open"] if fast_open else []),
                capture_output=True,
                text=True,
                env=child_env(where),
                timeout=1800,
            )
            if res.returncode != 0:
                raise RuntimeError(
                    res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"
                )
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        row.update(
            reps=reps,
            open_s=float(np.median([r["open_s"] for r in runs])),
            open_max_s=max(r["open_s"] for r in runs),
            first_search_ms=float(np.median([r["first_search_s"] for r in runs])) * 1e3,
            records=runs[-1]["records"],
            from_image=all(r["from_image"] for r in runs),
        )
        log(f"  first open {label}: {row['open_s']:.2f} s, first search {row['first_search_ms']:.1f} ms")
    except Exception as exc:  # noqa: BLE001
        log(f"  first open {label} failed: {type(exc).__name__}: {exc}")
        row["skipped"] = f"{type(exc).__name__}: {exc}"
    return row


def run_size(n: int, a: argparse.Namespace) -> dict:
    """Every measurement at one size (this is a fresh process)."""
    from ferromem._workload import memories

    dsn = os.environ[DSN_VARIABLES[0]]
    dim = a.dim
    rng = np.random.default_rng(3)
    vectors = unit_rows(rng, n, dim)
    queries = unit_rows(rng, a.probes, dim)
    _, scores = exact_topk(vectors, queries)
    data = {"vectors": vectors, "queries": queries, "kth": scores[:, K - 1], "items": list(memories(n))}
    pg_url = location(dsn, a.schema, f"b{n}-{a.token}")
    root = tempfile.mkdtemp(prefix="ferromem-pgbench-")
    out: dict[str, Any] = {"n": n, "dim": dim, "started": time.strftime("%Y-%m-%d %H:%M")}
    try:
        embedded = FerromemCrew("exact")
        embedded.name = "ferromem embedded (SQLite file)"
        file = os.path.join(root, "memories.ferro")  # where FerromemCrew.make puts it
        pg = PostgresCrew(pg_url)
        lance_root = os.path.join(root, "lance")
        os.makedirs(lance_root)
        rows = [
            storage_row(b, r, data, a.saves, a.seconds, a.budget) for b, r in ((pg, root), (embedded, root))
        ]
        rows.append(full_durability_saves(file, 2 * n + 1, dim, a.saves, a.budget))
        rows.append(storage_row(LanceCrew(), lance_root, data, a.saves, a.seconds, a.budget))
        shutil.rmtree(lance_root, ignore_errors=True)  # 3+ GB at 100k; not needed below
        out["storages"] = rows
        del data
        gc.collect()

        log("visibility: a second process writes, this one searches")
        out["visibility"] = [
            visibility(
                pg_url, pg_url, 1, a.writes, dim, "ferromem on PostgreSQL", "default (1 s; LISTEN/NOTIFY)"
            ),
            visibility(
                pg_url,
                location(dsn, a.schema, f"b{n}-{a.token}", max_staleness=0),
                2,
                a.writes,
                dim,
                "ferromem on PostgreSQL",
                "0 (the database asked before every read)",
            ),
            visibility(file, file, 3, a.writes, dim, "ferromem embedded (SQLite file)", "-"),
        ]

        log("first open in a fresh process")
        opens = [first_open(pg_url, dim, "ferromem on PostgreSQL", a.open_reps)]
        opens.append(first_open(file, dim, "ferromem embedded (SQLite file)", a.open_reps))
        # The image is written when a fast_open store closes; this first open writes it.
        first_open(file, dim, "ferromem embedded, writing its image", 1, fast_open=True)
        opens.append(
            first_open(file, dim, "ferromem embedded, fast_open (from its image)", a.open_reps, True)
        )
        out["opens"] = opens
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["load"] = os.getloadavg()[0]
    out["finished"] = time.strftime("%Y-%m-%d %H:%M")
    return out


# =========================================================================== report


def ms_pair(row: dict, key: str) -> str:
    return f"{fmt(row[key + '_p50_ms'])} / {fmt(row[key + '_p95_ms'])}"


def render_size(r: dict, seconds: float) -> str:
    n, dim = r["n"], r["dim"]
    lines = [
        f"#### {n:,} x {dim}",
        "",
        f"Through CrewAI's StorageBackend: fill = save() of {FILL_BATCH:,} MemoryRecords a call; then "
        f"search(limit={K}) of the probe vectors, save() of one record, and 8 threads doing 90% search / "
        f"10% save() for {seconds:g} s. Both ferromem stores index=exact, cache_size=0.",
        "",
        "| storage | fill s | save p50 / p95 ms | search p50 / p95 ms | recall@10 | 8-thread ops/s |",
        "|---|---|---|---|---|---|",
    ]
    by_name = {}
    for s in r["storages"]:
        if "skipped" in s:
            lines.append(f"| {s['name']} | skipped: {s['skipped'].replace('|', '/')} | | | | |")
            continue
        by_name[s["name"]] = s
        if s.get("save_only"):
            lines.append(f"| {s['name']} (saves only) | - | {ms_pair(s, 'save')} | - | - | - |")
            continue
        errors = f" ({s['errors_8t']} errors)" if s["errors_8t"] else ""
        lines.append(
            f"| {s['name']} | {s['fill_s']:.1f} | {ms_pair(s, 'save')} | {ms_pair(s, 'search')} "
            f"| {s['recall']:.3f} | {fmt(s['ops_8t'])}{errors} |"
        )
    pg = by_name.get("ferromem on PostgreSQL")
    emb = by_name.get("ferromem embedded (SQLite file)")
    full = by_name.get("ferromem embedded, durability='full'")
    lance = by_name.get("CrewAI LanceDBStorage")
    pairs = [
        ("ferromem on PostgreSQL / ferromem embedded", pg, emb),
        ("ferromem on PostgreSQL / ferromem embedded, durability='full'", pg, full),
        ("CrewAI LanceDB / ferromem on PostgreSQL", lance, pg),
        ("CrewAI LanceDB / ferromem embedded", lance, emb),
    ]
    lines += [
        "",
        "Time ratios from this run (above 1: the first is slower; for the 8-thread run, time per operation):",
        "",
        "| | save p50 | save p95 | search p50 | search p95 | 8-thread |",
        "|---|---|---|---|---|---|",
    ]
    for label, x, y in pairs:
        if x is None or y is None:
            lines.append(f"| {label} | - | - | - | - | - |")
            continue
        cells = [
            ratio(x.get(k), y.get(k))
            for k in ("save_p50_ms", "save_p95_ms", "search_p50_ms", "search_p95_ms")
        ]
        ops_x, ops_y = x.get("ops_8t"), y.get("ops_8t")
        cells.append(ratio(1 / ops_x if ops_x else None, 1 / ops_y if ops_y else None))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    lines += [
        "",
        "Visibility: one process adds a record, another searches until it shows (a real second "
        "process; 0.2 ms between polls; ms after the writer's add() returned, and after it was called):",
        "",
        "| store | reader's max_staleness | after the ack p50 / p95 / max ms | after the call p50 / p95 ms | add() p50 ms | writes (timed out) |",
        "|---|---|---|---|---|---|",
    ]
    for v in r["visibility"]:
        if "skipped" in v:
            lines.append(
                f"| {v['name']} | {v['staleness']} | skipped: {v['skipped'].replace('|', '/')} | | | |"
            )
            continue
        lines.append(
            f"| {v['name']} | {v['staleness']} | {fmt(v['ack_p50_ms'])} / {fmt(v['ack_p95_ms'])} / {fmt(v['ack_max_ms'])} "
            f"| {fmt(v['call_p50_ms'])} / {fmt(v['call_p95_ms'])} | {fmt(v['write_p50_ms'])} "
            f"| {v['writes']} ({v['timeouts']}) |"
        )
    reps = next((o["reps"] for o in r["opens"] if "reps" in o), 0)
    lines += [
        "",
        f"First open in a fresh process (median of {reps}): ferromem.open() until it returns, then the first search:",
        "",
        "| store | open s | first search ms | records |",
        "|---|---|---|---|",
    ]
    for o in r["opens"]:
        if "skipped" in o:
            lines.append(f"| {o['name']} | skipped: {o['skipped'].replace('|', '/')} | | |")
            continue
        note = "" if o["from_image"] or "fast_open" not in o["name"] else " (image not used)"
        lines.append(
            f"| {o['name']}{note} | {o['open_s']:.2f} | {fmt(o['first_search_ms'])} | {o['records']:,} |"
        )
    lines += ["", f"_finished {r['finished']}, 1-minute load average then {r['load']:.1f}_"]
    return "\n".join(lines)


def server_facts(sql: Sql) -> list[str]:
    if not sql.available:
        return ["- PostgreSQL server: not queried (psql not on PATH)"]
    try:
        (row,) = sql(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'), "
            "current_setting('fsync'), current_setting('shared_buffers'), inet_server_addr() IS NULL "
            "OR host(inet_server_addr()) IN ('127.0.0.1', '::1')"
        )
    except Exception as exc:  # noqa: BLE001 - the facts are a note, not the measurement
        return [f"- PostgreSQL server: not queried ({exc})"]
    version, sync, fsync, buffers, local = row
    where = "on this machine (loopback or socket)" if local == "t" else "over the network"
    return [
        f"- PostgreSQL {version}, {where}; synchronous_commit={sync}, fsync={fsync} (a commit waits for "
        f"its WAL flush), shared_buffers={buffers}. ferromem embedded runs at its default "
        "durability='normal' (no fsync per commit)"
    ]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--dsn", help=f"the PostgreSQL URL (default ${DSN_VARIABLES[0]}, else ${DSN_VARIABLES[1]})"
    )
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--out", default=None, help="also write postgres.md and postgres.json into this folder")
    ap.add_argument("--schema", default="ferromem_bench", help="the schema the run creates and drops")
    ap.add_argument("--keep", action="store_true", help="leave the schema and its stores in the database")
    ap.add_argument("--probes", type=int, default=200, help="search probes per storage")
    ap.add_argument("--saves", type=int, default=200, help="timed one-record saves per storage")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the 8-thread run")
    ap.add_argument("--writes", type=int, default=200, help="writes per visibility run")
    ap.add_argument("--open-reps", type=int, default=3, help="fresh processes per first-open figure")
    ap.add_argument(
        "--budget", type=float, default=30.0, help="seconds at most for one series of searches or saves"
    )
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--token", help=argparse.SUPPRESS)
    ap.add_argument("--vis-writer", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--open-probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fast-open", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.vis_writer is not None:
        vis_writer(a.vis_writer, a.dim)
        return 0
    if a.open_probe:
        open_probe(a.dim, a.fast_open)
        return 0
    if a.one:
        print(json.dumps(run_size(a.one, a)))
        return 0

    dsn = a.dsn or next((os.environ[v] for v in DSN_VARIABLES if os.environ.get(v)), None)
    if not dsn:
        ap.error(f"no PostgreSQL URL: pass --dsn or set {' or '.join(DSN_VARIABLES)}")
    if not re.fullmatch(r"postgres(ql)?://.+", dsn):
        ap.error(f"--dsn must be a postgresql:// URL, got {shown(dsn)!r}")
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", a.schema):
        ap.error(f"--schema must be a plain lower-case identifier, got {a.schema!r}")
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    sql = Sql(dsn)
    if sql.available:
        if sql(f"SELECT 1 FROM pg_namespace WHERE nspname = '{a.schema}'"):
            ap.error(
                f"schema {a.schema} already exists in {shown(sql.uri)}: pass --schema NAME for a new one, or "
                f"drop it (DROP SCHEMA {a.schema} CASCADE) if an earlier run of this script left it"
            )
    else:
        log(
            "psql is not on PATH: the schema cannot be checked or dropped; this run's stores are emptied at the end"
        )
    token = time.strftime("%Y%m%d%H%M%S")
    t0 = time.perf_counter()
    results = []
    try:
        for n in sizes:
            log(f"size {n:,} x {a.dim} (a fresh process)")
            cmd = [sys.executable, os.path.abspath(__file__), "--one", str(n), "--token", token]
            for flag in ("dim", "schema", "probes", "saves", "seconds", "writes", "open_reps", "budget"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
            env = dict(os.environ, **{DSN_VARIABLES[0]: dsn})
            res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
            if res.returncode != 0:
                log(f"size {n:,} failed (exit {res.returncode})")
                return res.returncode
            results.append(json.loads(res.stdout.strip().splitlines()[-1]))
    finally:
        cleanup(sql, dsn, a.schema, token, sizes, a.keep)

    out = io.StringIO()
    command = "python asv_bench/postgres_table.py" + (
        f" --sizes {a.sizes}" if a.sizes != "10000,100000" else ""
    )
    command += f" --dim {a.dim}" if a.dim != 1536 else ""
    header = [
        f"Run of `{command}` against `{shown(dsn).split('?')[0]}` on {_dt.date.today().isoformat()}, "
        f"{time.perf_counter() - t0:.0f} s in all. Machine:",
        "",
        *machine_facts(),
        *server_facts(sql),
    ]
    out.write("\n".join(header) + "\n")
    for r in results:
        out.write("\n" + render_size(r, a.seconds) + "\n")
    print(out.getvalue())
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "postgres.md"), "w") as f:
            f.write(out.getvalue())
        with open(os.path.join(a.out, "postgres.json"), "w") as f:
            json.dump(results, f, indent=1)
        log(f"wrote {os.path.join(a.out, 'postgres.md')} and postgres.json")
    return 0


def cleanup(sql: Sql, dsn: str, schema: str, token: str, sizes: list[int], keep: bool) -> None:
    """Drops the schema this run created; without psql, empties this run's stores."""
    if keep:
        log(f"--keep: schema {schema} stays in {shown(dsn).split('?')[0]}")
        return
    if sql.available:
        sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        log(f"dropped schema {schema}")
        return
    import ferromem

    for n in sizes:
        with contextlib.suppress(Exception), ferromem.open(location(dsn, schema, f"b{n}-{token}")) as store:
            store.reset()
    log(f"emptied this run's stores; drop schema {schema} yourself (DROP SCHEMA {schema} CASCADE)")


if __name__ == "__main__":
    sys.exit(main())
