"""error_bound() is never exceeded: on random vectors, on vectors built so that every f16
rounding errs the same way by almost the most it can (the worst case the bound is
derived for), and on real MiniLM text embeddings (the shared data set).

"Exact" is taken two ways, and the mirror's score must be within the bound of both: the
float64 cosine of the original vectors, and the engine's own f32 computation (an f32 dot
product of the original vectors scaled by f32 inverse norms, clamped to [-1, 1])."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import load_minilm
from ferromem.gpu import NORM_TOLERANCE, DeviceSearch, mirror_error_bound, numpy_backend
from gpu_model import unit_rows


def engine_normalised(vectors: np.ndarray) -> np.ndarray:
    """What the engine hands the mirror: each vector times its f32 inverse norm, in f32."""
    vectors = vectors.astype(np.float32)
    inverse = (np.float32(1.0) / np.sqrt(np.einsum("ij,ij->i", vectors, vectors))).astype(np.float32)
    return (vectors * inverse[:, None]).astype(np.float32)


def engine_cosine(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The engine's exact score, computed the way its CPU kernel does (in f32)."""
    q = queries.astype(np.float32)
    v = vectors.astype(np.float32)
    q_inv = (np.float32(1.0) / np.sqrt(np.einsum("ij,ij->i", q, q))).astype(np.float32)
    v_inv = (np.float32(1.0) / np.sqrt(np.einsum("ij,ij->i", v, v))).astype(np.float32)
    raw = (q @ v.T).astype(np.float32)
    return np.clip(raw * v_inv[None, :] * q_inv[:, None], -1.0, 1.0).astype(np.float32)


def float64_cosine(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    q = queries.astype(np.float64)
    v = vectors.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return q @ v.T


def mirror_scores(backend, precision: str, rows: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """Every mirror score of queries x rows (through top_candidates with width = all rows),
    and the mirror's error bound."""
    n, dim = rows.shape
    search = DeviceSearch(backend, precision=precision, workspace_bytes=8 << 20, query_batch=64)
    search.apply(dim, n, np.arange(n, dtype=np.uint32), rows, np.zeros(0, np.uint32), False)
    slots, scores = search.top_candidates(queries, n)
    full = np.empty((queries.shape[0], n), dtype=np.float64)
    np.put_along_axis(full, slots.astype(np.int64), scores.astype(np.float64), axis=1)
    bound = search.error_bound(dim)
    search.close()
    return full, bound


def worst_error(mirror: np.ndarray, queries: np.ndarray, vectors: np.ndarray) -> float:
    return float(
        max(
            np.abs(mirror - engine_cosine(queries, vectors)).max(),
            np.abs(mirror - float64_cosine(queries, vectors)).max(),
        )
    )


@pytest.mark.parametrize("precision", ["f16", "f32"])
@pytest.mark.parametrize("dim", [3, 64, 384, 1536])
def test_random_vectors_stay_within_the_bound(make_backend, precision, dim):
    rng = np.random.default_rng(dim)
    vectors = rng.standard_normal((1500, dim)).astype(np.float32) * rng.uniform(0.1, 30, (1500, 1)).astype(
        np.float32
    )
    raw_queries = rng.standard_normal((40, dim)).astype(np.float32)
    # Near-duplicates of stored vectors give scores near 1, where relative errors peak.
    raw_queries[:20] = vectors[:20] + 0.01 * rng.standard_normal((20, dim)).astype(np.float32)
    mirror, bound = mirror_scores(
        make_backend(), precision, engine_normalised(vectors), engine_normalised(raw_queries)
    )
    observed = worst_error(mirror, raw_queries, vectors)
    assert observed <= bound, f"observed {observed} > bound {bound}"


def f16_worst_case_unit_vector(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A unit vector (within half the mirror's norm tolerance) whose every component lies
    half-way between two f16 values and rounds away from zero, with the largest relative
    rounding error the layout allows: 2^e (1 + (m + 1/2) 2^-10) with m odd rounds to even
    m + 1, erring by 2^-11 relative to 2^e (1 + ...), the most for small m."""
    exponent = np.full(dim, math.floor(math.log2(1 / math.sqrt(dim))), dtype=np.int64)
    mantissa = np.ones(dim, dtype=np.int64)

    def values() -> np.ndarray:
        return np.ldexp(1.0 + (mantissa + 0.5) / 1024.0, exponent)

    slack = NORM_TOLERANCE  # norm^2 within 1e-4 of 1: norm within 5e-5
    order = rng.permutation(dim)
    position = 0
    while (values() ** 2).sum() > 1 + slack and position < dim:  # too long: drop a binade
        exponent[order[position]] -= 1
        position += 1
    while (values() ** 2).sum() < 1 - slack:  # too short: lengthen, fewest steps first
        if (values() ** 2).sum() + (values() ** 2).sum() * 2 / 1024 < 1:
            grow = mantissa < 1021
            mantissa[grow] += 2
        else:
            j = int(rng.integers(dim))
            if mantissa[j] < 1021:
                mantissa[j] += 2
    vector = values() * rng.choice([-1.0, 1.0], size=dim)
    as_f32 = vector.astype(np.float32)
    assert (as_f32.astype(np.float64) == vector).all()  # exactly representable
    assert abs(np.linalg.norm(vector) - 1) <= NORM_TOLERANCE
    rounded = as_f32.astype(np.float16).astype(np.float64)
    assert (np.abs(rounded) > np.abs(vector)).all()  # every rounding errs outward
    return as_f32


@pytest.mark.parametrize("dim", [64, 256, 384, 1024, 1536])
def test_f16_worst_case_rounding_stays_within_the_bound(make_backend, dim):
    rng = np.random.default_rng(1000 + dim)
    rows = np.stack([f16_worst_case_unit_vector(rng, dim) for _ in range(40)])
    # Query = row: both roundings push the score the same way, by about 2 * 2^-11.
    mirror, bound = mirror_scores(make_backend(), "f16", rows, rows)
    observed = worst_error(mirror, rows, rows)
    assert observed <= bound, f"observed {observed} > bound {bound}"
    if dim in (64, 256, 1024):  # every component at the bottom of its binade: the worst case
        assert observed >= 0.6 * bound, f"the construction should come near the bound: {observed} vs {bound}"


def test_the_bound_grows_with_dim_and_precision():
    for dim in (1, 64, 384, 1536, 4096):
        f16 = mirror_error_bound(dim, "f16")
        f32 = mirror_error_bound(dim, "f32")
        assert 0 < f32 < f16 < 3e-3
        assert mirror_error_bound(dim, "f16", f16_scores=True) > f16
    assert mirror_error_bound(1536, "f16") > mirror_error_bound(384, "f16")
    search = DeviceSearch(numpy_backend(), precision="f16")
    assert search.error_bound(384) == mirror_error_bound(384, "f16")
    with pytest.raises(ValueError):
        mirror_error_bound(0, "f16")


@pytest.fixture(scope="module")
def minilm():
    passages, queries = load_minilm("passages", "queries")
    return passages[:20_000].astype(np.float32), queries[::10].astype(np.float32)


@pytest.mark.parametrize("precision", ["f16", "f32"])
def test_minilm_embeddings_stay_within_the_bound(make_backend, minilm, precision):
    passages, queries = minilm
    mirror, bound = mirror_scores(
        make_backend(), precision, engine_normalised(passages), engine_normalised(queries)
    )
    observed = worst_error(mirror, queries, passages)
    assert observed <= bound, f"observed {observed} > bound {bound}"


def test_unit_rows_helper_is_unit():
    rows = unit_rows(np.random.default_rng(0), 10, 7)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-6)
