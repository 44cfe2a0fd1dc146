"""The device check: one script that a session lent a GPU machine runs in one call.

    python gpu/device_check.py --out DIR            # on the GPU machine, under 8 minutes
    python gpu/device_check.py --out DIR --dry-run  # anywhere: tiny sizes, NumPy if no CuPy

It needs only Python, NumPy and pytest; CuPy and PyTorch are used where present. ferromem
need not be installed or built: when ``import ferromem.gpu`` fails, the script stages the
tree's pure-Python package (src_py/ferromem with gpu/ as ferromem.gpu) in a temporary
folder and imports that, with the native modules of the stable-ABI wheel in gpu/dist when
one was carried (gpu/build_device_wheel.sh builds it); without one the native engine is
absent, which the report says.

Sections, each time-boxed; a failure or a timeout is recorded and the next one runs:

1. ``environment``: nvidia-smi, CuPy, PyTorch, compilers (gcc, cc, nvcc), Python headers,
   whether the native engine imports, the device (``ferromem.gpu.device_info``).
2. ``tests``: ``pytest -m gpu tests/gpu -q`` in a subprocess.
3. ``load``: N x dim random unit rows applied to a DeviceSearch (f16) in chunks: rows/s.
4. ``batch``: exact top-10 over N x dim, batch 256: DeviceSearch.top_candidates against
   torch.matmul + torch.topk on the same device and data (the ratio), plus a breakdown of
   the device time (products alone, selection alone) and a workspace sweep.
5. ``one_query``: one query over N x dim including the transfers, in ms.
6. ``crossover``: per batch size, device vs CPU, at N = 100k and 1M: the CPU is the
   store's own CPU path where the native engine imports, else NumPy f32 matmul +
   argpartition on all cores as a stand-in (the report says which).

Results go to DIR/device_check.json (all numbers) and DIR/device_check.md (tables); the
JSON is rewritten after every section, so a run cut short still reports what it did.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCHEMA = 1

FULL: dict[str, Any] = {
    "n_large": 1_000_000,
    "n_small": 100_000,
    "dim": 1536,
    "batch": 256,
    "k": 10,
    "load_chunk": 100_000,
    "batches": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
    "workspaces_mib": [64, 256, 1024, 4096],
    "reps": 5,
    "budget_s": 450,
    "caps_s": {
        "environment": 30,
        "tests": 150,
        "load": 90,
        "batch": 60,
        "one_query": 20,
        "crossover": 150,
    },
}
DRY: dict[str, Any] = {
    "n_large": 4_000,
    "n_small": 1_000,
    "dim": 64,
    "batch": 16,
    "k": 10,
    "load_chunk": 1_500,
    "batches": [1, 4, 16],
    "workspaces_mib": [1, 4],
    "reps": 2,
    "budget_s": 120,
    "caps_s": {
        "environment": 20,
        "tests": 60,
        "load": 20,
        "batch": 20,
        "one_query": 10,
        "crossover": 30,
    },
}


class SectionTimeout(Exception):
    """A section ran past its time box."""


class Skip(Exception):
    """A section cannot run here (what it needs is absent); the message says why."""


def log(message: str) -> None:
    print(f"[device_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------- imports


def import_ferromem_gpu() -> tuple[Any, str]:
    """ferromem.gpu, installed or staged from the tree; and how it was found."""
    try:
        import ferromem.gpu as gpu

        return gpu, f"installed ({Path(gpu.__file__).parent})"
    except ImportError as exc:
        first_error = exc
    stage = Path(tempfile.mkdtemp(prefix="ferromem-stage-"))
    package = stage / "ferromem"
    # Native modules built in the tree are for the interpreter that built them: left out.
    shutil.copytree(
        REPO / "src_py" / "ferromem", package, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd")
    )
    shutil.copytree(REPO / "gpu", package / "gpu", ignore=shutil.ignore_patterns("__pycache__", "dist"))
    native = _native_modules_from_wheel(package)
    sys.path.insert(0, str(stage))
    _forget_ferromem()
    try:
        import ferromem.gpu as gpu
    except ImportError as exc:
        # The package needs its native data plane (ferromem._buffers) to import at all.
        # The GPU path needs none of it: a minimal package (the errors and ferromem.gpu)
        # lets the GPU tests and benchmarks run; the report says so.
        (package / "__init__.py").write_text(MINIMAL_PACKAGE)
        _forget_ferromem()
        import ferromem.gpu as gpu

        native += f"; ferromem itself does not import here ({exc}), so a minimal package stands in"
    return gpu, f"staged from the tree at {stage}{native} (installed import failed: {first_error})"


#: The __init__ of the stand-in package staged when ferromem cannot import (no native
#: modules): what ferromem.gpu and the GPU tests need, nothing else.
MINIMAL_PACKAGE = (
    '"""A stand-in staged by gpu/device_check.py: ferromem without its native modules."""\n'
    "from .exceptions import *  # noqa: F403\n"
)


def _forget_ferromem() -> None:
    for name in [m for m in sys.modules if m == "ferromem" or m.startswith("ferromem.")]:
        del sys.modules[name]


def _native_modules_from_wheel(package: Path) -> str:
    """Copies the native modules (ferromem/_core, ferromem/_buffers) of the stable-ABI
    wheel that gpu/build_device_wheel.sh leaves in gpu/dist, when one was carried, into the
    staged package: the tree's Python with the wheel's native engine."""
    wheels = sorted((REPO / "gpu" / "dist").glob("ferromem-*.whl"))
    if not wheels:
        return ", no native modules (no wheel in gpu/dist)"
    import zipfile

    copied = []
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for member in wheel.namelist():
            parts = member.split("/")
            if len(parts) == 2 and parts[0] == "ferromem" and parts[1].endswith((".so", ".pyd")):
                (package / parts[1]).write_bytes(wheel.read(member))
                copied.append(parts[1])
    return f", native modules {copied} from {wheels[-1].name}"


def native_status() -> str:
    try:
        from ferromem import _core
    except ImportError as exc:
        return f"absent ({exc})"
    return "present" if hasattr(_core, "Engine") else "partial (no Engine)"


# ---------------------------------------------------------------------- the runner


class Report:
    def __init__(self, out: Path, dry_run: bool, budget_s: float) -> None:
        self.out = out
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.data: dict[str, Any] = {
            "schema": SCHEMA,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "finished": None,
            "dry_run": dry_run,
            "budget_s": budget_s,
            "sections": {},
            "environment": {},
            "tests": {},
            "benchmarks": {},
            "targets": {},
        }

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cap_s: float, body: Callable[[float], Any]) -> Any:
        """Runs a section with a time box of min(cap, what is left), recording its fate."""
        box = min(cap_s, self.remaining() - 5)
        record: dict[str, Any] = {"status": "ok", "seconds": 0.0, "time_box_s": round(max(box, 0), 1)}
        self.data["sections"][name] = record
        if box <= 1:
            record.update(status="skipped", reason="the run's time budget is spent")
            log(f"{name}: skipped (no time left)")
            self.write()
            return None
        log(f"{name}: start (time box {box:.0f} s)")
        start = time.monotonic()
        result = None
        try:
            with alarm(box):
                result = body(start + box)
        except Skip as exc:
            record.update(status="skipped", reason=str(exc))
        except SectionTimeout:
            record.update(status="timed_out", reason=f"ran past its time box of {box:.0f} s")
        except Exception as exc:
            record.update(
                status="failed",
                reason=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(limit=8),
            )
        record["seconds"] = round(time.monotonic() - start, 2)
        log(f"{name}: {record['status']} in {record['seconds']} s {record.get('reason', '')}")
        self.write()
        return result

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "device_check.json").write_text(json.dumps(self.data, indent=2, default=_jsonable))
        (self.out / "device_check.md").write_text(markdown(self.data))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raises SectionTimeout in the main thread after ``seconds`` (POSIX; elsewhere the
    sections' own deadlines are the only limit)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_command(command: list[str], timeout: float = 20) -> dict[str, Any]:
    """Runs a command; its exit status and the start of its output, or why it failed."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return {"found": False}
    except subprocess.TimeoutExpired:
        return {"found": True, "timed_out": True}
    text = (done.stdout + done.stderr).strip()
    return {"found": True, "rc": done.returncode, "output": text[:2000]}


