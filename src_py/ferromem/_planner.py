"""The planner's Python side: the device policy (``open(device=...)``, ``FERROMEM_DEVICE``),
finding and attaching a GPU (``ferromem.gpu``, imported only when CuPy is installed), and
the calibration cache on disk.

The planner itself is in the Rust core (``planner.rs``): per exact search it prices the CPU
scan, the CPU batch kernel and the device from constants measured on this machine. The CPU
constants come from ``_core.calibrate_cpu`` (about a quarter of a second, at the first
search that has a choice to make), the device's from timing its candidate search here.
Both are cached in one JSON file keyed by the hardware and software that measured them, so
a process measures once per machine and version.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from .exceptions import DeviceUnavailableError, InvalidInputError

POLICIES = ("auto", "cpu", "gpu")
DEVICE_ENV = "FERROMEM_DEVICE"
CACHE_ENV = "FERROMEM_CACHE_DIR"
CACHE_FILE = "ferromem-calibration.json"
# Marks the cache file as ours: a file of that name without it is never overwritten.
CACHE_FORMAT = "ferromem-calibration/1"


def check_policy(value: Any, where: str = "device") -> str:
    if value not in POLICIES:
        raise InvalidInputError(f"{where} must be 'auto', 'cpu' or 'gpu', not {value!r}")
    return str(value)


def default_policy() -> str:
    """The policy of ``open(device=None)``: ``FERROMEM_DEVICE``, else "auto"."""
    value = os.environ.get(DEVICE_ENV)
    if value is None or value == "":
        return "auto"
    return check_policy(value.strip().lower(), f"the environment variable {DEVICE_ENV}")


def cache_dir() -> Path | None:
    """Where calibrations are kept: ``FERROMEM_CACHE_DIR`` ("off": nowhere), else the
    user's cache directory."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "none") else Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ferromem"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Model", "CPU part")):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware_key(*parts: str) -> str:
    """A key for measurements: the CPU (model, cores, SIMD level), the software (ferromem,
    Python) and ``parts`` (precision, dimension, device)."""
    from . import __version__, _core

    fields = [
        platform.machine(),
        _cpu_model(),
        str(os.cpu_count()),
        _core.simd_isa(),
        __version__,
        platform.python_version(),
        *parts,
    ]
    digest = hashlib.sha256("\x1f".join(fields).encode()).hexdigest()[:16]
    return f"{'/'.join(parts)}@{digest}"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"format": CACHE_FORMAT, "entries": {}}
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("format") != CACHE_FORMAT
        or not isinstance(data.get("entries"), dict)
    ):
        return None
    return data


def cached(key: str) -> dict[str, float] | None:
    folder = cache_dir()
    if folder is None:
        return None
    data = _load(folder / CACHE_FILE)
    entry = (data or {}).get("entries", {}).get(key)
    return entry if isinstance(entry, dict) else None


