"""DeviceSearch against a brute-force model: all slots, candidate sets, freed slots, growth
over many writes, resets, padding, query batches and tile boundaries, both precisions.
Each test runs on the NumPy backend and, marked ``gpu``, on the CuPy backend."""

from __future__ import annotations

import numpy as np
import pytest
from ferromem.gpu import PAD_SLOT, DeviceSearch
from gpu_model import MirrorModel, check_answer, unit_rows

PRECISIONS = ["f16", "f32"]
NO_SLOTS = np.zeros(0, dtype=np.uint32)


def slots(values) -> np.ndarray:
    return np.asarray(values, dtype=np.uint32)


def apply(search: DeviceSearch, model: MirrorModel, dim, slot_count, written, rows, freed, reset=False):
    written, freed = slots(written), slots(freed)
    rows = np.asarray(rows, dtype=np.float32).reshape(len(written), dim)
    search.apply(dim, slot_count, written, rows, freed, reset)
    model.apply(dim, slot_count, written, rows, freed, reset)


def check(search: DeviceSearch, model: MirrorModel, queries, width, candidates=None):
    got = search.top_candidates(queries, width, candidates)
    check_answer(model, queries, width, candidates, *got, search.precision)
    return got


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20251124)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("nq", [1, 16, 300])
def test_all_slots_match_brute_force(make_backend, rng, precision, nq):
    # A small workspace and query batch force several tiles (1000 rows is not a multiple
    # of the tile) and several query batches for nq = 300.
    search = DeviceSearch(make_backend(), precision=precision, workspace_bytes=200_000, query_batch=64)
    model = MirrorModel()
    rows = unit_rows(rng, 1000, 48)
    apply(search, model, 48, 1000, np.arange(1000), rows, [])
    queries = unit_rows(rng, nq, 48)
    for width in (1, 10, 37):
        check(search, model, queries, width)
    assert search.rows() == 1000 and search.valid_rows() == 1000


@pytest.mark.parametrize("precision", PRECISIONS)
def test_tile_boundaries(make_backend, rng, precision):
    # Rows per tile are multiples of 128; N = 3 tiles + 5 rows leaves a short last tile, and
    # queries aimed at rows on both sides of each boundary must find them.
    dim, batch = 32, 4
    backend = make_backend()
    per_row = batch * 16 + 16 + (dim * 4 if backend.upcasts_f16 and precision == "f16" else 0)
    search = DeviceSearch(backend, precision=precision, workspace_bytes=256 * per_row, query_batch=batch)
    assert search._tile_rows(batch, dim, 10_000, gathered=False) == 256
    model = MirrorModel()
    n = 3 * 256 + 5
    rows = unit_rows(rng, n, dim)
    apply(search, model, dim, n, np.arange(n), rows, [])
    targets = [0, 255, 256, 511, 512, 767, 768, n - 1]
    queries = rows[targets]
    got_slots, _ = check(search, model, queries, 3)
    assert got_slots[:, 0].tolist() == targets  # each row is its own best match


