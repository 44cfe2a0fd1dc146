"""DeviceSearch: a store's rows mirrored on a device, and the tiled candidate search.

The engine (Rust) keeps the rows and the truth. A GPU search is two steps: this module
finds, per query, the ``width`` best *candidate* slots by the mirror's score (the dot
product of the query and the stored unit row, f16 or f32); the engine then re-scores those
candidates exactly on the host and proves its top k exact with :meth:`DeviceSearch.error_bound`
(docs/gpu.md). So this module only has to be fast, in step with the engine, and honest
about its error bound.

All the math is written once against ``backend.xp`` (NumPy or CuPy; see ``_backends``).
The search never makes a queries x rows score matrix: rows are scored tile by tile, each
tile's best ``width`` per query are merged into a running best ``width``, and the tile
size comes from a memory budget. The search works on *costs* (negated scores, lower is
better): the queries are negated once, which is exact in floating point, so that the
selection takes the smallest values, the cheap side of ``argpartition`` on both libraries.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
from ferromem.exceptions import (
    DimensionMismatchError,
    InvalidInputError,
    InvalidVectorError,
    StoreClosedError,
)

from ._backends import ArrayBackend
from ._bounds import NORM_TOLERANCE, PRECISIONS, mirror_error_bound
from ._errors import DeviceMemoryError

__all__ = ["DeviceSearch", "PAD_SLOT"]

#: The slot of a padding candidate (fewer than ``width`` rows to choose from); its score
#: is -inf. Never a real slot: ``slot_count`` is at most this value.
PAD_SLOT = 0xFFFFFFFF

_DTYPES: dict[str, np.dtype[Any]] = {"f16": np.dtype(np.float16), "f32": np.dtype(np.float32)}
#: The smallest slot capacity a mirror allocates, so that a store growing one record at a
#: time does not reallocate on every write.
MIN_CAPACITY = 1024
#: Capacity grows by this factor when it must grow (amortised O(1) copies per write).
GROWTH = 1.5
#: Rows per uploaded chunk of a write, so that a large apply never holds all its rows on
#: the device in f32 at once.
WRITE_CHUNK_BYTES = 64 * 1024 * 1024
#: The default scratch memory of one search call (score tiles and their selections).
DEFAULT_WORKSPACE_BYTES = 256 * 1024 * 1024
#: The default number of queries scored together.
DEFAULT_QUERY_BATCH = 1024
#: Tiles are cut at multiples of this many rows (matrix-product friendly), except the last.
TILE_ALIGN = 128
#: The fewest rows a tile may have before the search refuses for lack of memory.
MIN_TILE_ROWS = 256
#: Rows of the first tile of a scan (at least 8 x width): small, so that a threshold that
#: prunes the later, full tiles exists early.
SEED_TILE_ROWS = 16384
#: A tile is partitioned whole, not compacted, once more than 1/DENSE_FRACTION of it
#: passes the threshold.
DENSE_FRACTION = 4
_DEFAULT_RESERVE_FLOOR = 512 * 1024 * 1024
_DEFAULT_RESERVE_FRACTION = 0.10


class DeviceSearch:
    """One store's rows mirrored on a device, searched for candidates.

    ``backend``: an :class:`~ferromem.gpu.ArrayBackend` (``numpy_backend()`` or
    ``cupy_backend(device_id)``); the search owns it from now on and closes it in
    :meth:`close`. ``precision``: "f16" (the default: half the memory and bandwidth) or
    "f32". ``reserve_bytes``: device memory the mirror leaves free for everything else
    (default: 10% of the device's total or 512 MiB, whichever is larger).
    ``max_bytes``: a cap on the mirror's own size (None: no cap). ``workspace_bytes``: the
    scratch memory of one search call, from which the tile size follows.
    ``query_batch``: how many queries are scored together.

    Thread-safe: calls are serialised (one lock per mirror).
    """

    def __init__(
        self,
        backend: ArrayBackend,
        *,
        precision: str = "f16",
        reserve_bytes: int | None = None,
        max_bytes: int | None = None,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        query_batch: int = DEFAULT_QUERY_BATCH,
    ) -> None:
        if precision not in PRECISIONS:
            raise InvalidInputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        for label, value, floor in (
            ("reserve_bytes", reserve_bytes, 0),
            ("max_bytes", max_bytes, 0),
            ("workspace_bytes", workspace_bytes, 1),
            ("query_batch", query_batch, 1),
        ):
            if value is None and label in ("reserve_bytes", "max_bytes"):
                continue
            if not _is_int(value) or int(value) < floor:  # type: ignore[arg-type]
                raise InvalidInputError(f"{label} must be an int >= {floor}, got {value!r}")
        self._backend = backend
        self._xp = backend.xp
        self._precision = precision
        self._dtype = _DTYPES[precision]
        if reserve_bytes is None:
            _, total = backend.mem_info()
            reserve_bytes = max(int(total * _DEFAULT_RESERVE_FRACTION), _DEFAULT_RESERVE_FLOOR)
        self._reserve = int(reserve_bytes)
        self._max_bytes = None if max_bytes is None else int(max_bytes)
        self._workspace = int(workspace_bytes)
        self._query_batch = int(query_batch)
        self._lock = threading.RLock()
        self._closed = False
        # The mirror's state; _clear() sets it to empty.
        self._mirror: Any = None
        self._dim: int | None = None
        self._capacity = 0
        self._slot_count = 0
        self._valid_host: np.ndarray = np.zeros(0, dtype=bool)
        self._valid_count = 0

    # ------------------------------------------------------------------ properties

    @property
    def name(self) -> str:
        """The device: "numpy", or "cuda:0 NVIDIA H100 80GB HBM3"."""
        return self._backend.name

    @property
    def precision(self) -> str:
        """ "f16" or "f32": how the mirror stores rows and scores queries."""
        return self._precision

    @property
    def backend(self) -> ArrayBackend:
        return self._backend

    @property
    def dim(self) -> int | None:
        """The dimension of the mirrored rows (None before the first apply)."""
        return self._dim

    def rows(self) -> int:
        """The number of slots the mirror covers (the engine's ``slot_count`` as last
        applied; freed slots included, never returned)."""
        return self._slot_count

    def valid_rows(self) -> int:
        """The number of slots that hold a row (written and not freed since)."""
        return self._valid_count

    def capacity(self) -> int:
        """The number of slots allocated on the device (>= rows(); grows geometrically)."""
        return self._capacity

    def memory_bytes(self) -> int:
        """Device bytes the mirror holds (its allocated capacity)."""
        return 0 if self._mirror is None else int(self._mirror.nbytes)

    def error_bound(self, dim: int) -> float:
        """An upper bound on |mirror score - exact f32 cosine| for unit rows and queries
        of ``dim`` values at this mirror's precision (derived in ``ferromem.gpu._bounds``
        and docs/gpu.md)."""
        if not _is_int(dim) or dim < 1:
            raise InvalidInputError(f"dim must be a positive int, got {dim!r}")
        f16_scores = self._precision == "f16" and bool(self._backend.f16_scores)
        return mirror_error_bound(int(dim), self._precision, f16_scores=f16_scores)

    def __repr__(self) -> str:
        return (
            f"DeviceSearch({self.name!r}, precision={self._precision!r}, dim={self._dim}, "
            f"rows={self._slot_count}, valid={self._valid_count}, bytes={self.memory_bytes()})"
        )

    # ------------------------------------------------------------------ apply

    def apply(
        self,
        dim: int,
        slot_count: int,
        written: Any,
        rows: Any,
        freed: Any,
        reset: bool,
    ) -> None:
        """Brings the mirror in step with the engine.

        ``written`` (uint32[n]) slots get ``rows`` (float32[n, dim], unit rows normalised
        by the engine); ``freed`` (uint32[m]) slots are zeroed and never returned again;
        slots at or above ``slot_count`` are dropped. ``reset=True`` drops everything
        first (``dim`` may then change). A slot may appear once in ``written`` and not
        also in ``freed``.

        Checks everything first (typed errors, nothing applied), then admits the growth
        against free device memory less the reserve and ``max_bytes``
        (:class:`DeviceMemoryError`, nothing applied). Should the device fail even so in
        the middle of the change, the mirror is emptied (never left wrong) and the error
        says that it needs ``reset=True``.
        """
        with self._lock:
            self._check_open()
            written_slots, row_matrix, freed_slots = self._checked_change(
                dim, slot_count, written, rows, freed, bool(reset)
            )
            self._apply_checked(
                int(dim), int(slot_count), written_slots, row_matrix, freed_slots, bool(reset)
            )

    def _checked_change(
        self, dim: Any, slot_count: Any, written: Any, rows: Any, freed: Any, reset: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not _is_int(dim) or dim < 1:
            raise InvalidInputError(f"dim must be a positive int, got {dim!r}")
        if not _is_int(slot_count) or not 0 <= slot_count <= PAD_SLOT:
            raise InvalidInputError(f"slot_count must be an int in [0, {PAD_SLOT}], got {slot_count!r}")
        if not reset and self._dim is not None and dim != self._dim:
            raise DimensionMismatchError(
                f"the mirror holds rows of {self._dim} values, this change has {dim}; "
                "a change of dimension needs reset=True",
                expected=self._dim,
                got=int(dim),
            )
        written_slots = _slot_array(written, "written")
        freed_slots = _slot_array(freed, "freed")
        row_matrix = _float32_matrix(rows, "rows")
        if row_matrix.shape != (written_slots.size, dim):
            raise InvalidInputError(
                f"rows must have shape ({written_slots.size}, {dim}) (one row of dim values per "
                f"written slot), got {row_matrix.shape}"
            )
        if written_slots.size and int(written_slots.max()) >= slot_count:
            raise InvalidInputError(
                f"written slot {int(written_slots.max())} is not below slot_count={slot_count}"
            )
        freed_limit = slot_count if reset else max(slot_count, self._slot_count)
        if freed_slots.size and int(freed_slots.max()) >= max(freed_limit, 1):
            raise InvalidInputError(f"freed slot {int(freed_slots.max())} was never a slot of the mirror")
        if written_slots.size > 1 and np.unique(written_slots).size != written_slots.size:
            raise InvalidInputError("written lists a slot more than once")
        if written_slots.size and freed_slots.size and np.intersect1d(written_slots, freed_slots).size:
            raise InvalidInputError("a slot is in both written and freed; list it in one of them")
        _check_unit_rows(row_matrix, "rows")
        return written_slots, row_matrix, np.unique(freed_slots)

    def _apply_checked(
        self,
        dim: int,
        slot_count: int,
        written: np.ndarray,
        rows: np.ndarray,
        freed: np.ndarray,
        reset: bool,
    ) -> None:
        xp = self._xp
        itemsize = self._dtype.itemsize
        same_shape = not reset and self._mirror is not None and self._dim == dim
        old_capacity = self._capacity if same_shape else 0
        capacity = self._capacity_for(slot_count, old_capacity, dim, itemsize, reset, written.size)
        chunk_rows = max(1, min(written.size, WRITE_CHUNK_BYTES // (dim * 4))) if written.size else 0

        backend = self._backend
        with backend.context():
            if reset or not same_shape:
                self._clear()  # what the reset drops is released before the new allocation
            try:
                # Everything that allocates comes first, so that a refusal leaves the
                # mirror untouched.
                mirror = self._mirror
                if capacity != old_capacity or mirror is None:
                    grown = xp.zeros((capacity, dim), dtype=self._dtype)
                    if mirror is not None and old_capacity:
                        grown[:old_capacity] = mirror
                    mirror = grown
                freed_device = backend.to_device(freed.astype(np.int64)) if freed.size else None
            except MemoryError as exc:
                free, _ = backend.mem_info()
                fate = "was emptied (the reset had released it)" if reset else "is unchanged"
                raise DeviceMemoryError(
                    f"the device could not allocate the mirror's change ({exc}); the mirror "
                    f"{fate}. Free device memory: {free} bytes.",
                    needed=capacity * dim * itemsize,
                    available=free,
                ) from exc
            try:
                if freed_device is not None:
                    mirror[freed_device] = 0
                for start in range(0, written.size, chunk_rows or 1):
                    stop = min(start + chunk_rows, written.size)
                    self._write_chunk(mirror, written[start:stop], rows[start:stop])
                if slot_count < capacity and self._slot_count > slot_count:
                    mirror[slot_count : self._slot_count] = 0
                backend.synchronize()
            except Exception as exc:
                self._clear()
                raise DeviceMemoryError(
                    f"the device failed while applying a change ({type(exc).__name__}: {exc}); "
                    "the mirror was emptied so that it never answers from a half-applied "
                    "change: apply again with reset=True and all rows",
                ) from exc

        valid = np.zeros(capacity, dtype=bool)
        if same_shape and self._valid_host.size:
            valid[: self._valid_host.size] = self._valid_host
        valid[freed] = False
        valid[written] = True
        valid[slot_count:] = False
        self._mirror = mirror
        self._valid_host = valid
        self._valid_count = int(np.count_nonzero(valid))
        self._dim = dim
        self._capacity = capacity
        self._slot_count = slot_count

    def _write_chunk(self, mirror: Any, slots: np.ndarray, rows: np.ndarray) -> None:
        """Uploads one chunk of rows (f32) and scatters it into the mirror, which rounds
        it to the mirror's type on the device."""
        values = self._backend.to_device(rows)
        index = self._backend.to_device(slots.astype(np.int64))
        mirror[index] = values

    def _capacity_for(
        self, slot_count: int, old_capacity: int, dim: int, itemsize: int, reset: bool, written: int
    ) -> int:
        """The capacity the change needs, admitted against device memory; raises
        DeviceMemoryError (nothing changed) when it does not fit. The admission counts the
        transient memory of the write: one uploaded chunk of rows in f32, and as much again
        for a conversion the scatter may make."""
        staging = min(WRITE_CHUNK_BYTES, written * dim * 4) * 2
        if slot_count <= old_capacity and not reset:
            return old_capacity
        exact = max(slot_count, MIN_CAPACITY if slot_count else 0)
        geometric = max(exact, math.ceil(old_capacity * GROWTH)) if old_capacity else exact
        free, _ = self._backend.mem_info()
        # A reset releases the old mirror before allocating; a growth holds both at once.
        released = self.memory_bytes() if (reset or self._dim != dim) else 0
        available = free + released - self._reserve - staging
        cap = self._max_bytes
        for capacity in (geometric, exact):
            needed = capacity * dim * itemsize
            if needed <= available and (cap is None or needed <= cap):
                return capacity
        needed = exact * dim * itemsize
        limit = f"max_bytes={cap}" if cap is not None and needed > cap else "free device memory"
        raise DeviceMemoryError(
            f"the device mirror needs {needed} bytes for {slot_count} slots of {dim} values "
            f"({self._precision}), but {max(available, 0)} bytes are available ({free} free, "
            f"{self._reserve} reserved for other work, {staging} for staging; limited by "
            f"{limit}); the mirror is unchanged. Search on the CPU, raise max_bytes, lower "
            "reserve_bytes, or use precision='f16'.",
            needed=needed,
            available=max(int(available), 0) if cap is None else min(max(int(available), 0), cap),
        )

    # ------------------------------------------------------------------ search

    def top_candidates(
        self, queries: Any, width: int, candidates: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per query, the ``width`` best slots by the mirror's score, best first.

        ``queries``: float32[nq, dim], unit rows. ``candidates``: None (every slot that
        holds a row) or the slots to choose from (uint32, strictly ascending; slots that
        hold no row are skipped). Returns ``(slots uint32[nq, width], scores
        float32[nq, width])`` as NumPy arrays; when fewer than ``width`` slots qualify,
        the rest is padding: slot ``PAD_SLOT`` with score -inf. Equal scores are ordered
        by slot, so the order is deterministic.
        """
        with self._lock:
            self._check_open()
            if not _is_int(width) or width < 1:
                raise InvalidInputError(f"width must be a positive int, got {width!r}")
            width = int(width)
            matrix = _float32_matrix(queries, "queries")
            if self._dim is not None and matrix.shape[1] != self._dim:
                raise DimensionMismatchError(
                    f"queries have {matrix.shape[1]} values, the mirror's rows {self._dim}",
                    expected=self._dim,
                    got=matrix.shape[1],
                )
            _check_unit_rows(matrix, "queries")
            universe = self._universe(candidates)
            nq = matrix.shape[0]
            costs = np.full((nq, width), np.inf, dtype=np.float32)
            slots = np.full((nq, width), PAD_SLOT, dtype=np.int64)
            if nq and self._valid_count and (universe is None or universe.size):
                self._search(matrix, width, universe, costs, slots)
            return _finish(costs, slots)

    def _universe(self, candidates: Any) -> np.ndarray | None:
        """None: scan every slot below slot_count; else the candidate slots that hold a
        row (possibly none)."""
        if candidates is None:
            return None
        chosen = _slot_array(candidates, "candidates")
        if chosen.size > 1 and not bool(np.all(chosen[1:] > chosen[:-1])):
            raise InvalidInputError("candidates must be strictly ascending slots")
        if chosen.size and int(chosen[-1]) >= self._slot_count:
            raise InvalidInputError(
                f"candidate slot {int(chosen[-1])} is not below the mirror's slot count "
                f"{self._slot_count}: the mirror is behind the engine"
            )
        return chosen[self._valid_host[chosen]] if chosen.size else chosen

    def _search(
        self,
        queries: np.ndarray,
        width: int,
        universe: np.ndarray | None,
        costs: np.ndarray,
        slots: np.ndarray,
    ) -> None:
        xp = self._xp
        backend = self._backend
        size = self._slot_count if universe is None else int(universe.size)
        nq, dim = queries.shape
        batch = min(nq, self._query_batch)
        bounds = _tile_bounds(size, self._tile_rows(batch, dim, size, gathered=universe is not None), width)
        with backend.context():
            if universe is None:
                invalid = self._invalid_by_tile(size, bounds)
                chosen = None
            else:
                invalid = {}
                chosen = backend.to_device(universe.astype(np.int64))
            for start in range(0, nq, batch):
                stop = min(start + batch, nq)
                # Negation is exact, and so is rounding it to f16 (round-to-nearest is
                # symmetric): the costs are exactly the negated mirror scores.
                negated = backend.to_device(np.negative(queries[start:stop]))
                if negated.dtype != self._dtype:
                    negated = negated.astype(self._dtype)
                best_cost = xp.full((stop - start, width), xp.inf, dtype=xp.float32)
                best_slot = xp.full((stop - start, width), PAD_SLOT, dtype=xp.int64)
                for t0, t1 in bounds:
                    if chosen is None:
                        tile_slots = None
                        tile_rows = self._mirror[t0:t1]
                    else:
                        tile_slots = chosen[t0:t1]
                        tile_rows = self._mirror[tile_slots]
                    tile_cost = backend.matmul_t(negated, tile_rows)
                    masked = invalid.get(t0)
                    if masked is not None:
                        tile_cost[:, masked] = xp.inf
                    picked = _select(xp, tile_cost, best_cost.max(axis=1), width)
                    if picked is None:
                        continue
                    local, local_cost = picked
                    local_slot = local + t0 if tile_slots is None else tile_slots[local]
                    best_cost, best_slot = _merge(xp, best_cost, best_slot, local_cost, local_slot, width)
                costs[start:stop] = backend.to_host(best_cost)
                slots[start:stop] = backend.to_host(best_slot)

    def _invalid_by_tile(self, size: int, bounds: list[tuple[int, int]]) -> dict[int, Any]:
        """Per tile start, a device array of the tile-relative positions of the slots that
        hold no row (tiles without such slots are absent)."""
        holes = np.flatnonzero(~self._valid_host[:size])
        result: dict[int, Any] = {}
        if not holes.size:
            return result
        starts = np.array([t0 for t0, _ in bounds], dtype=np.int64)
        owner = np.searchsorted(starts, holes, side="right") - 1
        for tile in np.unique(owner):
            t0 = int(starts[tile])
            positions = holes[owner == tile] - t0
            result[t0] = self._backend.to_device(positions.astype(np.int64))
        return result

    def _tile_rows(self, batch: int, dim: int, size: int, *, gathered: bool) -> int:
        """Rows per tile: the workspace divided by what one row of a tile costs (its
        scores, their selection indices and values for each query of the batch, a
        gathered copy and an f32 upcast of the row where the backend makes them), within
        what the device has free."""
        per_row = batch * 16 + 16
        if self._backend.upcasts_f16 and self._dtype != np.float32:
            per_row += dim * 4
        if gathered:
            per_row += dim * self._dtype.itemsize
        free, _ = self._backend.mem_info()
        usable = free - self._reserve // 2
        smallest = min(size, MIN_TILE_ROWS)
        if smallest * per_row > usable:
            raise DeviceMemoryError(
                f"a search of {batch} queries needs at least {smallest * per_row} bytes of device "
                f"scratch memory, {max(usable, 0)} are available ({free} free, half of the "
                f"{self._reserve}-byte reserve usable); search on the CPU",
                needed=smallest * per_row,
                available=max(int(usable), 0),
            )
        # The workspace is a target: a tile never has fewer than MIN_TILE_ROWS rows.
        rows = max(smallest, min(self._workspace, usable) // per_row)
        if rows >= size:
            return size
        return max(smallest, rows // TILE_ALIGN * TILE_ALIGN)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Releases the mirror and closes the backend. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._clear()
            self._backend.close()

    def __enter__(self) -> DeviceSearch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _clear(self) -> None:
        self._mirror = None
        self._dim = None
        self._capacity = 0
        self._slot_count = 0
        self._valid_host = np.zeros(0, dtype=bool)
        self._valid_count = 0

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("this DeviceSearch is closed; make a new one")


def _tile_bounds(size: int, tile: int, width: int) -> list[tuple[int, int]]:
    """The tiles' [start, stop) rows: a first, smaller *seed* tile (when the rows span
    several tiles) whose best ``width`` set a threshold early, then full tiles."""
    seed = min(tile, max(SEED_TILE_ROWS, _round_up(8 * width, TILE_ALIGN)))
    bounds = [(0, min(seed, size))]
    start = bounds[0][1]
    while start < size:
        bounds.append((start, min(start + tile, size)))
        start = bounds[-1][1]
    return bounds


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _select(xp: Any, cost: Any, threshold: Any, width: int) -> tuple[Any, Any] | None:
    """Per row of a tile's costs, the positions and costs of the entries that may still
    enter the best ``width``: those below the row's ``threshold`` (the width-th best cost
    so far; inf until ``width`` were found), at most ``width`` of them. None when no entry
    qualifies.

    Once a threshold exists, few entries of a tile pass it (about width x tile / rows seen
    for unordered data), so they are compacted (``nonzero``) and only they are ranked: a
    few passes over the tile instead of a partition of all of it. When many pass (the
    first tile, or rows ordered so that each tile beats the last), the tile is partitioned
    whole instead."""
    passing = cost < threshold[:, None]
    per_row = passing.sum(axis=1)
    widest = int(per_row.max())
    if widest == 0:
        return None
    rows, columns = cost.shape
    if widest * rows * DENSE_FRACTION > cost.size:
        return _smallest(xp, cost, min(width, columns))
    row, column = xp.nonzero(passing)  # row-major: rows ascending
    first = xp.cumsum(per_row) - per_row
    rank = xp.arange(row.size, dtype=xp.int64) - first[row]
    dense_cost = xp.full((rows, widest), xp.inf, dtype=xp.float32)
    dense_column = xp.zeros((rows, widest), dtype=xp.int64)
    dense_cost[row, rank] = cost[row, column]
    dense_column[row, rank] = column
    if widest <= width:
        return dense_column, dense_cost
    keep, kept_cost = _smallest(xp, dense_cost, width)
    return xp.take_along_axis(dense_column, keep, axis=1), kept_cost


def _smallest(xp: Any, cost: Any, count: int) -> tuple[Any, Any]:
    """Per row of ``cost``, the positions and values of ``count`` smallest entries (in no
    particular order)."""
    n = cost.shape[1]
    if count >= n:
        positions = xp.broadcast_to(xp.arange(n, dtype=xp.int64), cost.shape)
        return positions, cost
    positions = xp.argpartition(cost, count - 1, axis=1)[:, :count]
    return positions, xp.take_along_axis(cost, positions, axis=1)


def _merge(xp: Any, best_cost: Any, best_slot: Any, cost: Any, slot: Any, width: int) -> tuple[Any, Any]:
    """The running best ``width`` per query after a tile's candidates joined."""
    all_cost = xp.concatenate([best_cost, cost], axis=1)
    all_slot = xp.concatenate([best_slot, xp.asarray(slot, dtype=xp.int64)], axis=1)
    keep = xp.argpartition(all_cost, width - 1, axis=1)[:, :width]
    return xp.take_along_axis(all_cost, keep, axis=1), xp.take_along_axis(all_slot, keep, axis=1)


