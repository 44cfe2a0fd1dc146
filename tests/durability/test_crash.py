"""Acknowledged saves survive kill -9.

A real child process opens the store and saves batches in a loop, printing each batch's
ids (flushed) only after ``add`` returned. The parent kills it with SIGKILL at a random
moment: during start-up or open, right after open, or after a random number of
acknowledged batches (a few batches are large, so some kills land inside a commit).
After every kill the parent reopens the store and checks that

* it opens without error,
* every acknowledged record is present and intact (every field and the vector, which
  both sides derive from the id),
* every batch is all-or-nothing (each id names its batch and the batch size),
* nothing else is there.

The number of kill cycles is FERROMEM_CRASH_CYCLES (default 25) per engine and
durability.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import threading
import time
from collections import defaultdict

import pytest
from _helpers import (
    child_command,
    child_env,
    derived_record,
    derived_vector,
    engine_params,
    env_int,
    open_store,
    parse_crash_id,
    record_mismatches,
    require_engine,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL"),
]

# Generous: a shared 2-core machine can take many seconds to start a Python child.
CHILD_WAIT_S = 180.0


class Child:
    """A writer process whose stdout lines are collected by a reader thread."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            text=True,
            encoding="utf-8",
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr_chunks: list[str] = []
        self._out = threading.Thread(target=self._read_stdout, daemon=True)
        self._err = threading.Thread(target=self._read_stderr, daemon=True)
        self._out.start()
        self._err.start()
        self.ready = False
        self.acks: list[list[str]] = []

    def _read_stdout(self):
        for line in self.proc.stdout:
            # A line cut by the kill has no newline: that batch was not acknowledged.
            if line.endswith("\n"):
                self.lines.put(line)

    def _read_stderr(self):
        for chunk in self.proc.stderr:
            self.stderr_chunks.append(chunk)

    def _take(self, line: str) -> None:
        import json

        if line == "ready\n":
            self.ready = True
        elif line.startswith("ack "):
            self.acks.append(json.loads(line[4:]))
        else:
            raise AssertionError(f"unexpected line from the writer: {line!r}")

    def wait_for(self, condition, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                pytest.fail(f"writer made no progress in {timeout:.0f} s; stderr:\n{self.stderr()}")
            try:
                self._take(self.lines.get(timeout=min(remaining, 0.5)))
            except queue.Empty:
                if self.proc.poll() is not None:
                    self._drain()
                    if condition():
                        return
                    pytest.fail(
                        f"writer exited on its own with status {self.proc.returncode}; "
                        f"stderr:\n{self.stderr()}"
                    )

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=CHILD_WAIT_S)
        self._out.join(timeout=CHILD_WAIT_S)
        self._err.join(timeout=CHILD_WAIT_S)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                self._take(self.lines.get_nowait())
            except queue.Empty:
                return

    def stderr(self) -> str:
        return "".join(self.stderr_chunks)


def kill_at_random_moment(child: Child, rng: random.Random) -> str:
    """Waits for a randomly chosen moment, kills the child, returns what was chosen."""
    roll = rng.random()
    if roll < 0.15:
        delay = rng.uniform(0.0, 0.6)  # maybe during import, maybe inside open()
        time.sleep(delay)
        moment = f"{delay:.3f}s after start"
    elif roll < 0.3:
        child.wait_for(lambda: child.ready, CHILD_WAIT_S)
        delay = rng.uniform(0.0, 0.02)
        time.sleep(delay)
        moment = f"{delay:.3f}s after open"
    else:
        target = rng.choice([1, 2, 3, 5, 8, 13, 21, 40])
        child.wait_for(lambda: len(child.acks) >= target, CHILD_WAIT_S)
        delay = rng.choice([0.0, 0.0, rng.uniform(0.0, 0.005), rng.uniform(0.0, 0.05)])
        if delay:
            time.sleep(delay)
        moment = f"{delay:.4f}s after ack {target}"
    child.kill()
    assert child.proc.returncode == -signal.SIGKILL, (
        f"writer ended with {child.proc.returncode}, not by SIGKILL; stderr:\n{child.stderr()}"
    )
    return moment


def run_and_kill_writer(
    rng: random.Random, acknowledged: set[str], path, engine: str, durability: str, cycle: int, *mode: str
) -> str:
    """One cycle: start a crash_writer child (``mode``: its optional extra argument), kill
    it at a random moment, add the ids it acknowledged to ``acknowledged``; returns the
    moment of the kill."""
    child = Child(child_command("crash_writer", path, engine, durability, cycle, rng.getrandbits(32), *mode))
    try:
        moment = kill_at_random_moment(child, rng)
    finally:
        if child.proc.poll() is None:
            child.kill()
    for ids in child.acks:
        acknowledged.update(ids)
    return moment