@pytest.mark.parametrize("precision", PRECISIONS)
def test_candidates(make_backend, rng, precision):
    search = DeviceSearch(make_backend(), precision=precision, workspace_bytes=150_000, query_batch=8)
    model = MirrorModel()
    rows = unit_rows(rng, 800, 40)
    apply(search, model, 40, 800, np.arange(800), rows, [])
    apply(search, model, 40, 800, [], [], [3, 10, 11, 500])
    queries = unit_rows(rng, 20, 40)
    chosen = np.sort(rng.choice(800, size=90, replace=False)).astype(np.uint32)
    chosen = np.union1d(chosen, [3, 10, 11, 500]).astype(np.uint32)  # freed ones are skipped
    got_slots, _ = check(search, model, queries, 10, chosen)
    assert np.isin(got_slots, chosen).all()
    assert not np.isin(got_slots, [3, 10, 11, 500]).any()
    # A selective filter: fewer candidates than width, then padding.
    few = slots([5, 6, 10, 700])
    got_slots, got_scores = check(search, model, queries, 6, few)
    assert (got_slots[:, 3:] == PAD_SLOT).all() and np.isneginf(got_scores[:, 3:]).all()
    # No candidate at all, and only freed candidates: all padding.
    for nothing in (NO_SLOTS, slots([3, 500])):
        got_slots, got_scores = search.top_candidates(queries, 4, nothing)
        assert (got_slots == PAD_SLOT).all() and np.isneginf(got_scores).all()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_freed_slots_are_never_returned_and_zeroed(make_backend, rng, precision):
    search = DeviceSearch(make_backend(), precision=precision, workspace_bytes=100_000, query_batch=16)
    model = MirrorModel()
    rows = unit_rows(rng, 600, 24)
    apply(search, model, 24, 600, np.arange(600), rows, [])
    freed = rng.choice(600, size=200, replace=False)
    apply(search, model, 24, 600, [], [], freed)
    queries = np.concatenate([rows[freed[:10]], unit_rows(rng, 10, 24)])
    got_slots, _ = check(search, model, queries, 50)
    assert not np.isin(got_slots, freed).any()
    stored = search.backend.to_host(search._mirror)  # white box: the freed rows are zero
    assert not stored[freed].any()
    # A freed slot written again comes back.
    apply(search, model, 24, 600, [freed[0]], rows[freed[0]][None, :], [])
    got_slots, _ = check(search, model, rows[freed[0]][None, :], 5)
    assert got_slots[0, 0] == freed[0]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_growth_over_many_applies(make_backend, rng, precision):
    search = DeviceSearch(make_backend(), precision=precision, workspace_bytes=300_000, query_batch=32)
    model = MirrorModel()
    capacities = []
    count = 0
    for step in range(60):
        written = list(range(count, count + 97))
        count += 97
        # Overwrite a few old slots and free a few, as a store's change log does.
        if count > 300:
            written += rng.choice(count - 200, size=5, replace=False).tolist()
        freed = []
        if step % 3 == 2:
            freed = [s for s in rng.choice(count - 97, size=3, replace=False) if s not in written]
        apply(search, model, 16, count, written, unit_rows(rng, len(written), 16), freed)
        capacities.append(search.capacity())
        assert search.capacity() >= search.rows() == count
    # Geometric growth: a handful of reallocations for 60 writes, never one per write.
    assert len(set(capacities)) <= 10
    assert search.valid_rows() == len(model.rows)
    for nq in (1, 16, 300):
        check(search, model, unit_rows(rng, nq, 16), 25)
    assert search.memory_bytes() == search.capacity() * 16 * (2 if precision == "f16" else 4)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_reset_with_a_new_dimension(make_backend, rng, precision):
    search = DeviceSearch(make_backend(), precision=precision)
    model = MirrorModel()
    apply(search, model, 32, 300, np.arange(300), unit_rows(rng, 300, 32), [])
    rows = unit_rows(rng, 50, 20)
    apply(search, model, 20, 50, np.arange(50), rows, [], reset=True)
    assert search.dim == 20 and search.rows() == 50 and search.valid_rows() == 50
    check(search, model, unit_rows(rng, 7, 20), 12)
    # A reset to nothing, then rows again.
    apply(search, model, 20, 0, [], [], [], reset=True)
    got_slots, _ = search.top_candidates(unit_rows(rng, 2, 20), 3)
    assert (got_slots == PAD_SLOT).all()
    apply(search, model, 20, 10, np.arange(10), rows[:10], [])
    check(search, model, rows[:3], 4)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_width_beyond_the_rows_pads(make_backend, rng, precision):
    search = DeviceSearch(make_backend(), precision=precision)
    model = MirrorModel()
    apply(search, model, 8, 12, [0, 2, 4, 6, 8, 10], unit_rows(rng, 6, 8), [])
    got_slots, got_scores = check(search, model, unit_rows(rng, 5, 8), 40)
    assert (got_slots[:, 6:] == PAD_SLOT).all() and np.isneginf(got_scores[:, 6:]).all()
    assert np.isin(got_slots[:, :6], [0, 2, 4, 6, 8, 10]).all()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_shrinking_slot_count_drops_the_slots_above(make_backend, rng, precision):
    search = DeviceSearch(make_backend(), precision=precision)
    model = MirrorModel()
    rows = unit_rows(rng, 100, 8)
    apply(search, model, 8, 100, np.arange(100), rows, [])
    apply(search, model, 8, 60, [], [], [])
    assert search.rows() == 60 and search.valid_rows() == 60
    got_slots, _ = check(search, model, rows[60:70], 5)
    assert (got_slots < 60).all()


