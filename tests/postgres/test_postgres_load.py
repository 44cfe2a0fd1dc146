"""Many processes on one PostgreSQL store at once, as many hosts would use it.

8 processes x 4 threads (half of the processes with one replica per thread, as separate
hosts would have, half with one replica shared by their threads), 5,000 mixed operations
each (adds, single and batch upserts, partial updates with and without a vector, deletes,
touches, reads of own ids, searches over everything) against one store. Each thread owns
its own ids, so the acknowledged operations, logged by the workers after each call
returned, define the final state exactly. Then:

* no operation raised, and every read of an own id showed the thread's last write;
* the tables, read with psycopg, hold exactly the model built from the logs (every field,
  vectors bit for bit), and so does a fresh ferromem open;
* the store's change sequence advanced once per acknowledged write: none was applied
  twice (a write retried after a lost connection would count twice), none was lost;
* every process, once caught up (max_staleness after the last write), answers exact
  searches (NumPy brute force over the database contents) from each of its replicas.

The variant restarts the server (``pg_ctlcluster VERSION CLUSTER restart``) in the middle
of the load: the backend retries with backoff within reconnect_timeout, so the same holds.

Size: FERROMEM_PG_LOAD_PROCS (8), FERROMEM_PG_LOAD_THREADS (4), FERROMEM_PG_LOAD_OPS
(5,000 per process). FERROMEM_TEST_POSTGRES_RESTART=0 keeps the server from being
restarted (a server others use). The worker is tests/postgres/_load_worker.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from _helpers import DERIVED_DIM, child_env, env_int, record_mismatches
from _load_worker import WRITES, apply
from _postgres_fixtures import read_records, store_name_of, store_row

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WORKER = Path(__file__).resolve().parent / "_load_worker.py"
MAX_STALENESS = 1.0
PROCESS_WAIT_S = 1800  # a shared, slow machine: generous; no timing is asserted


def load_size() -> tuple[int, int, int]:
    return (
        env_int("FERROMEM_PG_LOAD_PROCS", 8),
        env_int("FERROMEM_PG_LOAD_THREADS", 4),
        env_int("FERROMEM_PG_LOAD_OPS", 5000),
    )


class Load:
    """The worker processes of one run and what they report."""

    def __init__(self, postgres, tmp_path: Path, url: str):
        self.postgres = postgres
        self.url = url
        self.store = store_name_of(url)
        self.dir = tmp_path
        self.procs_n, self.threads, self.ops = load_size()
        self.start_file = tmp_path / "start"
        self.all_done_file = tmp_path / "all-done"
        self.procs: list[subprocess.Popen] = []
        self.stderr: list[Path] = []

    def config(self, process: int) -> dict:
        return {
            "url": self.url,
            "dsn": self.postgres.dsn,
            "schema": self.postgres.schema,
            "store": self.store,
            "process": process,
            "threads": self.threads,
            "ops": self.ops,
            "ids_per_thread": 40,
            "dim": DERIVED_DIM,
            "seed": 7919 * (process + 1),
            "separate_replicas": process % 2 == 0,
            "max_staleness": MAX_STALENESS,
            "final_queries": 6,
            "out": str(self.dir / f"worker{process}.json"),
            "done_file": str(self.dir / f"worker{process}.done"),
            "start_file": str(self.start_file),
            "all_done_file": str(self.all_done_file),
        }

    def start(self) -> None:
        for process in range(self.procs_n):
            err = self.dir / f"worker{process}.stderr"
            self.stderr.append(err)
            with open(err, "wb") as sink:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, str(WORKER), json.dumps(self.config(process))],
                        env=child_env(),
                        stdout=subprocess.DEVNULL,
                        stderr=sink,
                    )
                )
        self.start_file.write_text("go")

    def progress(self) -> int:
        total = 0
        for process in range(self.procs_n):
            try:
                total += int((self.dir / f"worker{process}.progress").read_text() or 0)
            except (FileNotFoundError, ValueError):
                pass
        return total

    def wait_for_progress(self, fraction: float) -> None:
        goal = fraction * self.procs_n * self.ops
        deadline = time.monotonic() + PROCESS_WAIT_S
        while self.progress() < goal:
            if any(p.poll() is not None for p in self.procs):
                return  # a worker ended early: finish() reports it
            assert time.monotonic() < deadline, f"the load made no progress: {self.progress()} ops"
            time.sleep(0.05)

    def finish(self) -> list[dict]:
        """Waits for every worker's operations, lets them check, returns their reports."""
        deadline = time.monotonic() + PROCESS_WAIT_S
        done = [self.dir / f"worker{p}.done" for p in range(self.procs_n)]
        while not all(f.exists() for f in done):
            ended = [p for p in self.procs if p.poll() is not None and p.returncode != 0]
            assert not ended, self.failure_text("a worker process failed")
            assert time.monotonic() < deadline, self.failure_text("the workers did not finish")
            time.sleep(0.05)
        self.all_done_file.write_text("checked from now")
        for proc in self.procs:
            proc.wait(timeout=PROCESS_WAIT_S)
        assert [p.returncode for p in self.procs] == [0] * self.procs_n, self.failure_text("a worker failed")
        return [json.loads((self.dir / f"worker{p}.json").read_text()) for p in range(self.procs_n)]

    def failure_text(self, what: str) -> str:
        tails = []
        for process, err in enumerate(self.stderr):
            text = err.read_text(errors="replace") if err.exists() else ""
            if text.strip():
                tails.append(f"--- worker {process} stderr:\n{text[-3000:]}")
        return what + "\n" + "\n".join(tails)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def check_outcome(postgres, url: str, reports: list[dict]) -> dict:
    """The assertions every load run makes; returns a summary for the caller."""
    errors = [f"worker {r['process']}: {e}" for r in reports for e in r["errors"]]
    assert not errors, f"{len(errors)} operations failed:\n" + "\n".join(errors[:20])
    problems = [f"worker {r['process']}: {p}" for r in reports for p in r["final_problems"]]
    assert not problems, f"{len(problems)} problems after the catch-up:\n" + "\n".join(problems[:20])

    model: dict = {}
    writes = 0
    ever = set()
    for report in reports:
        for log in report["logs"]:
            for entry in log:
                apply(model, entry, DERIVED_DIM)
                writes += entry[0] in WRITES
                if entry[0] == "put":
                    ever.update(entry[1])
    store = store_name_of(url)
    with postgres.connect() as conn:
        contents = read_records(conn, postgres.schema, store)
        epoch, seq, dim = store_row(conn, postgres.schema, store)
    assert sorted(contents) == sorted(model), (
        f"ids in the database but not acknowledged: {sorted(set(contents) - set(model))[:10]}; "
        f"acknowledged but not in the database: {sorted(set(model) - set(contents))[:10]}"
    )
    mismatches = [p for rid, rec in model.items() for p in record_mismatches(contents[rid], rec)]
    assert not mismatches, "\n".join(mismatches[:20])
    assert (epoch, dim) == (0, DERIVED_DIM)
    assert seq == writes, f"the store's change sequence is at {seq} after {writes} acknowledged writes: " + (
        "a write was applied twice" if seq > writes else "an acknowledged write is missing"
    )

    import ferromem

    with ferromem.open(url) as fresh:
        assert fresh.count() == len(model)
        everything = sorted(ever)
        for rid, got in zip(everything, fresh.get_many(everything)):
            if rid in model:
                assert not record_mismatches(got, model[rid]), record_mismatches(got, model[rid])
            else:
                assert got is None, f"{rid!r} was deleted but a fresh open has it"
    return {"records": len(model), "writes": writes, "searches": sum(r["searches"] for r in reports)}