def _finish(costs: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Host side: padding where nothing qualified, best first, equal scores by slot."""
    empty = ~np.isfinite(costs)
    slots = np.where(empty, PAD_SLOT, slots)
    order = np.lexsort((slots, costs), axis=-1)
    costs = np.take_along_axis(costs, order, axis=1)
    slots = np.take_along_axis(slots, order, axis=1)
    return slots.astype(np.uint32), np.negative(costs).astype(np.float32)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _slot_array(value: Any, label: str) -> np.ndarray:
    """A 1-D int64 array of slots from an array of unsigned or non-negative integers."""
    array = np.asarray(value)
    if array.ndim != 1:
        raise InvalidInputError(f"{label} must be a 1-D array of slots, got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype.kind not in "iu":
        raise InvalidInputError(f"{label} must hold integer slots (uint32), got {array.dtype}")
    as_int = array.astype(np.int64)
    if int(as_int.min()) < 0 or int(as_int.max()) >= PAD_SLOT:
        raise InvalidInputError(f"{label} holds a slot outside [0, {PAD_SLOT})")
    return as_int


def _float32_matrix(value: Any, label: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 2:
        raise InvalidVectorError(f"{label} must be a 2-D float32 array, got shape {array.shape}")
    if array.dtype.kind != "f":
        raise InvalidVectorError(f"{label} must be float32, got {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_unit_rows(matrix: np.ndarray, label: str) -> None:
    """Every row finite with a norm within NORM_TOLERANCE of 1 (the error bound assumes it)."""
    step = max(1, (16 * 1024 * 1024) // max(1, matrix.shape[1] * 8))
    for start in range(0, matrix.shape[0], step):
        part = matrix[start : start + step]
        if not np.isfinite(part).all():
            row = start + int(np.flatnonzero(~np.isfinite(part).all(axis=1))[0])
            raise InvalidVectorError(f"{label} row {row} is not finite (NaN or inf)")
        norms = np.sqrt(np.einsum("ij,ij->i", part, part, dtype=np.float64))
        off = np.abs(norms - 1.0) > NORM_TOLERANCE
        if off.any():
            row = int(np.flatnonzero(off)[0])
            raise InvalidVectorError(
                f"{label} row {start + row} has norm {norms[row]:.6g}; the mirror takes unit rows "
                f"(norm within {NORM_TOLERANCE} of 1), normalised by the engine"
            )
