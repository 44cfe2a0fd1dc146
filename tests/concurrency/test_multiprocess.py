"""Several processes on one path.

* Process A (this test) writes; process B (a separate Python process that keeps the
  same store open and never reopens it) sees every write on its next call: count,
  get (every field, vector bit-exact), list and exact search, through adds, upserts,
  updates, deletes, reset and a new dimension after reset. B's writes reach A too.
* Four processes write distinct ids to one path at the same time: no error reaches any
  of them and nothing is lost.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time

import numpy as np
import pytest
from _helpers import (
    DERIVED_DIM,
    Oracle,
    child_command,
    child_env,
    derived_record,
    derived_vector,
    engine_params,
    list_order,
    open_store,
    rec_from_json,
    record_matches,
    record_mismatches,
    store_records,
)

REPLY_WAIT_S = 180.0  # a shared slow machine; no timing is asserted


class StoreServer:
    """Process B: a child holding the store open, answering JSON commands."""

    def __init__(self, path, engine):
        self.proc = subprocess.Popen(
            child_command("store_server", path, engine),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            text=True,
            encoding="utf-8",
        )
        self.replies: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.replies.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line)

    def call(self, op: str, **args):
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        try:
            line = self.replies.get(timeout=REPLY_WAIT_S)
        except queue.Empty:
            pytest.fail(f"process B did not answer {op!r}; stderr:\n{''.join(self.stderr)}")
        reply = json.loads(line)
        assert "error" not in reply, f"process B failed on {op!r}: {reply['error']}"
        return reply

    def close(self):
        if self.proc.poll() is None:
            try:
                self.call("close")
            finally:
                self.proc.stdin.close()
                try:
                    self.proc.wait(timeout=REPLY_WAIT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()


def assert_b_sees(server: StoreServer, model: dict, dim: int | None, context: str) -> None:
    """B's answers equal the model A wrote: count, list order, every record, search."""
    assert server.call("count")["count"] == len(model), context
    assert server.call("list")["ids"] == list_order(model.values()), context
    probe_ids = sorted(model) + ["never-saved"]
    for record_id, data in zip(probe_ids, server.call("get", ids=probe_ids)["records"]):
        if record_id in model:
            assert data is not None, f"B does not see {record_id!r} [{context}]"
            problems = record_mismatches(rec_from_json(data), model[record_id])
            assert not problems, f"[{context}] {problems}"
        else:
            assert data is None, f"B still sees {record_id!r} [{context}]"
    if model and dim is not None:
        oracle = Oracle(list(model.values()))
        rng = np.random.default_rng(len(model))
        for filters in ({}, {"scope": "/derived/1"}, {"include_private": False}):
            query = rng.standard_normal(dim).astype(np.float32)
            reply = server.call("search", query=query.tolist(), k=7, filter=filters)
            result = _Result(reply["ids"], np.asarray(reply["scores"], np.float32))
            oracle.check(result, query, 7, context=f"B search {filters} [{context}]", **filters)


class _Result:
    def __init__(self, ids, scores):
        self.ids, self.scores = ids, scores