def remember(key: str, costs: dict[str, float]) -> None:
    """Adds a calibration to the cache file (written whole to a temporary file, then renamed
    over it). A cache that cannot be written is skipped: it only saves time."""
    folder = cache_dir()
    if folder is None:
        return
    path = folder / CACHE_FILE
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        data = _load(path)
        if data is None:  # not ours, or unreadable: leave it alone
            return
        data["entries"][key] = {k: float(v) for k, v in costs.items()}
        fd, tmp = tempfile.mkstemp(prefix=".ferromem-calibration-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def table() -> dict[str, dict[str, float]]:
    """Every calibration in the cache (for ``ferromem doctor``)."""
    folder = cache_dir()
    data = _load(folder / CACHE_FILE) if folder is not None else None
    return dict((data or {}).get("entries", {}))


def _dim_bucket(dim: int) -> int:
    return 1 << max(0, int(dim) - 1).bit_length()


def ensure_cpu_costs(engine: Any, precision: str, dim: int) -> dict[str, float]:
    """Gives the engine's planner CPU constants for this precision and dimension: from the
    cache, else measured now (and cached)."""
    from . import _core

    bucket = _dim_bucket(dim)
    key = hardware_key("cpu", precision, f"d{bucket}")
    costs = cached(key)
    if costs is None:
        costs = dict(_core.calibrate_cpu(precision, bucket))
        remember(key, costs)
    engine.set_cpu_costs(costs)
    return costs


def cupy_installed() -> bool:
    return importlib.util.find_spec("cupy") is not None


def find_device(precision: str) -> Any:
    """A ``ferromem.gpu.DeviceSearch`` on the first CUDA device. Raises
    DeviceUnavailableError saying why there is none (CuPy missing, no device, a driver
    error, or a precision a device does not mirror)."""
    if precision == "int8":
        raise DeviceUnavailableError("a device does not mirror int8 rows (use precision 'f32' or 'f16')")
    if not cupy_installed():
        raise DeviceUnavailableError(
            "CuPy is not installed: pip install 'ferromem[gpu]' (see docs/gpu.md for the CUDA versions)"
        )
    from . import gpu

    backend = gpu.cupy_backend()
    return gpu.DeviceSearch(backend, precision="f16")


# Device calibration sizes: rows of synthetic unit vectors, and batch sizes.
_DEVICE_ROWS = (1 << 14, 1 << 17)
_DEVICE_BATCHES = (1, 16, 256)


def calibrate_device(make_device: Any, dim: int) -> dict[str, float]:
    """Fits the planner's device constants (ns; see ``planner.rs``) by timing a fresh
    device search (``make_device()``) on synthetic unit rows: candidate searches at two
    sizes and three batch sizes, and one mirror update."""
    import numpy as np

    rng = np.random.default_rng(0)
    points: list[tuple[list[float], float]] = []
    sync_value = 0.0
    for rows in _DEVICE_ROWS:
        device = make_device()
        try:
            data = rng.standard_normal((rows, dim), dtype=np.float32)
            data /= np.linalg.norm(data, axis=1, keepdims=True)
            slots = np.arange(rows, dtype=np.uint32)
            t = time.perf_counter_ns()
            device.apply(dim, rows, slots, data, np.empty(0, np.uint32), True)
            sync_value = max(sync_value, (time.perf_counter_ns() - t) / (rows * dim))
            for nq in _DEVICE_BATCHES:
                queries = rng.standard_normal((nq, dim), dtype=np.float32)
                queries /= np.linalg.norm(queries, axis=1, keepdims=True)
                device.top_candidates(queries, 42, None)  # warm-up (kernels, pools)
                best = min(_timed(lambda: device.top_candidates(queries, 42, None)) for _ in range(3))
                points.append(([1.0, nq * dim, nq * rows * dim], best))
        finally:
            device.close()
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    w = 1.0 / y  # relative error: small and large timings count alike
    beta, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
    call, query_value, value = (max(float(b), 0.0) for b in beta)
    return {"call": call, "query_value": query_value, "value": max(value, 1e-7), "sync_value": sync_value}


def _timed(f: Any) -> float:
    t = time.perf_counter_ns()
    f()
    return float(time.perf_counter_ns() - t)


def attach(engine: Any, policy: str, precision: str, dim: int | None) -> str | None:
    """Attaches the GPU to the engine when the policy allows one and a device exists, with
    its calibrated costs. Returns why no device is attached (None when one is); raises
    DeviceUnavailableError under policy "gpu"."""
    if policy == "cpu":
        return "device policy 'cpu'"
    try:
        device = find_device(precision)
    except DeviceUnavailableError as e:
        if policy == "gpu":
            raise
        return str(e)
    costs = None
    if dim:
        key = hardware_key("device", device.name, precision, f"d{_dim_bucket(dim)}")
        costs = cached(key)
        if costs is None:
            from . import gpu

            costs = calibrate_device(
                lambda: gpu.DeviceSearch(gpu.cupy_backend(), precision="f16"), _dim_bucket(dim)
            )
            remember(key, costs)
        ensure_cpu_costs(engine, precision, dim)
    engine.attach_device(device, costs)
    return None
