"""The errors of the GPU path, defined with ferromem's other errors (so the engine's
``DeviceError`` is their base and ``ferromem`` exports them) and re-exported here."""

from __future__ import annotations

from ferromem.exceptions import DeviceError, DeviceMemoryError, DeviceUnavailableError

__all__ = ["DeviceError", "DeviceMemoryError", "DeviceUnavailableError"]