# ---------------------------------------------------------------------- sections


def section_environment(report: Report, gpu: Any, how: str) -> None:
    env = report.data["environment"]
    env["python"] = sys.version.split()[0]
    env["platform"] = platform.platform()
    env["cpu_count"] = os.cpu_count()
    env["numpy"] = np.__version__
    env["ferromem_gpu"] = how
    env["native_engine"] = native_status()
    include = sysconfig.get_paths().get("include", "")
    env["python_headers"] = {
        "include": include,
        "Python.h": bool(include) and (Path(include) / "Python.h").is_file(),
    }
    env["nvidia_smi"] = run_command(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv,noheader"]
    )
    for tool in ("gcc", "cc", "nvcc", "cargo", "rustc"):
        env[tool] = run_command([tool, "--version"]) | {"path": shutil.which(tool)}
    for module in ("cupy", "torch", "pytest"):
        try:
            imported = __import__(module)
            env[module] = getattr(imported, "__version__", "present")
        except Exception as exc:
            env[module] = f"absent ({type(exc).__name__}: {exc})"
    try:
        import torch

        env["torch_cuda"] = {
            "available": bool(torch.cuda.is_available()),
            "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }
    except Exception:
        pass
    env["device_info"] = gpu.device_info()
    for key in ("nvidia_smi", "cupy", "torch", "native_engine", "device_info"):
        log(f"environment: {key} = {env[key]}")


def section_tests(report: Report, deadline: float, stage_path: str | None) -> None:
    env = dict(os.environ)
    if stage_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (stage_path, env.get("PYTHONPATH")) if p)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "tests/gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        "-rs",
    ]
    timeout = max(5.0, deadline - time.monotonic() - 3)
    record: dict[str, Any] = {"command": " ".join(command[1:]), "native_engine": native_status()}
    report.data["tests"] = record
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        record["timed_out"] = True
        record["output_tail"] = ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or ""))[-4000:]  # fmt: skip
        raise SectionTimeout() from exc
    output = done.stdout + done.stderr
    record["rc"] = done.returncode
    record["summary"] = next((line for line in reversed(output.splitlines()) if " in " in line), "")
    record["output_tail"] = output[-4000:]
    log(f"tests: rc={done.returncode} {record['summary']}")
    if done.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest exited {done.returncode}: {record['summary']}")


