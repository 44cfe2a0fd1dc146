"""ferromem.gpu: the optional GPU path. A store's rows mirrored on a CUDA device (f16 by
default), searched for candidates by tiled matrix products; the engine re-scores the
candidates exactly on the host and proves its top k exact with the mirror's error bound,
so a GPU search returns what the CPU returns (docs/gpu.md).

The math is written once against the array surface NumPy and CuPy share, so it runs on
:func:`numpy_backend` everywhere (CI included) and on :func:`cupy_backend` where CuPy and a
CUDA device exist. Importing this package never imports CuPy.
"""

from ._backends import ArrayBackend, CupyBackend, NumpyBackend, cupy_backend, device_info, numpy_backend
from ._bounds import NORM_TOLERANCE, mirror_error_bound
from ._errors import DeviceMemoryError, DeviceUnavailableError
from ._mirror import PAD_SLOT, DeviceSearch

__all__ = [
    "DeviceSearch",
    "ArrayBackend",
    "NumpyBackend",
    "CupyBackend",
    "numpy_backend",
    "cupy_backend",
    "device_info",
    "DeviceUnavailableError",
    "DeviceMemoryError",
    "PAD_SLOT",
    "NORM_TOLERANCE",
    "mirror_error_bound",
]
