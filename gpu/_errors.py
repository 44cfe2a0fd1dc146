"""The errors of the GPU path. Both are :class:`ferromem.exceptions.FerromemError`, so a
caller that catches ferromem's errors catches these too; ferromem re-exports them."""

from __future__ import annotations

from ferromem.exceptions import FerromemError


class DeviceUnavailableError(FerromemError, RuntimeError):
    """No usable GPU: CuPy is not installed, no CUDA device is visible, or the driver
    failed. The message says which, and what to do about it."""


class DeviceMemoryError(FerromemError, MemoryError):
    """The device mirror does not fit in the device memory it may use (free memory less
    the reserve, and at most ``max_bytes``). ``needed`` and ``available`` are in bytes.
    The mirror was left as it was: nothing of the refused change was applied."""

    def __init__(self, message: str, needed: int | None = None, available: int | None = None):
        super().__init__(message)
        self.needed = needed
        self.available = available
