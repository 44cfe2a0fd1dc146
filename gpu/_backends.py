"""The one seam between the GPU path's math and the array library that runs it.

:mod:`ferromem.gpu._mirror` writes all of its math (tiling, products, per-tile top-k,
merging, masks) once, against the array surface NumPy and CuPy share (``backend.xp``), so
CI runs it on NumPy. What differs between the two lives here, behind :class:`ArrayBackend`:
moving arrays to and from the device (CuPy: staged through pinned host buffers on the
store's one stream), how much memory is free, the matrix product (CuPy: cuBLAS asked for
f32 accumulation and f32 results, which ``cupy.matmul`` does not give for f16 inputs), and
the device's name and properties.

CuPy is imported only inside :func:`cupy_backend` and :func:`device_info`: importing
``ferromem`` or ``ferromem.gpu`` never imports it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ._errors import DeviceUnavailableError

__all__ = [
    "ArrayBackend",
    "NumpyBackend",
    "CupyBackend",
    "numpy_backend",
    "cupy_backend",
    "device_info",
]

#: Below this many bytes an upload is one plain copy; above it, it is staged through the
#: backend's pinned buffers in chunks of this size.
STAGING_CHUNK_BYTES = 16 * 1024 * 1024

_INSTALL_HINT = (
    "install CuPy for your CUDA major version (pip install 'ferromem[gpu]', or the "
    "cupy-cudaNNx wheel that matches the driver; docs/gpu.md)"
)


@runtime_checkable
class ArrayBackend(Protocol):
    """What :class:`~ferromem.gpu.DeviceSearch` needs from an array library and a device.

    ``xp`` is the array module (numpy or cupy); every array the search keeps is one of
    its arrays. The methods are the few things the two libraries do differently."""

    #: "numpy", or "cuda:0 NVIDIA H100 80GB HBM3".
    name: str
    #: The array module: numpy or cupy.
    xp: Any
    #: True when :meth:`matmul_t` of f16 inputs returns scores rounded to f16 (a backend
    #: that cannot write f32 results from f16 inputs); the error bound then includes it.
    f16_scores: bool
    #: True when :meth:`matmul_t` makes f32 copies of f16 inputs (scratch memory per row).
    upcasts_f16: bool

    def context(self) -> contextlib.AbstractContextManager[None]:
        """Makes the backend's device and stream current for the arrays made inside."""
        ...

    def to_device(self, host: np.ndarray) -> Any:
        """A device copy of a C-contiguous host array (never a view of it)."""
        ...

    def to_host(self, array: Any) -> np.ndarray:
        """A host copy of a device array, complete when this returns."""
        ...

    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes of the memory the backend's arrays live in. Free counts
        memory the backend's allocator holds unused, which it hands out first."""
        ...

    def matmul_t(self, a: Any, b: Any) -> Any:
        """``a @ b.T`` as float32: ``a`` (m, d), ``b`` (n, d), both f16 or both f32; the
        products of the stored values accumulated in f32 (never TF32 or f16)."""
        ...

    def synchronize(self) -> None:
        """Waits until everything queued on the backend's stream is done."""
        ...

    def close(self) -> None:
        """Releases what the backend holds (streams, pinned buffers). Idempotent."""
        ...