def run_load(postgres, tmp_path: Path, during=None) -> tuple[dict, float]:
    url = postgres.url(pool_size=4, max_staleness=MAX_STALENESS)
    import ferromem

    # The store exists, with its dimension, before the workers race to it.
    with ferromem.open(url, dim=DERIVED_DIM):
        pass
    load = Load(postgres, tmp_path, url)
    started = time.monotonic()
    try:
        load.start()
        if during is not None:
            during(load)
        reports = load.finish()
    finally:
        load.kill()
    elapsed = time.monotonic() - started
    summary = check_outcome(postgres, url, reports)
    return summary, elapsed


def test_processes_and_threads_on_one_store(postgres, tmp_path, record_property):
    summary, elapsed = run_load(postgres, tmp_path)
    record_property("pg_load_seconds", round(elapsed, 1))
    procs, threads, ops = load_size()
    print(f"\n{procs} processes x {threads} threads, {ops} ops each: {summary} in {elapsed:.1f} s")


# ------------------------------------------------------------------------------ restart


def _cluster_of(dsn: str) -> tuple[str, str] | str:
    """(version, cluster name) of the local cluster serving the DSN's port, or why not."""
    if shutil.which("pg_lsclusters") is None or shutil.which("pg_ctlcluster") is None:
        return "pg_lsclusters / pg_ctlcluster are not available (not a Debian-style PostgreSQL install)"
    parts = urllib.parse.urlsplit(dsn)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1", None, ""):
        return f"the server at {parts.hostname} is not local: it cannot be restarted from here"
    port = str(parts.port or 5432)
    listed = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=30)
    for line in listed.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == port and fields[3].startswith("online"):
            return fields[0], fields[1]
    return f"no online cluster on port {port} in pg_lsclusters:\n{listed.stdout}"


def _ctl(version: str, cluster: str, action: str) -> subprocess.CompletedProcess:
    # --skip-systemctl-redirect: act on the cluster itself, also where systemd is absent.
    return subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, action],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _wait_until_up(dsn: str, seconds: float = 60) -> bool:
    import psycopg

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            time.sleep(0.2)
    return False


@pytest.fixture
def restartable_cluster(postgres):
    """(version, cluster) of the test server, which the test may restart; started again
    at teardown if it is down."""
    if os.environ.get("FERROMEM_TEST_POSTGRES_RESTART", "1") == "0":
        pytest.skip("FERROMEM_TEST_POSTGRES_RESTART=0: the test server may not be restarted")
    found = _cluster_of(postgres.dsn)
    if isinstance(found, str):
        pytest.skip(f"cannot restart the PostgreSQL server: {found}")
    yield found
    if not _wait_until_up(postgres.dsn, 5):
        _ctl(*found, "start")
        assert _wait_until_up(postgres.dsn), "the PostgreSQL server did not come back after the test"


def test_server_restart_in_the_middle_of_the_load(postgres, restartable_cluster, tmp_path, record_property):
    restarted: list[subprocess.CompletedProcess] = []

    def restart(load: Load) -> None:
        load.wait_for_progress(0.35)
        restarted.append(_ctl(*restartable_cluster, "restart"))

    summary, elapsed = run_load(postgres, tmp_path, during=restart)
    done = restarted[0] if restarted else None
    if done is None or done.returncode != 0:
        why = (
            "never ran"
            if done is None
            else f"exit {done.returncode}: {done.stderr.strip() or done.stdout.strip()}"
        )
        pytest.skip(
            f"pg_ctlcluster {' '.join(restartable_cluster)} restart failed ({why}); the load ran without it"
        )
    record_property("pg_load_restart_seconds", round(elapsed, 1))
    print(f"\nrestart mid-load: {summary} in {elapsed:.1f} s")