def test_an_empty_mirror_answers_padding(make_backend, rng):
    search = DeviceSearch(make_backend())
    got_slots, got_scores = search.top_candidates(unit_rows(rng, 3, 5), 4)
    assert got_slots.shape == (3, 4) and (got_slots == PAD_SLOT).all() and np.isneginf(got_scores).all()
    got_slots, _ = search.top_candidates(np.zeros((0, 5), dtype=np.float32), 4)
    assert got_slots.shape == (0, 4)


def test_equal_scores_are_ordered_by_slot_and_answers_repeat(make_backend, rng):
    search = DeviceSearch(make_backend(), workspace_bytes=60_000, query_batch=4)
    model = MirrorModel()
    row = unit_rows(rng, 1, 16)
    rows = np.repeat(row, 400, axis=0)  # every slot scores the same
    apply(search, model, 16, 400, np.arange(400), rows, [])
    first = check(search, model, row, 30)
    second = search.top_candidates(row, 30)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert (np.diff(first[0][0].astype(np.int64)) > 0).all()


def test_properties_and_close(make_backend):
    search = DeviceSearch(make_backend(), precision="f32")
    assert search.precision == "f32"
    assert isinstance(search.name, str) and search.name
    assert search.rows() == 0 and search.memory_bytes() == 0
    search.close()
    search.close()  # idempotent
    from ferromem.exceptions import StoreClosedError

    with pytest.raises(StoreClosedError):
        search.top_candidates(np.ones((1, 4), dtype=np.float32) / 2, 1)


@pytest.mark.parametrize("dense_fraction", [0, 1_000_000])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_both_selection_paths(make_backend, rng, monkeypatch, precision, dense_fraction):
    # DENSE_FRACTION = 0: every tile after the first is compacted to the entries below the
    # threshold; a huge one: every tile is partitioned whole. Both must give the answer.
    from ferromem.gpu import _mirror

    monkeypatch.setattr(_mirror, "DENSE_FRACTION", dense_fraction)
    monkeypatch.setattr(_mirror, "SEED_TILE_ROWS", 256)
    search = DeviceSearch(make_backend(), precision=precision, workspace_bytes=50_000, query_batch=16)
    model = MirrorModel()
    n = 3000
    apply(search, model, 24, n, np.arange(n), unit_rows(rng, n, 24), [])
    apply(search, model, 24, n, [], [], rng.choice(n, 100, replace=False))
    queries = unit_rows(rng, 40, 24)
    for width in (1, 5, 64, 700):
        check(search, model, queries, width)
    check(search, model, queries, 9, np.sort(rng.choice(n, 900, replace=False)).astype(np.uint32))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_rows_that_improve_tile_after_tile(make_backend, rng, precision):
    # Scores rise with the slot, so every tile beats the threshold of the last: the search
    # must not lose rows however many pass.
    dim, n = 16, 4000
    query = unit_rows(rng, 1, dim)
    noise = unit_rows(rng, n, dim)
    weights = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
    rows = query * weights + noise * (1 - weights) * 0.3
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    search = DeviceSearch(make_backend(), precision=precision, workspace_bytes=30_000, query_batch=4)
    model = MirrorModel()
    apply(search, model, dim, n, np.arange(n), rows, [])
    got_slots, _ = check(search, model, np.concatenate([query, -query, unit_rows(rng, 2, dim)]), 50)
    assert (got_slots[0] >= n - 200).all()
