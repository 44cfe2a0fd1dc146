"""The kernels exposed for benchmarks (``ferromem._core.dot_rows_*``), on every SIMD path
this CPU runs: int8 is exact (int32 sums equal numpy's int64 ones), float32, float16 and
bfloat16 agree with float64 numpy on the same stored values."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import require_engine
from ferromem.exceptions import InvalidInputError


@pytest.fixture()
def core():
    require_engine("native")
    from ferromem import _core

    yield _core
    _core.force_isa(None)


@pytest.mark.parametrize("dim", [1, 31, 64, 65, 127, 384, 1537])
def test_every_path_agrees_with_numpy(core, dim):
    rng = np.random.default_rng(dim)
    rows_i8 = rng.integers(-128, 128, (50, dim), dtype=np.int8)
    q_i8 = rng.integers(-128, 128, dim, dtype=np.int8)
    want_i8 = rows_i8.astype(np.int64) @ q_i8.astype(np.int64)
    rows = rng.standard_normal((50, dim), dtype=np.float32)
    q = rng.standard_normal(dim, dtype=np.float32)
    half = rows.astype(np.float16)
    want_f32 = rows.astype(np.float64) @ q.astype(np.float64)
    want_f16 = half.astype(np.float64) @ q.astype(np.float64)
    # bfloat16: the top half of each float32 (truncated here; the kernels widen exactly).
    bf16_rows = (rows.view(np.uint32) >> 16).astype(np.uint16)
    bf16_q = (q.view(np.uint32) >> 16).astype(np.uint16)
    wide = lambda bits: (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)  # noqa: E731
    want_bf16 = wide(bf16_rows) @ q.astype(np.float64)
    want_pairs = wide(bf16_rows) @ wide(bf16_q)
    tol = 1e-5 * np.sqrt(dim) * np.abs(rows).max() * np.abs(q).max() * np.sqrt(dim)
    for isa in core.supported_isas():
        core.force_isa(isa)
        got = core.dot_rows_i8(q_i8, rows_i8)
        assert got.dtype == np.int32 and np.array_equal(got, want_i8), (isa, core.int8_path(isa))
        assert np.allclose(core.dot_rows_f32(q, rows), want_f32, rtol=0, atol=tol), isa
        assert np.allclose(core.dot_rows_f16(q, half.view(np.uint16)), want_f16, rtol=0, atol=tol), isa
        path = core.bf16_path(isa)
        assert np.allclose(core.dot_rows_bf16(q, bf16_rows), want_bf16, rtol=0, atol=tol), (isa, path)
        assert np.allclose(core.dot_rows_bf16_pairs(bf16_q, bf16_rows), want_pairs, rtol=0, atol=tol), (
            isa,
            path,
        )


def test_bad_shapes_are_refused(core):
    q = np.zeros(8, np.int8)
    with pytest.raises(InvalidInputError, match="rows have 9 values"):
        core.dot_rows_i8(q, np.zeros((3, 9), np.int8))
    with pytest.raises(InvalidInputError, match="C-contiguous"):
        core.dot_rows_i8(q, np.zeros((3, 16), np.int8)[:, ::2])
    with pytest.raises(InvalidInputError, match="at least one value"):
        core.dot_rows_f32(np.zeros(0, np.float32), np.zeros((3, 0), np.float32))
    with pytest.raises(TypeError):
        core.dot_rows_i8(q.astype(np.int16), np.zeros((3, 8), np.int8))