def check_store_after_crash(store, acknowledged: set[str], context: str) -> int:
    """Every acknowledged record is intact, batches are all-or-nothing, nothing else."""
    present = store.list()
    present_ids = [r.id for r in present]
    assert len(present_ids) == len(set(present_ids)), f"duplicate ids listed [{context}]"
    assert store.count() == len(present_ids), f"count disagrees with list [{context}]"

    missing = acknowledged - set(present_ids)
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]} [{context}]"
    for rid, record in zip(sorted(acknowledged), store.get_many(sorted(acknowledged))):
        problems = record_mismatches(record, derived_record(rid))
        assert not problems, f"acknowledged record damaged [{context}]: {problems}"

    batches: dict[tuple[int, int], list[int]] = defaultdict(list)
    sizes: dict[tuple[int, int], int] = {}
    for record in present:
        cycle, batch, member, size = parse_crash_id(record.id)
        batches[(cycle, batch)].append(member)
        sizes[(cycle, batch)] = size
        problems = record_mismatches(record, derived_record(record.id))
        assert not problems, f"unacknowledged but present record is damaged [{context}]: {problems}"
    for key, members in batches.items():
        assert sorted(members) == list(range(sizes[key])), (
            f"batch {key} is partial: members {sorted(members)} of {sizes[key]} [{context}]"
        )

    # Searching works on what was recovered and finds an acknowledged record by its vector.
    if acknowledged:
        probe = sorted(acknowledged)[len(acknowledged) // 2]
        result = store.search(derived_vector(probe), 1)
        assert list(result.ids) == [probe], f"search after recovery [{context}]"
    return len(present_ids)


@pytest.mark.parametrize("durability", ["normal", "full"])
@pytest.mark.parametrize("engine", engine_params())
def test_acknowledged_saves_survive_sigkill(engine, durability, tmp_path):
    cycles = env_int("FERROMEM_CRASH_CYCLES", 25)
    path = tmp_path / "crash.ferro"
    rng = random.Random(f"crash-{engine}-{durability}")
    acknowledged: set[str] = set()
    for cycle in range(cycles):
        moment = run_and_kill_writer(rng, acknowledged, path, engine, durability, cycle)
        context = f"{engine}/{durability} cycle {cycle}, killed {moment}"
        # The store must open without error after every kill, with the same settings.
        with open_store(engine, path, durability=durability) as store:
            check_store_after_crash(store, acknowledged, context)
    assert acknowledged, "no save was ever acknowledged: the test checked nothing"


def test_fast_open_survives_sigkill(tmp_path):
    """The same kills with ``fast_open``: the writer writes store images (at each of its
    closes) and opens from them; the parent opens from the image its last close left, and
    from whatever the killed writer left, and must see every acknowledged record."""
    require_engine("native")
    cycles = env_int("FERROMEM_CRASH_CYCLES", 25)
    path = tmp_path / "crash.ferro"
    rng = random.Random("crash-fast-open")
    acknowledged: set[str] = set()
    from_image = 0
    for cycle in range(cycles):
        moment = run_and_kill_writer(rng, acknowledged, path, "native", "normal", cycle, "fast_open")
        context = f"fast_open cycle {cycle}, killed {moment}"
        with open_store("native", path, fast_open=True) as store:
            from_image += store.stats()["fast_open"]["opened_from_image"]
            check_store_after_crash(store, acknowledged, context)
        # What the image gave must be what the file holds.
        with open_store("native", path) as plain:
            check_store_after_crash(plain, acknowledged, context + " (read from the file)")
    assert acknowledged, "no save was ever acknowledged: the test checked nothing"
    assert from_image >= cycles // 2, f"only {from_image} of {cycles} reopens used the image"


@pytest.mark.parametrize("engine", engine_params())
def test_crash_check_detects_a_lost_record(engine, tmp_path):
    """The recovery check can fail: a record deleted behind its back is reported lost,
    a partial batch is reported partial."""
    from _helpers import crash_batch_ids, store_records

    path = tmp_path / "check.ferro"
    ids = crash_batch_ids(0, 0, 3)
    with open_store(engine, path) as store:
        store_records(store, [derived_record(i) for i in ids])
        check_store_after_crash(store, set(ids), "intact")
        store.delete([ids[1]])
        with pytest.raises(AssertionError, match="lost"):
            check_store_after_crash(store, set(ids), "lost")
        with pytest.raises(AssertionError, match="partial"):
            check_store_after_crash(store, {ids[0]}, "partial")