class Bench:
    """The benchmark state shared by the sections: the device search, the host rows."""

    def __init__(self, gpu: Any, sizes: dict[str, Any], dry_run: bool) -> None:
        self.gpu = gpu
        self.sizes = sizes
        self.dry_run = dry_run
        self.search: Any = None
        self.rows: Any = None  # np.ndarray once the load section ran
        self.backend_kind = ""
        self.rng = np.random.default_rng(20251124)

    def make_backend(self) -> Any:
        try:
            backend = self.gpu.cupy_backend(0)
            self.backend_kind = "cupy"
            return backend
        except self.gpu.DeviceUnavailableError as exc:
            if not self.dry_run:
                raise Skip(f"no CUDA device: {exc}") from exc
            self.backend_kind = "numpy (dry run: no CUDA device)"
            return self.gpu.numpy_backend()

    def synchronize(self) -> None:
        if self.search is not None:
            self.search.backend.synchronize()

    def unit(self, n: int) -> np.ndarray:
        rows = self.rng.standard_normal((n, self.sizes["dim"]), dtype=np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        return rows


def timed(call: Callable[[], Any], reps: int, deadline: float, sync: Callable[[], None]) -> dict[str, Any]:
    """Median, min and count of wall times of ``call`` after one warm-up, within deadline."""
    call()
    sync()
    times: list[float] = []
    while len(times) < reps and (not times or time.monotonic() + times[-1] < deadline):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "reps": len(times)}


def section_load(report: Report, bench: Bench, deadline: float) -> None:
    sizes = bench.sizes
    n, dim, chunk = sizes["n_large"], sizes["dim"], sizes["load_chunk"]
    backend = bench.make_backend()
    bench.search = bench.gpu.DeviceSearch(backend, precision="f16")
    bench.rows = np.empty((n, dim), dtype=np.float32)
    generate = upload = 0.0
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        t0 = time.perf_counter()
        bench.rows[start:stop] = bench.unit(stop - start)
        t1 = time.perf_counter()
        bench.search.apply(
            dim,
            stop,
            np.arange(start, stop, dtype=np.uint32),
            bench.rows[start:stop],
            np.zeros(0, np.uint32),
            False,
        )
        bench.synchronize()
        generate += t1 - t0
        upload += time.perf_counter() - t1
    patch = bench.rows[:1000]
    small = timed(
        lambda: bench.search.apply(
            dim, n, np.arange(1000, dtype=np.uint32), patch, np.zeros(0, np.uint32), False
        ),
        sizes["reps"],
        deadline,
        bench.synchronize,
    )
    result = {
        "backend": bench.backend_kind,
        "device": bench.search.name,
        "gemm": getattr(backend, "gemm", "numpy.matmul (f32)"),
        "n": n,
        "dim": dim,
        "precision": "f16",
        "mirror_bytes": bench.search.memory_bytes(),
        "capacity": bench.search.capacity(),
        "apply_s": round(upload, 3),
        "apply_rows_per_s": round(n / upload) if upload else None,
        "host_generate_s": round(generate, 3),
        "patch_1000_rows": small,
        "error_bound": bench.search.error_bound(dim),
    }
    report.data["benchmarks"]["load"] = result
    log(f"load: {result}")


