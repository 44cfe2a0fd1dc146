"""The similarity kernels themselves: one query against every row, dim x dtype x ISA.

Each case scans 2^25 stored values (128 MiB as float32, 64 as float16 or bfloat16, 32 as
int8, so none of them fits in the last-level cache) on one thread, through the kernel the
engine uses for that storage (``ferromem._core.dot_rows_f32``, ``dot_rows_f16``,
``dot_rows_i8``), with the SIMD path forced to the ISA of the case. An ISA this CPU cannot
run is skipped. ``track_gb_per_s`` reports the bytes streamed per second (best of several
scans), to compare with the machine's memory bandwidth (``asv_bench/peers.py`` figure a).
The int8 path of ``avx512`` is VNNI where the CPU has it, that of ``neon`` SDOT where
the CPU has it (``int8_path``).

bfloat16 is no storage precision of the engine; its kernels are measured beside the others:
``bfloat16`` is an f32 query against bf16 rows (``dot_rows_bf16``), ``bfloat16-pairs`` a
bf16 query against them (``dot_rows_bf16_pairs``: AVX-512 BF16's ``vdpbf16ps`` under
``avx512`` where the CPU has it, ``bf16_path``).
"""

from __future__ import annotations

import time

import numpy as np

try:
    from ferromem import _core
except ImportError:  # not built: asv reports the benchmarks as failed setups
    _core = None

VALUES = 1 << 25
DIMS = [384, 768, 1536]
DTYPES = ["float32", "float16", "bfloat16", "bfloat16-pairs", "int8"]
ISAS = ["scalar", "avx2", "avx512", "neon"]
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "bfloat16-pairs": 2, "int8": 1}


class KernelScan:
    params = [DIMS, DTYPES, ISAS]
    param_names = ["dim", "dtype", "isa"]
    timeout = 300

    def setup(self, dim, dtype, isa):
        if _core is None or isa not in _core.supported_isas():
            raise NotImplementedError(f"ISA {isa} is not available here")
        _core.force_isa(isa)
        rng = np.random.default_rng(dim)
        rows = VALUES // dim
        if dtype == "int8":
            self.rows = rng.integers(-127, 128, (rows, dim), dtype=np.int8)
            self.query = rng.integers(-127, 128, dim, dtype=np.int8)
            self.kernel = _core.dot_rows_i8
        else:
            data = rng.standard_normal((rows, dim), dtype=np.float32)
            self.query = rng.standard_normal(dim, dtype=np.float32)
            if dtype == "float16":
                self.rows = data.astype(np.float16).view(np.uint16)
                self.kernel = _core.dot_rows_f16
            elif dtype.startswith("bfloat16"):
                # Truncated to bfloat16 (the timing does not depend on the rounding).
                self.rows = (data.view(np.uint32) >> 16).astype(np.uint16)
                self.kernel = _core.dot_rows_bf16
                if dtype == "bfloat16-pairs":
                    self.query = (self.query.view(np.uint32) >> 16).astype(np.uint16)
                    self.kernel = _core.dot_rows_bf16_pairs
            else:
                self.rows = data
                self.kernel = _core.dot_rows_f32
        self.kernel(self.query, self.rows)  # pages in, warms the caches

    def teardown(self, dim, dtype, isa):
        if _core is not None:
            _core.force_isa(None)

    def time_scan(self, dim, dtype, isa):
        self.kernel(self.query, self.rows)

    def track_gb_per_s(self, dim, dtype, isa):
        best = float("inf")
        for _ in range(7):
            t = time.perf_counter()
            self.kernel(self.query, self.rows)
            best = min(best, time.perf_counter() - t)
        return self.rows.size * BYTES[dtype] / best / 1e9

    track_gb_per_s.unit = "GB/s"
