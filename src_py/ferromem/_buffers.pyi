# Stubs for the Cython data plane (src_cython/ferromem/_buffers.pyx): the intake that turns
# whatever the caller holds into the float32, C-contiguous, aligned matrix the engine reads.
# `python -m mypy.stubtest ferromem._buffers` (in .ci/lint) checks them against the built
# module. The inputs are `object` on purpose: any value is accepted as an argument, and a
# value that is not a vector raises InvalidVectorError (not TypeError).
from typing import SupportsIndex

import numpy as np

__all__ = ["as_matrix", "as_vector", "data_address"]

def as_matrix(
    obj: object, dim: SupportsIndex | None = None
) -> np.ndarray[tuple[int, int], np.dtype[np.float32]]:
    """``obj`` as a float32, C-contiguous, aligned (n, d) array; a 1-D input gives (1, d)."""

def as_vector(obj: object, dim: SupportsIndex | None = None) -> np.ndarray[tuple[int], np.dtype[np.float32]]:
    """``obj`` as one float32, C-contiguous, aligned (d,) vector."""

def data_address(obj: object) -> int:
    """The address of the first element of ``obj``'s buffer."""
