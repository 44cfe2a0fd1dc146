"""Vectors of extreme magnitude get their true cosine, or are refused with a typed error.

A stored vector's largest absolute value must lie in [2^-100, 2^100] (the range in which
the f32 kernels cannot overflow or lose the answer, docs/architecture.md "Extreme
magnitudes"); any finite, non-zero query is normalised in float64 first. Before this,
1e-30, 1e-42 (subnormal) and 3e38 vectors passed validation and then scored NaN, 0 or
+-1 against themselves.
"""

from __future__ import annotations

import math

import ferromem
import numpy as np
import pytest
from conftest import NATIVE_AVAILABLE, NATIVE_SKIP_REASON

DIM = 16
LOW, HIGH = 2.0**-100, 2.0**100


def _direction(rng: np.random.Generator, n: int) -> np.ndarray:
    m = rng.standard_normal((n, DIM))
    m /= np.abs(m).max(axis=1, keepdims=True)  # largest |value| is 1
    return m


def _stored_rows(rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Rows at the edges of the accepted range, with components down to subnormals."""
    scales = [LOW, 1e-30, 1e-20, 1e-5, 1.0, 1e5, 1e20, 1e29, HIGH]
    rows = []
    for scale in scales:
        rows.append(_direction(rng, 1)[0] * scale)
    mixed = _direction(rng, 1)[0] * HIGH
    mixed[3:8] = [1e-42, -1e-45, 1e-38, 0.0, -3e-40]  # subnormal parts beside huge ones
    rows.append(mixed)
    tiny_mixed = _direction(rng, 1)[0] * LOW
    tiny_mixed[0] = -LOW
    tiny_mixed[5:9] = 1e-44
    rows.append(tiny_mixed)
    matrix = np.asarray(rows, dtype=np.float32)
    assert np.isfinite(matrix).all()
    return [f"r{i}" for i in range(len(rows))], matrix


def _true_cosines(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    q = queries.astype(np.float64)
    r = rows.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    return q @ r.T


def _queries(rows: np.ndarray) -> np.ndarray:
    """The stored rows themselves at every extreme scale a query may have (any finite,
    non-zero float32), subnormal and near float32's maximum included."""
    out = []
    for row in rows.astype(np.float64):
        unit_max = row / np.abs(row).max()
        for scale in (1e-42, 1e-38, 1e-30, 1.0, 1e30, 3e38):
            q = (unit_max * scale).astype(np.float32)
            if np.any(q != 0):
                out.append(q)
    return np.asarray(out, dtype=np.float32)


STORES = [
    pytest.param({"engine": "reference"}, id="reference"),
    pytest.param({"engine": "native", "precision": "f32"}, id="native-f32"),
    pytest.param({"engine": "native", "precision": "f16"}, id="native-f16"),
    pytest.param({"engine": "native", "precision": "int8"}, id="native-int8"),
    pytest.param({"engine": "native", "precision": "f32", "index": "hnsw"}, id="native-f32-hnsw"),
    pytest.param({"engine": "native", "precision": "int8", "index": "hnsw"}, id="native-int8-hnsw"),
]


@pytest.mark.parametrize("options", STORES)
def test_extreme_magnitudes_score_their_true_cosine(options, tmp_path, rng):
    if options["engine"] == "native" and not NATIVE_AVAILABLE:
        pytest.skip(NATIVE_SKIP_REASON)
    ids, rows = _stored_rows(rng)
    queries = _queries(rows)
    truth = _true_cosines(queries, rows)
    # f16 stores score the half-precision copy: within about 1e-3 of the exact cosine.
    tolerance = 2e-3 if options.get("precision") == "f16" else 1e-5
    with ferromem.open(str(tmp_path / "s.ferro"), **options) as store:
        store.add(ids, rows)
        if options.get("index") == "hnsw":
            assert store.wait_for_index(60)
        results = store.search(queries, k=len(ids))
        for qi, result in enumerate(results):
            assert len(result) == len(ids)
            scores = np.asarray(result.scores, dtype=np.float64)
            assert np.isfinite(scores).all(), f"query {qi}: {list(result)}"
            expected = {rid: truth[qi, j] for j, rid in enumerate(ids)}
            for rid, score in result:
                assert math.isclose(score, expected[rid], abs_tol=tolerance), (qi, rid, score, expected[rid])
        # Each stored vector scores (about) 1 against itself, whatever its scale.
        for _rid, row in zip(ids, rows):
            best = store.search(row, k=1)
            assert best[0][1] == pytest.approx(1.0, abs=tolerance)
        # get returns the vector exactly as stored.
        for rid, row in zip(ids, rows):
            assert np.array_equal(store.get(rid).vector, row)


@pytest.mark.parametrize("engine", ["native", "reference"])
@pytest.mark.parametrize("value", [1e-42, 1e-31, 3e38, 2.0**100 * 1.001, 2.0**-100 * 0.999])
def test_out_of_range_vectors_are_refused_and_say_the_range(engine, value, tmp_path):
    if engine == "native" and not NATIVE_AVAILABLE:
        pytest.skip(NATIVE_SKIP_REASON)
    with ferromem.open(str(tmp_path / "s.ferro"), engine=engine) as store:
        store.add("a", [1.0] + [0.0] * (DIM - 1))
        vector = np.zeros(DIM, dtype=np.float32)
        vector[2] = value
        with pytest.raises(ferromem.InvalidVectorError, match=r"2\^-100.*2\^100") as info:
            store.add("b", vector)
        assert isinstance(info.value, ValueError)
        with pytest.raises(ferromem.InvalidVectorError, match="rescale"):
            store.update("a", vector=vector)
        assert store.count() == 1
        assert store.get("a").vector[0] == 1.0
        # The same vector is a fine query: it is normalised first.
        result = store.search(vector, k=1)
        assert result[0] == ("a", 0.0)


@pytest.mark.skipif(not NATIVE_AVAILABLE, reason=NATIVE_SKIP_REASON)
def test_native_and_reference_agree_on_extreme_queries(tmp_path, rng):
    ids, rows = _stored_rows(rng)
    queries = _queries(rows)
    answers = []
    for engine in ("native", "reference"):
        with ferromem.open(str(tmp_path / f"{engine}.ferro"), engine=engine) as store:
            store.add(ids, rows)
            answers.append([(list(r.ids), np.asarray(r.scores)) for r in store.search(queries, k=3)])
    for (ids_n, s_n), (ids_r, s_r) in zip(*answers):
        np.testing.assert_allclose(s_n, s_r, atol=1e-5)
        # Ranks agree wherever the scores are apart by more than the tolerance.
        for j in range(len(s_n) - 1):
            if s_n[j] - s_n[j + 1] > 2e-5:
                assert ids_n[j] == ids_r[j]
