"""Fixtures of the GPU path's tests: every functional test runs on the NumPy backend
(always, CI included) and again on the CuPy backend, marked ``gpu``, which skips with the
reason when CuPy or a CUDA device is missing.

A plugin of tests/conftest.py (``pytest_plugins``), not a conftest.py of tests/gpu: the
suite's modules import helpers with ``from conftest import ...``, which must always mean
tests/conftest.py, and a second conftest module takes that name when its folder is
collected first."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from ferromem.gpu import ArrayBackend, DeviceUnavailableError, cupy_backend, numpy_backend

_cupy_reason: list[str] = []


def cupy_unavailable_reason() -> str | None:
    """None when a CuPy backend on device 0 can be made; else why not (asked once)."""
    if not _cupy_reason:
        try:
            cupy_backend(0).close()
            _cupy_reason.append("")
        except DeviceUnavailableError as exc:
            _cupy_reason.append(f"no usable CUDA device through CuPy: {exc}")
    return _cupy_reason[0] or None


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def make_backend(request: pytest.FixtureRequest) -> Callable[[], ArrayBackend]:
    """A factory of fresh backends of the parametrised kind."""
    if request.param == "cupy":
        reason = cupy_unavailable_reason()
        if reason:
            pytest.skip(reason)
        return lambda: cupy_backend(0)
    return numpy_backend


@pytest.fixture
def cupy_ready() -> None:
    reason = cupy_unavailable_reason()
    if reason:
        pytest.skip(reason)
