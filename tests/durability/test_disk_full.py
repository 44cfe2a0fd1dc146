"""A real full filesystem (a small tmpfs mounted for the test): saves fail with a typed
error and write nothing, and deletes still work, so the API can free space.

Needs permission to mount (root in a container that allows it); skipped with the reason
otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys

import ferromem
import numpy as np
import pytest
from conftest import NATIVE_AVAILABLE, NATIVE_SKIP_REASON

pytestmark = [
    pytest.mark.skipif(not NATIVE_AVAILABLE, reason=NATIVE_SKIP_REASON),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mounts a Linux tmpfs"),
]

DIM = 384


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 2 MiB tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(store: ferromem.Store, rng: np.random.Generator) -> tuple[int, str]:
    """Saves single records until the disk is full; (how many were saved, the id that
    failed)."""
    for i in range(100_000):
        try:
            store.add(
                f"r{i}", rng.standard_normal(DIM).astype(np.float32), contents=f"memory {i}", scopes="/agent"
            )
        except ferromem.StorageError as exc:
            assert "full" in str(exc), exc
            return i, f"r{i}"
    pytest.fail("the 2 MiB filesystem never filled")


def test_delete_frees_space_on_a_full_disk(tiny_filesystem):
    path = str(tiny_filesystem / "s.ferro")
    rng = np.random.default_rng(0)
    store = ferromem.open(path)
    saved, failed = _fill(store, rng)
    assert saved >= 1
    # The failed save wrote nothing; every acknowledged one is there.
    assert store.get(failed) is None
    assert store.count() == saved
    # Deleting works on the full disk (before, it failed like a save).
    assert store.delete(["r0"]) == 1
    assert store.get("r0") is None
    assert store.count() == saved - 1
    store.close()
    with ferromem.open(path) as reopened:
        assert reopened.count() == saved - 1
        assert reopened.get("r0") is None
        assert reopened.get(f"r{saved - 1}") is not None
        ids = {r.id for r in reopened.list()}
        assert ids == {f"r{i}" for i in range(1, saved)}


def test_reserve_is_made_when_there_is_room(tmp_path):
    path = tmp_path / "s.ferro"
    with ferromem.open(str(path)) as store:
        store.add("a", np.ones(DIM, dtype=np.float32))
    reserve = tmp_path / "s.ferro.reserve"
    assert reserve.stat().st_size == 512 * 1024
    # Deleting it by hand is harmless: the next open makes it again.
    reserve.unlink()
    with ferromem.open(str(path)) as store:
        assert store.count() == 1
    assert reserve.exists()