def _need_search(bench: Bench) -> None:
    if bench.search is None or bench.rows is None:
        raise Skip("the load section did not complete, so there is no mirror to search")


def section_batch(report: Report, bench: Bench, deadline: float) -> None:
    _need_search(bench)
    sizes = bench.sizes
    k, nq, dim = sizes["k"], sizes["batch"], sizes["dim"]
    search = bench.search
    queries = bench.unit(nq)
    sync = bench.synchronize
    result: dict[str, Any] = {"n": sizes["n_large"], "dim": dim, "batch": nq, "k": k}
    report.data["benchmarks"]["batch"] = result
    result["device_search"] = timed(lambda: search.top_candidates(queries, k), sizes["reps"], deadline, sync)
    log(f"batch: DeviceSearch {result['device_search']}")
    result["torch"] = torch_baseline(bench, queries, k, deadline)
    if "median_ms" in result["torch"]:
        result["ratio_vs_torch"] = result["device_search"]["median_ms"] / result["torch"]["median_ms"]
        log(f"batch: torch {result['torch']} ratio {result['ratio_vs_torch']:.2f}")
    result["breakdown"] = breakdown(bench, queries, k, deadline)
    result["workspace_sweep"] = workspace_sweep(bench, queries, k, deadline)
    if not bench.dry_run:
        report.data["targets"]["batch256_within_1.2x_of_torch"] = (
            result.get("ratio_vs_torch") is not None and result["ratio_vs_torch"] <= 1.2
        )


def torch_baseline(bench: Bench, queries: np.ndarray, k: int, deadline: float) -> dict[str, Any]:
    try:
        import torch
    except Exception as exc:
        return {"skipped": f"PyTorch absent ({type(exc).__name__}: {exc})"}
    if not torch.cuda.is_available() or bench.backend_kind != "cupy":
        return {"skipped": "no CUDA device for PyTorch"}
    mirror = bench.search._mirror
    n = bench.sizes["n_large"]
    try:
        rows = torch.from_dlpack(mirror[:n])
        how = "the DeviceSearch mirror itself (DLPack, zero copy)"
    except Exception as exc:
        rows = torch.as_tensor(bench.rows[:n], device="cuda").half()
        how = f"a copy of the same rows (DLPack failed: {exc})"
    q_host = torch.from_numpy(queries)

    def product_topk() -> Any:
        q = q_host.to("cuda", non_blocking=False).half()
        scores = torch.matmul(q, rows.T)
        values, indices = torch.topk(scores, k, dim=1)
        return values.cpu(), indices.cpu()

    def product_topk_device_only() -> Any:
        return torch.topk(torch.matmul(q_device, rows.T), k, dim=1)

    q_device = q_host.to("cuda").half()
    sync = torch.cuda.synchronize
    with_transfers = timed(product_topk, bench.sizes["reps"], deadline, sync)
    device_only = timed(product_topk_device_only, bench.sizes["reps"], deadline, sync)
    return with_transfers | {"device_only": device_only, "data": how, "torch": torch.__version__}


