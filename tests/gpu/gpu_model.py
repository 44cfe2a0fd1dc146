"""The test side of the GPU path: an independent model of what a DeviceSearch mirror holds
(a dict of slot -> row), the brute-force answer of a candidate search over it, and the
checker that compares a DeviceSearch's answer with that answer.

The model scores in float64 over the values the mirror stores (rows and queries rounded
to f16 for an f16 mirror), so it is the mirror's score without its f32 summation error;
the checker allows that summation error (``SUM_TOLERANCE``) and nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PAD = 0xFFFFFFFF
#: Largest difference between the mirror's f32 sum and the float64 sum of the same stored
#: values, for unit vectors of up to a few thousand values (dim * 2^-23 is far below).
SUM_TOLERANCE = 1e-4


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def stored(values: np.ndarray, precision: str) -> np.ndarray:
    """The values as the mirror holds them, as float64."""
    if precision == "f16":
        return values.astype(np.float16).astype(np.float64)
    return values.astype(np.float64)


@dataclass
class MirrorModel:
    """What the mirror should hold after a sequence of apply() calls."""

    dim: int | None = None
    slot_count: int = 0
    rows: dict[int, np.ndarray] = field(default_factory=dict)

    def apply(
        self, dim: int, slot_count: int, written: np.ndarray, rows: np.ndarray, freed: np.ndarray, reset: bool
    ) -> None:
        if reset:
            self.rows.clear()
        self.dim = dim
        for slot in freed.tolist():
            self.rows.pop(int(slot), None)
        for slot, row in zip(written.tolist(), rows):
            self.rows[int(slot)] = row.copy()
        for slot in [s for s in self.rows if s >= slot_count]:
            del self.rows[slot]
        self.slot_count = slot_count

    def valid_slots(self) -> np.ndarray:
        return np.array(sorted(self.rows), dtype=np.int64)


def check_answer(
    model: MirrorModel,
    queries: np.ndarray,
    width: int,
    candidates: np.ndarray | None,
    slots: np.ndarray,
    scores: np.ndarray,
    precision: str,
) -> None:
    """Asserts that (slots, scores) is a right answer of top_candidates(queries, width,
    candidates) on the model's rows: shapes and dtypes; padding exactly where fewer than
    width slots qualify; distinct, qualifying slots; scores equal to the stored values'
    dot products; best first with equal scores by slot; and nothing left out that scores
    better than the last one returned (up to the summation tolerance)."""
    nq = queries.shape[0]
    assert slots.shape == (nq, width) and slots.dtype == np.uint32, (slots.shape, slots.dtype)
    assert scores.shape == (nq, width) and scores.dtype == np.float32, (scores.shape, scores.dtype)
    universe = model.valid_slots()
    if candidates is not None:
        universe = np.intersect1d(universe, np.asarray(candidates, dtype=np.int64))
    expected_count = min(width, universe.size)
    if universe.size == 0:
        assert (slots == PAD).all() and np.isneginf(scores).all()
        return
    matrix = np.stack([model.rows[int(s)] for s in universe])
    exact = stored(queries, precision) @ stored(matrix, precision).T  # (nq, |universe|)
    position = {int(s): i for i, s in enumerate(universe)}
    for q in range(nq):
        got_slots = slots[q].astype(np.int64)
        got_scores = scores[q]
        real = got_slots[:expected_count]
        assert (got_slots[expected_count:] == PAD).all(), (
            f"query {q}: padding expected after {expected_count}"
        )
        assert np.isneginf(got_scores[expected_count:]).all()
        assert np.isfinite(got_scores[:expected_count]).all()
        assert len(set(real.tolist())) == expected_count, f"query {q}: a slot returned twice"
        assert all(int(s) in position for s in real), f"query {q}: a slot outside the universe"
        want = exact[q, [position[int(s)] for s in real]]
        np.testing.assert_allclose(got_scores[:expected_count], want, rtol=0, atol=SUM_TOLERANCE)
        assert (np.diff(got_scores[:expected_count]) <= 0).all(), f"query {q}: not best first"
        ties = np.flatnonzero(np.diff(got_scores[:expected_count]) == 0)
        assert (real[ties] < real[ties + 1]).all(), f"query {q}: equal scores not ordered by slot"
        left_out = np.ones(universe.size, dtype=bool)
        left_out[[position[int(s)] for s in real]] = False
        if left_out.any():
            worst_kept = float(want.min())
            best_left = float(exact[q, left_out].max())
            assert best_left <= worst_kept + 2 * SUM_TOLERANCE, (
                f"query {q}: slot with score {best_left} left out, kept {worst_kept}"
            )
