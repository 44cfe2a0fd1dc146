"""The CuPy backend's own code, run here on a NumPy stand-in for CuPy (tests/gpu/fake_cupy.py):
the cuBLAS call's column-major arguments (the stand-in computes what cuBLAS would from the
same pointers and leading dimensions), the staged upload through the two pinned buffers,
the fallback to cupy.matmul and its wider error bound, and device_info. The real device
runs the same tests marked ``gpu``."""

from __future__ import annotations

import numpy as np
import pytest
from fake_cupy import install
from ferromem.gpu import (
    DeviceSearch,
    DeviceUnavailableError,
    _backends,
    cupy_backend,
    device_info,
    numpy_backend,
)
from gpu_model import MirrorModel, check_answer, unit_rows


def test_gemm_ex_arguments_compute_a_times_b_transposed(monkeypatch):
    install(monkeypatch)
    backend = cupy_backend(0)
    assert backend.name == "cuda:0 Fake GPU"
    assert "GemmEx" in backend.gemm and backend.f16_scores is False and backend.upcasts_f16 is False
    rng = np.random.default_rng(1)
    for m, n, d in [(1, 7, 5), (13, 300, 33), (64, 1, 8)]:
        a = rng.standard_normal((m, d)).astype(np.float32)
        b = rng.standard_normal((n, d)).astype(np.float32)
        for dtype in (np.float16, np.float32):
            got = backend.matmul_t(backend.to_device(a.astype(dtype)), backend.to_device(b.astype(dtype)))
            want = a.astype(dtype).astype(np.float64) @ b.astype(dtype).astype(np.float64).T
            assert got.dtype == np.float32 and got.shape == (m, n)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["f16", "f32"])
def test_device_search_through_the_cupy_backend(monkeypatch, precision):
    install(monkeypatch)
    monkeypatch.setattr(_backends, "STAGING_CHUNK_BYTES", 4096)  # many staged chunks
    rng = np.random.default_rng(2)
    search = DeviceSearch(cupy_backend(0), precision=precision, workspace_bytes=100_000, query_batch=16)
    model = MirrorModel()
    rows = unit_rows(rng, 2000, 40)  # 320,000 bytes: 79 chunks through two buffers
    written = np.arange(2000, dtype=np.uint32)
    freed = np.array([5, 17, 1999], dtype=np.uint32)
    search.apply(40, 2000, written, rows, np.zeros(0, np.uint32), False)
    model.apply(40, 2000, written, rows, np.zeros(0, np.uint32), False)
    search.apply(40, 2000, np.zeros(0, np.uint32), np.zeros((0, 40), np.float32), freed, False)
    model.apply(40, 2000, np.zeros(0, np.uint32), np.zeros((0, 40), np.float32), freed, False)
    stored = search.backend.to_host(search._mirror)[:2000]
    expected = rows.astype(np.float16 if precision == "f16" else np.float32)
    expected[freed] = 0
    np.testing.assert_array_equal(stored, expected)
    queries = unit_rows(rng, 30, 40)
    for width in (1, 10, 100):
        check_answer(model, queries, width, None, *search.top_candidates(queries, width), precision)
    chosen = np.sort(rng.choice(2000, 300, replace=False)).astype(np.uint32)
    check_answer(model, queries, 7, chosen, *search.top_candidates(queries, 7, chosen), precision)
    assert search.error_bound(40) == DeviceSearch(numpy_backend(), precision=precision).error_bound(40)
    search.close()


def test_a_failing_gemm_ex_falls_back_with_a_wider_bound(monkeypatch):
    install(monkeypatch, gemm_fails=True)
    monkeypatch.delenv("CUPY_TF32", raising=False)
    backend = cupy_backend(0)
    assert backend.f16_scores is True and "cupy.matmul" in backend.gemm and "NOT_SUPPORTED" in backend.gemm
    search = DeviceSearch(backend, precision="f16")
    assert search.error_bound(384) > DeviceSearch(numpy_backend(), precision="f16").error_bound(384)
    rng = np.random.default_rng(3)
    rows = unit_rows(rng, 100, 16)
    search.apply(16, 100, np.arange(100, dtype=np.uint32), rows, np.zeros(0, np.uint32), False)
    slots, _ = search.top_candidates(rows[:3], 1)
    assert slots[:, 0].tolist() == [0, 1, 2]


def test_a_failing_gemm_ex_with_tf32_allowed_refuses_the_device(monkeypatch):
    install(monkeypatch, gemm_fails=True)
    monkeypatch.setenv("CUPY_TF32", "1")
    with pytest.raises(DeviceUnavailableError, match="CUPY_TF32"):
        cupy_backend(0)


def test_device_info_and_memory(monkeypatch):
    install(monkeypatch, free=3 << 30, total=16 << 30)
    info = device_info()
    assert info is not None
    assert info["name"] == "Fake GPU" and info["total_bytes"] == 16 << 30 and info["free_bytes"] == 3 << 30
    assert info["compute_capability"] == "9.0" and info["cuda_runtime_version"] == "13.0"
    assert info["cuda_driver_version"] == "13.1" and info["cupy_version"] == "0.0-fake"
    backend = cupy_backend(0)
    assert backend.mem_info() == ((3 << 30) + (1 << 20), 16 << 30)  # the pool's unused bytes count
    with pytest.raises(DeviceUnavailableError, match="does not exist"):
        cupy_backend(1)
