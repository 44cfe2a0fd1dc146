"""On a CUDA device (marked ``gpu``; skipped with the reason without CuPy and a device):
the CuPy backend's answers equal the NumPy backend's, slot for slot wherever the scores
are separated by more than twice the error bound (closer scores may legitimately swap:
the engine re-scores candidates exactly)."""

from __future__ import annotations

import numpy as np
import pytest
from ferromem.gpu import DeviceSearch, cupy_backend, numpy_backend
from gpu_model import unit_rows

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("cupy_ready")]


def both(precision: str, **options) -> tuple[DeviceSearch, DeviceSearch]:
    return (
        DeviceSearch(numpy_backend(), precision=precision, **options),
        DeviceSearch(cupy_backend(0), precision=precision, **options),
    )


def assert_same_answers(host, device, queries, width, candidates=None):
    h_slots, h_scores = host.top_candidates(queries, width, candidates)
    d_slots, d_scores = device.top_candidates(queries, width, candidates)
    bound = host.error_bound(queries.shape[1])
    finite = np.isfinite(h_scores)
    assert (finite == np.isfinite(d_scores)).all()
    np.testing.assert_allclose(d_scores[finite], h_scores[finite], rtol=0, atol=2e-5)
    compared = 0
    for q in range(queries.shape[0]):
        scores = h_scores[q][finite[q]]
        # The last rank also competes with what was left out, so it is not compared; a
        # rank separated from every other returned score by more than 2 * bound is.
        for i in range(scores.size - 1):
            if np.abs(np.delete(scores, i) - scores[i]).min() > 2 * bound:
                assert h_slots[q, i] == d_slots[q, i], (q, i)
                compared += 1
    assert compared > 0 or width == 1


@pytest.mark.parametrize("precision", ["f16", "f32"])
def test_cupy_equals_numpy(precision):
    rng = np.random.default_rng(3)
    host, device = both(precision, workspace_bytes=4 << 20, query_batch=128)
    n, dim = 20_000, 384
    rows = unit_rows(rng, n, dim)
    freed = rng.choice(n, size=500, replace=False).astype(np.uint32)
    for search in (host, device):
        search.apply(dim, n, np.arange(n, dtype=np.uint32), rows, np.zeros(0, np.uint32), False)
        search.apply(dim, n, np.zeros(0, np.uint32), np.zeros((0, dim), np.float32), freed, False)
    queries = np.concatenate([rows[:50], unit_rows(rng, 250, dim)])
    for width in (1, 10, 64):
        assert_same_answers(host, device, queries, width)
    chosen = np.sort(rng.choice(n, size=3_000, replace=False)).astype(np.uint32)
    assert_same_answers(host, device, queries, 10, chosen)


def test_cupy_backend_reports_itself():
    backend = cupy_backend(0)
    assert backend.name.startswith("cuda:0 ")
    free, total = backend.mem_info()
    assert 0 < free <= total
    assert "GemmEx" in backend.gemm or "cupy.matmul" in backend.gemm
    backend.close()
    from ferromem.gpu import device_info

    info = device_info()
    assert info is not None and info["total_bytes"] > 0 and info["cupy_version"]


def test_large_upload_is_staged_in_chunks():
    # More than one staging chunk (16 MiB) of rows in one apply.
    rng = np.random.default_rng(4)
    host, device = both("f16")
    n, dim = 12_000, 768  # 36.9 MB of f32 rows
    rows = unit_rows(rng, n, dim)
    for search in (host, device):
        search.apply(dim, n, np.arange(n, dtype=np.uint32), rows, np.zeros(0, np.uint32), False)
    stored = device.backend.to_host(device._mirror)[:n]
    np.testing.assert_array_equal(stored, rows.astype(np.float16))
    assert_same_answers(host, device, rows[:20], 10)
