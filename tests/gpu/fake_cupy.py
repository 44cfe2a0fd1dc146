"""A stand-in for CuPy built on NumPy, for testing the CuPy backend's own code (staging
through pinned buffers, the cuBLAS call, the fallback, device_info) where no GPU exists.

It is not a CuPy emulator: arrays are NumPy arrays (an ndarray subclass with CuPy's
``set`` and ``data.ptr``), streams and events do nothing. Its one careful part is
``gemmEx``: it reads its operands from the raw pointers, leading dimensions and transpose
flags with cuBLAS's column-major conventions, so a wrong argument to cuBLAS gives a wrong
product here as it would on a device.
"""

from __future__ import annotations

import ctypes
import sys
import types
from typing import Any

import numpy as np

CUDA_R_32F = 0
CUDA_R_16F = 2
_CTYPES = {CUDA_R_32F: (ctypes.c_uint32, np.float32), CUDA_R_16F: (ctypes.c_uint16, np.float16)}


class FakeArray(np.ndarray):
    """A NumPy array with the two CuPy members the backend uses."""

    class _Memory:
        def __init__(self, array: np.ndarray) -> None:
            self.ptr = array.__array_interface__["data"][0]

    @property
    def data(self) -> Any:  # type: ignore[override]
        return FakeArray._Memory(self)

    def set(self, array: np.ndarray, stream: Any = None) -> None:
        assert self.flags.c_contiguous and array.dtype == self.dtype and array.shape == self.shape
        np.copyto(self, array)


def _fake(array: np.ndarray) -> FakeArray:
    return np.ascontiguousarray(array).view(FakeArray)


class _Event:
    def synchronize(self) -> None:
        return None


class _Stream:
    def __init__(self, non_blocking: bool = False) -> None:
        self.ptr = 1234

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def record(self) -> _Event:
        return _Event()


class _Device:
    def __init__(self, device_id: int = 0) -> None:
        self.id = device_id

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _Pool:
    def free_bytes(self) -> int:
        return 1 << 20


def _gemm_ex(
    handle,
    transa,
    transb,
    m,
    n,
    k,
    alpha,
    a,
    a_type,
    lda,
    b,
    b_type,
    ldb,
    beta,
    c,
    c_type,
    ldc,
    compute,
    algo,
):
    """C (m x n, column-major, ldc) = alpha op(A) op(B) + beta C, read through pointers."""
    assert compute == 68 and c_type == CUDA_R_32F

    def column_major(pointer: int, kind: int, rows: int, cols: int, ld: int) -> np.ndarray:
        c_type_, dtype = _CTYPES[kind]
        raw = (c_type_ * (ld * cols)).from_address(pointer)
        flat = np.frombuffer(raw, dtype=dtype, count=ld * cols)
        return flat.reshape(cols, ld).T[:rows].astype(np.float64)  # (rows x cols)

    op_a = column_major(a, a_type, m, k, lda) if transa == 0 else column_major(a, a_type, k, m, lda).T
    op_b = column_major(b, b_type, k, n, ldb) if transb == 0 else column_major(b, b_type, n, k, ldb).T
    alpha_value = ctypes.c_float.from_address(alpha).value
    beta_value = ctypes.c_float.from_address(beta).value
    out_raw = (ctypes.c_float * (ldc * n)).from_address(c)
    out = np.frombuffer(out_raw, dtype=np.float32, count=ldc * n).reshape(n, ldc).T  # view, (ldc x n)
    result = alpha_value * (op_a @ op_b)
    if beta_value != 0:  # as cuBLAS: with beta = 0, C is not read (it may hold NaN)
        result += beta_value * out[:m].astype(np.float64)
    out[:m] = result.astype(np.float32)


class _FakeCupy(types.ModuleType):
    """Module ``cupy``: the few CuPy-only names, and NumPy for everything else."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def install(monkeypatch: Any, *, gemm_fails: bool = False, free: int = 8 << 30, total: int = 16 << 30) -> Any:
    """Puts the fake ``cupy`` and ``cupy_backends...cublas`` into sys.modules."""
    cupy = _FakeCupy("cupy")
    cupy.__version__ = "0.0-fake"
    cupy.empty = lambda shape, dtype=np.float32: np.empty(shape, dtype=dtype).view(FakeArray)
    cupy.ascontiguousarray = _fake
    cupy.asarray = lambda array, dtype=None: _fake(np.asarray(array, dtype=dtype))
    cupy.asnumpy = lambda array, stream=None: np.array(array)
    cupy.get_default_memory_pool = _Pool
    runtime = types.SimpleNamespace(
        CUDA_R_16F=CUDA_R_16F,
        CUDA_R_32F=CUDA_R_32F,
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {
            "name": b"Fake GPU",
            "major": 9,
            "minor": 0,
            "multiProcessorCount": 132,
        },
        memGetInfo=lambda: (free, total),
        runtimeGetVersion=lambda: 13000,
        driverGetVersion=lambda: 13010,
    )
    cupy.cuda = types.SimpleNamespace(
        Device=_Device,
        Stream=_Stream,
        runtime=runtime,
        alloc_pinned_memory=lambda nbytes: bytearray(nbytes),
        device=types.SimpleNamespace(get_cublas_handle=lambda: 1),
    )
    cublas = types.ModuleType("cupy_backends.cuda.libs.cublas")
    cublas.CUBLAS_OP_N = 0
    cublas.CUBLAS_OP_T = 1
    cublas.CUBLAS_COMPUTE_32F = 68
    cublas.CUBLAS_GEMM_DEFAULT = -1
    cublas.CUBLAS_POINTER_MODE_HOST = 0
    cublas.setPointerMode = lambda handle, mode: None
    if gemm_fails:

        def broken(*args: Any) -> None:
            raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED")

        cublas.gemmEx = broken
    else:
        cublas.gemmEx = _gemm_ex
    packages = ["cupy_backends", "cupy_backends.cuda", "cupy_backends.cuda.libs"]
    for name in packages:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(sys.modules["cupy_backends.cuda.libs"], "cublas", cublas, raising=False)
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs.cublas", cublas)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return cupy