def breakdown(bench: Bench, queries: np.ndarray, k: int, deadline: float) -> dict[str, Any]:
    """Where the device time goes: the products of all tiles alone, and the per-tile
    selection (argpartition) alone on a score tile of the same shape."""
    search = bench.search
    backend = search.backend
    xp = backend.xp
    nq, dim = queries.shape
    n = bench.sizes["n_large"]
    tile = search._tile_rows(nq, dim, n, gathered=False)
    with backend.context():
        negated = backend.to_device(-queries).astype(search._mirror.dtype)

        def products() -> None:
            for t0 in range(0, n, tile):
                backend.matmul_t(negated, search._mirror[t0 : min(t0 + tile, n)])

        tile_scores = backend.matmul_t(negated, search._mirror[:tile])

        def selection() -> None:
            positions = xp.argpartition(tile_scores, k - 1, axis=1)[:, :k]
            xp.take_along_axis(tile_scores, positions, axis=1)

        reps = bench.sizes["reps"]
        result = {
            "tile_rows": tile,
            "tiles": -(-n // tile),
            "products_all_tiles": timed(products, reps, deadline, backend.synchronize),
            "argpartition_one_tile": timed(selection, reps, deadline, backend.synchronize),
        }
    result["argpartition_all_tiles_ms_estimate"] = (
        result["argpartition_one_tile"]["median_ms"] * result["tiles"]
    )
    log(f"batch: breakdown {result}")
    return result


def workspace_sweep(bench: Bench, queries: np.ndarray, k: int, deadline: float) -> list[dict[str, Any]]:
    search = bench.search
    original = search._workspace
    sweep = []
    try:
        for mib in bench.sizes["workspaces_mib"]:
            if time.monotonic() > deadline - 2:
                break
            search._workspace = mib << 20
            tile = search._tile_rows(
                queries.shape[0], queries.shape[1], bench.sizes["n_large"], gathered=False
            )
            figures = timed(lambda: search.top_candidates(queries, k), 3, deadline, bench.synchronize)
            sweep.append({"workspace_mib": mib, "tile_rows": tile} | figures)
            log(f"batch: workspace {mib} MiB tile {tile}: {figures}")
    finally:
        search._workspace = original
    return sweep


def section_one_query(report: Report, bench: Bench, deadline: float) -> None:
    _need_search(bench)
    query = bench.unit(1)
    k = bench.sizes["k"]
    reps = max(bench.sizes["reps"], 10)
    figures = timed(lambda: bench.search.top_candidates(query, k), reps, deadline, bench.synchronize)
    result = {"n": bench.sizes["n_large"], "dim": bench.sizes["dim"], "k": k, "including_transfers": figures}
    report.data["benchmarks"]["one_query"] = result
    if not bench.dry_run:
        report.data["targets"]["one_query_under_2ms"] = figures["median_ms"] < 2.0
    log(f"one_query: {figures}")


class CpuPath:
    """The CPU side of the crossover: the store's own CPU search where the native engine
    imports, else NumPy (f32 matmul + argpartition on all cores) as a stand-in."""

    def __init__(self, rows: np.ndarray, k: int, native: bool, build_deadline: float) -> None:
        self.rows = rows
        self.k = k
        self.store: Any = None
        self.build_s: float | None = None
        stand_in = "numpy f32 matmul + argpartition on all cores"
        self.kind = f"{stand_in} (stand-in: the native engine is absent)"
        if not native:
            return
        import ferromem

        start_time = time.monotonic()
        store = ferromem.open(None, index="exact", dim=rows.shape[1], cache_size=0)
        for start in range(0, rows.shape[0], 50_000):
            if time.monotonic() > build_deadline:
                store.close()
                self.kind = f"{stand_in} (stand-in: building the native store did not fit the time box)"
                return
            store.add(None, rows[start : start + 50_000])
        self.build_s = round(time.monotonic() - start_time, 2)
        self.store = store
        self.kind = "ferromem store, native engine, index='exact', f32"

    def search(self, queries: np.ndarray) -> None:
        if self.store is not None:
            self.store.search(queries if queries.shape[0] > 1 else queries[0], k=self.k)
            return
        # Chunks of rows, each chunk's top k merged into a running top k, then sorted:
        # what a tuned CPU scan does, in NumPy.
        chunk = 131_072
        k = min(self.k, self.rows.shape[0])
        best_values = np.full((queries.shape[0], 0), -np.inf, dtype=np.float32)
        best_ids = np.zeros((queries.shape[0], 0), dtype=np.int64)
        for start in range(0, self.rows.shape[0], chunk):
            scores = queries @ self.rows[start : start + chunk].T
            kk = min(k, scores.shape[1])
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            values = np.concatenate([best_values, np.take_along_axis(scores, top, axis=1)], axis=1)
            ids = np.concatenate([best_ids, top + start], axis=1)
            keep = np.argpartition(-values, k - 1, axis=1)[:, :k] if values.shape[1] > k else None
            if keep is not None:
                values, ids = np.take_along_axis(values, keep, axis=1), np.take_along_axis(ids, keep, axis=1)
            best_values, best_ids = values, ids
        order = np.argsort(-best_values, axis=1)
        np.take_along_axis(best_ids, order, axis=1)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def section_crossover(report: Report, bench: Bench, deadline: float) -> None:
    _need_search(bench)
    sizes = bench.sizes
    k = sizes["k"]
    result: dict[str, Any] = {"k": k, "dim": sizes["dim"], "by_n": {}}
    report.data["benchmarks"]["crossover"] = result
    native = native_status() == "present"
    for n in (sizes["n_small"], sizes["n_large"]):
        if time.monotonic() > deadline - 5:
            break
        rows = bench.rows[:n]
        device = (
            bench.gpu.DeviceSearch(bench.make_backend(), precision="f16") if n != sizes["n_large"] else None
        )
        search = bench.search if device is None else device
        if device is not None:
            device.apply(sizes["dim"], n, np.arange(n, dtype=np.uint32), rows, np.zeros(0, np.uint32), False)
        share = (deadline - time.monotonic()) / (2 if n == sizes["n_small"] else 1)
        stop_at = time.monotonic() + share
        # Building the store may take at most a third of this size's share of the time.
        cpu = CpuPath(rows, k, native, time.monotonic() + share / 3)
        entry: dict[str, Any] = {"cpu_path": cpu.kind, "native_build_s": cpu.build_s, "batches": []}
        result["by_n"][str(n)] = entry
        try:
            for batch in sizes["batches"]:
                if time.monotonic() > stop_at - 1:
                    entry["truncated_at_batch"] = batch
                    break
                queries = bench.unit(batch)
                gpu_t = timed(
                    functools.partial(search.top_candidates, queries, k),
                    3,
                    stop_at,
                    search.backend.synchronize,
                )
                cpu_t = timed(functools.partial(cpu.search, queries), 3, stop_at, lambda: None)
                row = {"batch": batch, "device_ms": gpu_t["median_ms"], "cpu_ms": cpu_t["median_ms"]}
                entry["batches"].append(row)
                log(f"crossover: N={n} {row}")
        finally:
            cpu.close()
            if device is not None:
                device.close()
        faster = [row["batch"] for row in entry["batches"] if row["device_ms"] < row["cpu_ms"]]
        entry["crossover_batch"] = faster[0] if faster else None


# ---------------------------------------------------------------------- the report


def markdown(data: dict[str, Any]) -> str:
    lines = ["# ferromem device check", ""]
    env = data.get("environment", {})
    info = env.get("device_info") or {}
    lines += [
        f"- started {data.get('started')}, finished {data.get('finished')}, {data.get('elapsed_s')} s"
        + (" (**dry run**)" if data.get("dry_run") else ""),
        f"- device: {info.get('name', 'none')} ({info.get('total_bytes', 0) / 2**30:.1f} GiB), "
        f"CuPy {env.get('cupy')}, PyTorch {env.get('torch')}, Python {env.get('python')}",
        f"- ferromem.gpu: {env.get('ferromem_gpu')}; native engine: {env.get('native_engine')}",
        "",
        "| section | status | seconds | note |",
        "| --- | --- | ---: | --- |",
    ]
    for name, record in data.get("sections", {}).items():
        note = str(record.get("reason", "")).replace("|", "/").replace("\n", " ")[:160]
        lines.append(f"| {name} | {record.get('status')} | {record.get('seconds')} | {note} |")
    tests = data.get("tests") or {}
    if tests:
        lines += ["", f"Tests (`{tests.get('command')}`): rc {tests.get('rc')}, {tests.get('summary', '')}"]
    bench = data.get("benchmarks", {})
    load = bench.get("load")
    if load:
        lines += [
            "",
            f"Load: {load['n']} x {load['dim']} ({load['precision']}) applied in {load['apply_s']} s "
            f"({load['apply_rows_per_s']} rows/s) on {load['device']} via {load['gemm']}; "
            f"a 1,000-row patch {load['patch_1000_rows']['median_ms']:.2f} ms; error bound {load['error_bound']:.3g}.",
        ]
    batch = bench.get("batch")
    if batch:
        torch_ms = batch.get("torch", {}).get("median_ms")
        lines += [
            "",
            f"## Batch {batch['batch']}, top-{batch['k']}, {batch['n']} x {batch['dim']} f16",
            "",
            "| path | median ms | min ms |",
            "| --- | ---: | ---: |",
            f"| DeviceSearch.top_candidates (incl. transfers) | {batch['device_search']['median_ms']:.3f} | "
            f"{batch['device_search']['min_ms']:.3f} |",
        ]
        if torch_ms is not None:
            lines += [
                f"| torch.matmul + torch.topk (incl. transfers) | {torch_ms:.3f} | {batch['torch']['min_ms']:.3f} |",
                f"| torch, device only | {batch['torch']['device_only']['median_ms']:.3f} | "
                f"{batch['torch']['device_only']['min_ms']:.3f} |",
                "",
                f"Ratio DeviceSearch / torch: **{batch['ratio_vs_torch']:.2f}** (target <= 1.2).",
            ]
        else:
            lines += ["", f"torch: {batch.get('torch', {}).get('skipped')}"]
        parts = batch.get("breakdown")
        if parts:
            lines += [
                "",
                f"Breakdown ({parts['tiles']} tiles of {parts['tile_rows']} rows): products "
                f"{parts['products_all_tiles']['median_ms']:.3f} ms; argpartition of one tile "
                f"{parts['argpartition_one_tile']['median_ms']:.3f} ms (x{parts['tiles']} = "
                f"{parts['argpartition_all_tiles_ms_estimate']:.3f} ms).",
            ]
        sweep = batch.get("workspace_sweep") or []
        if sweep:
            lines += ["", "| workspace MiB | tile rows | median ms |", "| ---: | ---: | ---: |"]
            lines += [f"| {s['workspace_mib']} | {s['tile_rows']} | {s['median_ms']:.3f} |" for s in sweep]
    one = bench.get("one_query")
    if one:
        lines += [
            "",
            f"One query over {one['n']} x {one['dim']}, incl. transfers: "
            f"**{one['including_transfers']['median_ms']:.3f} ms** median (target < 2 ms).",
        ]
    cross = bench.get("crossover")
    if cross:
        for n, entry in cross.get("by_n", {}).items():
            lines += [
                "",
                f"## Crossover at N = {n} (CPU: {entry['cpu_path']}): device faster from batch "
                f"**{entry.get('crossover_batch') or 'never, in the batches measured'}**",
                "",
                "| batch | device ms | CPU ms | CPU / device |",
                "| ---: | ---: | ---: | ---: |",
            ]
            for row in entry["batches"]:
                ratio = row["cpu_ms"] / row["device_ms"] if row["device_ms"] else float("nan")
                lines.append(
                    f"| {row['batch']} | {row['device_ms']:.3f} | {row['cpu_ms']:.3f} | {ratio:.2f} |"
                )
    if data.get("targets"):
        lines += ["", "Targets: " + ", ".join(f"{k}: {v}" for k, v in data["targets"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for device_check.json and .md")
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny sizes; NumPy when there is no CUDA device"
    )
    parser.add_argument("--budget-s", type=float, default=None, help="the whole run's time budget in seconds")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the gpu tests")
    args = parser.parse_args(argv)
    sizes = DRY if args.dry_run else FULL
    report = Report(args.out, args.dry_run, args.budget_s or sizes["budget_s"])
    report.data["sizes"] = {k: v for k, v in sizes.items() if k != "caps_s"}
    gpu, how = import_ferromem_gpu()
    stage_path = str(Path(gpu.__file__).parents[1]) if how.startswith("staged") else None
    caps = sizes["caps_s"]
    report.run("environment", caps["environment"], lambda deadline: section_environment(report, gpu, how))
    if args.skip_tests:
        report.data["sections"]["tests"] = {"status": "skipped", "seconds": 0, "reason": "--skip-tests"}
    else:
        report.run("tests", caps["tests"], lambda deadline: section_tests(report, deadline, stage_path))
    bench = Bench(gpu, sizes, args.dry_run)
    report.run("load", caps["load"], lambda deadline: section_load(report, bench, deadline))
    report.run("batch", caps["batch"], lambda deadline: section_batch(report, bench, deadline))
    report.run("one_query", caps["one_query"], lambda deadline: section_one_query(report, bench, deadline))
    report.run("crossover", caps["crossover"], lambda deadline: section_crossover(report, bench, deadline))
    if bench.search is not None:
        bench.search.close()
    report.data["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    report.write()
    log(f"wrote {args.out / 'device_check.json'} and {args.out / 'device_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