@pytest.mark.parametrize("engine", engine_params())
def test_second_process_sees_writes_without_reopening(engine, tmp_path):
    path = tmp_path / "shared.ferro"
    store = open_store(engine, path)
    model = {}
    first = [derived_record(f"a{i}") for i in range(10)]
    store_records(store, first)
    model.update({r.id: r for r in first})

    server = StoreServer(path, engine)
    try:
        assert_b_sees(server, model, DERIVED_DIM, "initial")

        more = [derived_record(f"b{i}") for i in range(25)]
        store_records(store, more[:5])
        store_records(store, more[5:])
        model.update({r.id: r for r in more})
        assert_b_sees(server, model, DERIVED_DIM, "after adds")

        replaced = [derived_record(f"a{i}", version=1) for i in range(3)]
        store_records(store, replaced, mode="upsert")
        model.update({r.id: r for r in replaced})
        updated_vector = derived_vector("b0", version=7)
        store.update("b0", content="changed by A", vector=updated_vector, source=None)
        model["b0"] = model["b0"].copy(content="changed by A", vector=updated_vector, source=None)
        store.touch(["b1", "a5"], at=1_800_000_000.0)
        for rid in ("b1", "a5"):
            model[rid] = model[rid].copy(last_accessed=1_800_000_000.0)
        assert_b_sees(server, model, DERIVED_DIM, "after upsert/update/touch")

        assert store.delete(["a0", "b2", "b3"]) == 3
        for rid in ("a0", "b2", "b3"):
            del model[rid]
        doomed = [r.id for r in model.values() if record_matches(r, scope="/derived/2")]
        assert store.delete(scope="/derived/2") == len(doomed)
        for rid in doomed:
            del model[rid]
        assert_b_sees(server, model, DERIVED_DIM, "after deletes")

        store.reset()
        model.clear()
        assert_b_sees(server, model, None, "after reset")
        assert server.call("dim")["dim"] is None

        # The dimension is free again after reset; B follows the new one.
        new_dim = DERIVED_DIM + 9
        fresh = [derived_record(f"c{i}", dim=new_dim) for i in range(6)]
        store_records(store, fresh)
        model.update({r.id: r for r in fresh})
        assert_b_sees(server, model, new_dim, "after reset and a new dimension")
        assert server.call("dim")["dim"] == new_dim

        # And the other way: B writes, A sees it on its next call.
        server.call("add", ids=["from-b-0", "from-b-1"], dim=new_dim)
        assert store.count() == len(model) + 2
        for rid, got in zip(["from-b-0", "from-b-1"], store.get_many(["from-b-0", "from-b-1"])):
            assert not record_mismatches(got, derived_record(rid, dim=new_dim))
        assert list(store.search(derived_vector("from-b-1", new_dim), 1).ids) == ["from-b-1"]
    finally:
        server.close()
        store.close()
    assert server.proc.returncode == 0, "".join(server.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("engine", engine_params())
def test_four_processes_write_one_path_at_once(engine, tmp_path):
    path = tmp_path / "many.ferro"
    start_file = tmp_path / "go"
    per_process = 150
    # Create the store first so that the four writers race on writes, not only on creation;
    # a second test below has them race on creation too.
    open_store(engine, path).close()
    _run_writers(engine, path, start_file, per_process, processes=4)


@pytest.mark.slow
@pytest.mark.parametrize("engine", engine_params())
def test_four_processes_create_and_write_one_path_at_once(engine, tmp_path):
    _run_writers(engine, tmp_path / "fresh.ferro", tmp_path / "go", 60, processes=4)


def _run_writers(engine, path, start_file, per_process, processes):
    writers = [
        subprocess.Popen(
            child_command("concurrent_writer", path, engine, f"p{i}", per_process, 1000 + i, start_file),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            text=True,
            encoding="utf-8",
        )
        for i in range(processes)
    ]
    time.sleep(0.2)  # not a correctness wait: the writers also wait for the start file
    start_file.write_text("go")
    outputs = []
    for writer in writers:
        try:
            out, err = writer.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            writer.kill()
            out, err = writer.communicate()
            pytest.fail(f"writer hung; stderr:\n{err}")
        outputs.append((writer.returncode, out, err))
    failures = [f"status {rc}\nstdout: {out}\nstderr: {err}" for rc, out, err in outputs if rc != 0]
    assert not failures, "\n---\n".join(failures)
    for _, out, _ in outputs:
        assert json.loads(out.strip().splitlines()[-1]) == {"written": per_process}

    expected = [f"p{i}-{j}" for i in range(processes) for j in range(per_process)]
    with open_store(engine, path) as store:
        assert store.count() == len(expected)
        for rid, got in zip(expected, store.get_many(expected)):
            problems = record_mismatches(got, derived_record(rid))
            assert not problems, problems
        assert sorted(r.id for r in store.list()) == sorted(expected)
        oracle = Oracle([derived_record(rid) for rid in expected])
        rng = np.random.default_rng(5)
        for qi in range(10):
            query = rng.standard_normal(DERIVED_DIM).astype(np.float32)
            oracle.check(store.search(query, 10), query, 10, context=f"after 4 writers q{qi}")