class NumpyBackend:
    """The host as a device: NumPy arrays, the host's memory. Always available; CI runs
    the GPU path's math on it."""

    f16_scores = False
    upcasts_f16 = True

    def __init__(self) -> None:
        self.name = "numpy"
        self.xp = np

    def context(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def to_device(self, host: np.ndarray) -> np.ndarray:
        return np.array(host, copy=True, order="C")

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)

    def mem_info(self) -> tuple[int, int]:
        return _host_memory()

    def matmul_t(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # A product of two f16 values is exact in f32, so upcasting and multiplying in f32
        # computes what a GPU's f16 x f16 -> f32 product does (up to the summation order,
        # which the error bound allows for). The upcast is of one tile, never the mirror.
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        if b.dtype != np.float32:
            b = b.astype(np.float32)
        return np.matmul(a, b.T)

    def synchronize(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return "NumpyBackend()"


def _host_memory() -> tuple[int, int]:
    """(available, total) bytes of host memory; a large figure where the OS won't say."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        available = os.sysconf("SC_AVPHYS_PAGES") * page
        if total > 0 and available >= 0:
            return int(available), int(total)
    except (ValueError, OSError, AttributeError):
        pass
    unknown = 1 << 50
    return unknown, unknown


def numpy_backend() -> NumpyBackend:
    """The NumPy backend (always available)."""
    return NumpyBackend()


class CupyBackend:
    """One CUDA device through CuPy, with one stream of its own (one backend per store)
    and two pinned host buffers through which uploads are staged. Made by
    :func:`cupy_backend`."""

    def __init__(self, cupy: Any, device_id: int) -> None:
        self.xp = cupy
        self._cp = cupy
        self.device_id = device_id
        self._device = cupy.cuda.Device(device_id)
        with self._device:
            self._stream = cupy.cuda.Stream(non_blocking=True)
        props = cupy.cuda.runtime.getDeviceProperties(device_id)
        device_name = props["name"]
        if isinstance(device_name, bytes):
            device_name = device_name.decode(errors="replace")
        self.name = f"cuda:{device_id} {device_name}"
        self._pinned: list[tuple[Any, np.ndarray]] = []
        self._closed = False
        self.gemm = "cublasGemmEx (f32 accumulation, f32 results)"
        self.f16_scores = False
        self.upcasts_f16 = False
        self._gemm_ex: Any = None
        self._check_gemm_ex()

    # -- the seam --------------------------------------------------------------------

    def context(self) -> contextlib.AbstractContextManager[None]:
        return self._entered()

    @contextlib.contextmanager
    def _entered(self) -> Iterator[None]:
        with self._device, self._stream:
            yield

    def to_device(self, host: np.ndarray) -> Any:
        cp = self._cp
        host = np.ascontiguousarray(host)
        with self._device, self._stream:
            out = cp.empty(host.shape, dtype=host.dtype)
            if host.nbytes <= STAGING_CHUNK_BYTES:
                out.set(host, stream=self._stream)
                self._stream.synchronize()  # the host array may change after we return
                return out
            self._staged_upload(host.reshape(-1).view(np.uint8), out.reshape(-1).view(cp.uint8))
            return out

    def _staged_upload(self, source: np.ndarray, target: Any) -> None:
        """Copies ``source`` (host bytes) to ``target`` (device bytes) through two pinned
        buffers: while the device copies one chunk, the host fills the other."""
        buffers = self._pinned_buffers()
        chunk = STAGING_CHUNK_BYTES
        pending: list[Any] = [None, None]
        for number, start in enumerate(range(0, source.size, chunk)):
            stop = min(start + chunk, source.size)
            slot = number % 2
            _, view = buffers[slot]
            if pending[slot] is not None:
                pending[slot].synchronize()  # its previous chunk has left the buffer
            np.copyto(view[: stop - start], source[start:stop])
            target[start:stop].set(view[: stop - start], stream=self._stream)
            pending[slot] = self._stream.record()
        self._stream.synchronize()

    def _pinned_buffers(self) -> list[tuple[Any, np.ndarray]]:
        if not self._pinned:
            for _ in range(2):
                memory = self._cp.cuda.alloc_pinned_memory(STAGING_CHUNK_BYTES)
                view = np.frombuffer(memory, dtype=np.uint8, count=STAGING_CHUNK_BYTES)
                self._pinned.append((memory, view))
        return self._pinned

    def to_host(self, array: Any) -> np.ndarray:
        with self._device, self._stream:
            host = self._cp.asnumpy(array, stream=self._stream)
            self._stream.synchronize()
        return host

    def mem_info(self) -> tuple[int, int]:
        cp = self._cp
        with self._device:
            free, total = cp.cuda.runtime.memGetInfo()
            pooled = cp.get_default_memory_pool().free_bytes()
        return int(free) + int(pooled), int(total)

    def matmul_t(self, a: Any, b: Any) -> Any:
        cp = self._cp
        if self._gemm_ex is None:
            # cupy.matmul: f32 accumulation, but f16 results for f16 inputs (f16_scores).
            return cp.matmul(a, b.T).astype(cp.float32, copy=False)
        return self._gemm_ex(a, b)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._stream.synchronize()
        self._pinned.clear()

    def __repr__(self) -> str:
        return f"CupyBackend({self.name!r})"

    # -- cuBLAS ----------------------------------------------------------------------

    def _make_gemm_ex(self) -> Any:
        """``a @ b.T`` through cublasGemmEx: inputs f16 or f32, CUBLAS_COMPUTE_32F (f32
        accumulation; never TF32, whatever CUPY_TF32 says), f32 results."""
        cp = self._cp
        from cupy_backends.cuda.libs import cublas

        runtime = cp.cuda.runtime
        cuda_types = {np.dtype(np.float16): runtime.CUDA_R_16F, np.dtype(np.float32): runtime.CUDA_R_32F}
        one = np.ones(1, dtype=np.float32)
        zero = np.zeros(1, dtype=np.float32)
        compute = cublas.CUBLAS_COMPUTE_32F
        algo = cublas.CUBLAS_GEMM_DEFAULT

        def gemm_ex(a: Any, b: Any) -> Any:
            a = cp.ascontiguousarray(a)
            b = cp.ascontiguousarray(b)
            m, d = a.shape
            n = b.shape[0]
            out = cp.empty((m, n), dtype=cp.float32)
            if m == 0 or n == 0:
                return out
            # cuBLAS is column-major. Row-major out (m, n) is column-major out^T (n, m)
            # = B (n, d) x A^T (d, m): B row-major is column-major (d, n), used transposed;
            # A row-major is column-major (d, m), used as is.
            handle = cp.cuda.device.get_cublas_handle()  # the current device's
            cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
            cublas.gemmEx(
                handle,
                cublas.CUBLAS_OP_T,
                cublas.CUBLAS_OP_N,
                n,
                m,
                d,
                one.ctypes.data,
                b.data.ptr,
                cuda_types[b.dtype],
                d,
                a.data.ptr,
                cuda_types[a.dtype],
                d,
                zero.ctypes.data,
                out.data.ptr,
                runtime.CUDA_R_32F,
                n,
                compute,
                algo,
            )
            return out

        return gemm_ex

    def _check_gemm_ex(self) -> None:
        """Uses cublasGemmEx if it computes a small product right; otherwise falls back
        to cupy.matmul (f16 results for f16 inputs, which the error bound then counts).
        The check is cheap and guards against a CuPy whose cuBLAS binding differs."""
        cp = self._cp
        rng = np.random.default_rng(7)
        a = rng.standard_normal((5, 67)).astype(np.float32)
        b = rng.standard_normal((9, 67)).astype(np.float32)
        expected = a.astype(np.float64) @ b.astype(np.float64).T
        try:
            gemm_ex = self._make_gemm_ex()
            with self._device, self._stream:
                for dtype in (np.float16, np.float32):
                    got = cp.asnumpy(gemm_ex(cp.asarray(a.astype(dtype)), cp.asarray(b.astype(dtype))))
                    self._stream.synchronize()
                    exact = a.astype(dtype).astype(np.float64) @ b.astype(dtype).astype(np.float64).T
                    if got.dtype != np.float32 or got.shape != expected.shape:
                        raise RuntimeError(f"cublasGemmEx gave {got.dtype} {got.shape}")
                    if not np.allclose(got, exact, rtol=1e-5, atol=1e-5):
                        raise RuntimeError("cublasGemmEx gave a wrong product")
        except Exception as exc:  # any failure: the portable product serves instead
            if os.environ.get("CUPY_TF32", "0") not in ("", "0"):
                raise DeviceUnavailableError(
                    f"cublasGemmEx is unusable on {self.name} ({exc}) and CUPY_TF32 is set, "
                    "so cupy.matmul would score f32 mirrors in TF32 (10-bit mantissas), "
                    "outside the GPU path's error bound; unset CUPY_TF32"
                ) from exc
            self._gemm_ex = None
            self.f16_scores = True
            self.gemm = f"cupy.matmul (f16 results for f16 inputs; cublasGemmEx failed: {exc})"
            return
        self._gemm_ex = gemm_ex


def cupy_backend(device_id: int = 0) -> CupyBackend:
    """A CuPy backend on CUDA device ``device_id``, with a stream of its own.

    Raises :class:`DeviceUnavailableError` saying why when CuPy is not installed, no CUDA
    device is visible, or the driver or runtime fails."""
    if not isinstance(device_id, int) or isinstance(device_id, bool) or device_id < 0:
        raise DeviceUnavailableError(f"device_id must be a non-negative int, got {device_id!r}")
    cupy = _import_cupy()
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise DeviceUnavailableError(
            f"the CUDA driver or runtime failed ({type(exc).__name__}: {exc}); check that "
            "nvidia-smi works and that the CuPy wheel matches the driver's CUDA major version"
        ) from exc
    if count == 0:
        raise DeviceUnavailableError("no CUDA device is visible (CUDA_VISIBLE_DEVICES, driver)")
    if device_id >= count:
        raise DeviceUnavailableError(f"device {device_id} does not exist: {count} CUDA device(s) visible")
    try:
        return CupyBackend(cupy, device_id)
    except DeviceUnavailableError:
        raise
    except Exception as exc:
        raise DeviceUnavailableError(
            f"CUDA device {device_id} could not be used ({type(exc).__name__}: {exc})"
        ) from exc


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise DeviceUnavailableError(f"CuPy is not installed ({exc}); {_INSTALL_HINT}") from exc
    except Exception as exc:  # a broken install can raise anything at import
        raise DeviceUnavailableError(
            f"CuPy failed to import ({type(exc).__name__}: {exc}); {_INSTALL_HINT}"
        ) from exc
    return cupy


def device_info(device_id: int = 0) -> dict[str, Any] | None:
    """What the GPU path would run on: None when there is no usable device (no CuPy, no
    CUDA device, a failing driver); else its name, total and free memory in bytes,
    compute capability, multiprocessor count, and the CuPy, CUDA runtime and driver
    versions. Never raises."""
    try:
        if "cupy" not in sys.modules:
            try:
                import cupy  # noqa: F401
            except Exception:
                return None
        cupy = sys.modules["cupy"]
        runtime = cupy.cuda.runtime
        if runtime.getDeviceCount() <= device_id:
            return None
        props = runtime.getDeviceProperties(device_id)
        name = props["name"]
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        with cupy.cuda.Device(device_id):
            free, total = runtime.memGetInfo()
        return {
            "device_id": device_id,
            "name": name,
            "total_bytes": int(total),
            "free_bytes": int(free),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "multiprocessors": int(props.get("multiProcessorCount", 0)),
            "cupy_version": str(cupy.__version__),
            "cuda_runtime_version": _cuda_version(runtime.runtimeGetVersion()),
            "cuda_driver_version": _cuda_version(runtime.driverGetVersion()),
        }
    except Exception:
        return None


def _cuda_version(encoded: int) -> str:
    """12040 -> "12.4"."""
    return f"{encoded // 1000}.{(encoded % 1000) // 10}"
