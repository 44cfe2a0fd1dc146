"""Intake of vectors: ferromem._buffers.as_matrix beside numpy.asarray(x, dtype=float32).

Each input kind is timed twice: through ``as_matrix`` (conversion plus the finite and
non-zero checks, zero copy where possible) and through ``numpy.asarray(..., dtype=float32)``
(conversion only, no checks), the baseline a caller would otherwise write.

* ``list_1536``: one embedding as a Python list of 1536 floats (what most embedding
  clients return);
* ``list_256x1536``: a batch of 256 such lists;
* ``float64_256x1536``: a float64 array (numpy's default dtype), converted once;
* ``float32_256x1536``: already float32 and C-contiguous: no copy, only the checks.
"""

from __future__ import annotations

import numpy as np

try:
    from ferromem._buffers import as_matrix
except ImportError:  # not built: asv reports the benchmarks as skipped
    as_matrix = None

DIM = 1536
BATCH = 256

INPUTS = ["list_1536", "list_256x1536", "float64_256x1536", "float32_256x1536"]


def make_input(kind: str):
    """The same deterministic data for every run (unit-variance normal values)."""
    rng = np.random.default_rng(1536)
    if kind == "list_1536":
        return rng.standard_normal(DIM).tolist()
    if kind == "list_256x1536":
        return rng.standard_normal((BATCH, DIM)).tolist()
    if kind == "float64_256x1536":
        return rng.standard_normal((BATCH, DIM))
    if kind == "float32_256x1536":
        return rng.standard_normal((BATCH, DIM)).astype(np.float32)
    raise ValueError(kind)


class AsMatrix:
    """as_matrix vs numpy.asarray(dtype=float32), per input kind."""

    params = [INPUTS]
    param_names = ["input"]

    def setup(self, kind):
        if as_matrix is None:
            raise NotImplementedError("ferromem._buffers is not built")
        self.data = make_input(kind)

    def time_as_matrix(self, kind):
        as_matrix(self.data)

    def time_numpy_asarray(self, kind):
        np.asarray(self.data, dtype=np.float32)
