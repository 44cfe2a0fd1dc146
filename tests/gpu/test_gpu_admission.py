"""The mirror's guard rails: bad input is a typed error with nothing applied; growth beyond
the device memory it may use is a DeviceMemoryError with nothing applied; the backends'
availability errors; and importing ferromem never imports CuPy."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ferromem.exceptions import (
    DimensionMismatchError,
    FerromemError,
    InvalidInputError,
    InvalidVectorError,
)
from ferromem.gpu import (
    DeviceMemoryError,
    DeviceSearch,
    DeviceUnavailableError,
    NumpyBackend,
    cupy_backend,
    device_info,
    numpy_backend,
)
from gpu_model import unit_rows

U32 = np.uint32
NONE = np.zeros(0, dtype=U32)


def state(search: DeviceSearch, queries: np.ndarray) -> tuple:
    """Everything observable of a mirror, to compare before and after a refused call."""
    got = search.top_candidates(queries, 7)
    return (search.dim, search.rows(), search.valid_rows(), search.capacity(), search.memory_bytes(),
            got[0].tobytes(), got[1].tobytes())  # fmt: skip


@pytest.fixture
def filled(make_backend):
    rng = np.random.default_rng(5)
    search = DeviceSearch(make_backend(), precision="f16")
    rows = unit_rows(rng, 50, 12)
    search.apply(12, 50, np.arange(50, dtype=U32), rows, NONE, False)
    return search, rows, unit_rows(rng, 3, 12)


def bad_changes(rows: np.ndarray):
    ok_rows = rows[:2]
    nan_rows = ok_rows.copy()
    nan_rows[1, 3] = np.nan
    long_rows = ok_rows * 1.01
    yield (
        "dim mismatch",
        DimensionMismatchError,
        (13, 50, np.arange(2, dtype=U32), np.ones((2, 13), np.float32) / 13**0.5, NONE, False),
    )
    yield "rows shape", InvalidInputError, (12, 50, np.arange(3, dtype=U32), ok_rows, NONE, False)
    yield "not unit", InvalidVectorError, (12, 50, np.arange(2, dtype=U32), long_rows, NONE, False)
    yield "not finite", InvalidVectorError, (12, 50, np.arange(2, dtype=U32), nan_rows, NONE, False)
    yield (
        "int rows",
        InvalidVectorError,
        (12, 50, np.arange(2, dtype=U32), np.ones((2, 12), np.int32), NONE, False),
    )
    yield "slot beyond count", InvalidInputError, (12, 50, np.array([1, 50], U32), ok_rows, NONE, False)
    yield "duplicate", InvalidInputError, (12, 50, np.array([4, 4], U32), ok_rows, NONE, False)
    yield (
        "written and freed",
        InvalidInputError,
        (12, 50, np.array([4, 5], U32), ok_rows, np.array([5], U32), False),
    )
    yield (
        "freed beyond",
        InvalidInputError,
        (12, 50, NONE, np.zeros((0, 12), np.float32), np.array([70], U32), False),
    )
    yield "float slots", InvalidInputError, (12, 50, np.array([1.0, 2.0]), ok_rows, NONE, False)
    yield "negative slot", InvalidInputError, (12, 50, np.array([-1, 2]), ok_rows, NONE, False)
    yield "2-D slots", InvalidInputError, (12, 50, np.array([[1, 2]], U32), ok_rows, NONE, False)
    yield "dim zero", InvalidInputError, (0, 50, NONE, np.zeros((0, 0), np.float32), NONE, False)
    yield "slot_count", InvalidInputError, (12, -1, NONE, np.zeros((0, 12), np.float32), NONE, False)  # fmt: skip


def test_bad_changes_raise_typed_errors_and_apply_nothing(filled):
    search, rows, queries = filled
    before = state(search, queries)
    for label, error, args in bad_changes(rows):
        with pytest.raises(error):
            search.apply(*args)
        assert state(search, queries) == before, label


def test_bad_searches_raise_typed_errors(filled):
    search, _, queries = filled
    cases = [
        (DimensionMismatchError, (np.ones((1, 5), np.float32) / 5**0.5, 3, None)),
        (InvalidVectorError, (queries * 2, 3, None)),
        (InvalidVectorError, (queries[0], 3, None)),
        (InvalidInputError, (queries, 0, None)),
        (InvalidInputError, (queries, 2.5, None)),
        (InvalidInputError, (queries, 3, np.array([5, 3], U32))),  # not ascending
        (InvalidInputError, (queries, 3, np.array([3, 3], U32))),  # repeated
        (InvalidInputError, (queries, 3, np.array([3, 50], U32))),  # beyond the mirror
    ]
    for error, args in cases:
        with pytest.raises(error):
            search.top_candidates(*args)


def test_constructor_checks():
    with pytest.raises(InvalidInputError):
        DeviceSearch(numpy_backend(), precision="bf16")
    with pytest.raises(InvalidInputError):
        DeviceSearch(numpy_backend(), reserve_bytes=-1)
    with pytest.raises(InvalidInputError):
        DeviceSearch(numpy_backend(), query_batch=0)


class SmallDevice(NumpyBackend):
    """A NumPy backend that reports a device of ``total`` bytes with ``free`` of them free."""

    def __init__(self, free: int, total: int) -> None:
        super().__init__()
        self.free = free
        self.total = total

    def mem_info(self) -> tuple[int, int]:
        return self.free, self.total


def test_admission_refuses_growth_beyond_free_memory_and_changes_nothing():
    rng = np.random.default_rng(9)
    device = SmallDevice(free=8 << 20, total=16 << 20)
    search = DeviceSearch(device, precision="f32", reserve_bytes=1 << 20)
    rows = unit_rows(rng, 1500, 64)
    search.apply(64, 1500, np.arange(1500, dtype=U32), rows, NONE, False)
    queries = unit_rows(rng, 2, 64)
    before = state(search, queries)
    # 40,000 slots of 64 f32 values need 10,240,000 bytes: more than the 7 MiB usable.
    many = unit_rows(rng, 100, 64)
    with pytest.raises(DeviceMemoryError) as caught:
        search.apply(64, 40_000, np.arange(39_900, 40_000, dtype=U32), many, NONE, False)
    assert isinstance(caught.value, FerromemError) and isinstance(caught.value, MemoryError)
    assert caught.value.needed == 40_000 * 64 * 4
    assert caught.value.available is not None and caught.value.available < caught.value.needed
    assert "needs" in str(caught.value) and "unchanged" in str(caught.value)
    assert state(search, queries) == before
    # A reset that does not fit either leaves the mirror as it was.
    with pytest.raises(DeviceMemoryError):
        search.apply(64, 40_000, np.arange(39_900, 40_000, dtype=U32), many, NONE, True)
    assert state(search, queries) == before
    # The same growth fits once memory is freed.
    device.free = 64 << 20
    search.apply(64, 40_000, np.arange(39_900, 40_000, dtype=U32), many, NONE, False)
    assert search.rows() == 40_000 and search.valid_rows() == 1600


def test_admission_takes_the_exact_size_when_geometric_growth_does_not_fit():
    rng = np.random.default_rng(10)
    # 2,000 slots of 32 f16 values are 128,000 bytes; growing 1.5x (3,000 slots) needs 192,000.
    device = SmallDevice(free=10 << 20, total=10 << 20)
    search = DeviceSearch(device, precision="f16", reserve_bytes=0, max_bytes=200_000)
    search.apply(32, 2_000, np.arange(2_000, dtype=U32), unit_rows(rng, 2_000, 32), NONE, False)
    assert search.capacity() == 2_000
    search.apply(32, 2_100, np.arange(2_000, 2_100, dtype=U32), unit_rows(rng, 100, 32), NONE, False)
    assert search.capacity() == 3_000  # geometric: fits under max_bytes
    search.apply(32, 3_100, np.arange(2_100, 3_100, dtype=U32), unit_rows(rng, 1_000, 32), NONE, False)
    assert search.capacity() == 3_100  # 4,500 slots would pass max_bytes; the exact size fits
    with pytest.raises(DeviceMemoryError) as caught:
        search.apply(32, 3_200, np.arange(3_100, 3_200, dtype=U32), unit_rows(rng, 100, 32), NONE, False)
    assert "max_bytes" in str(caught.value)
    assert search.rows() == 3_100


def test_default_reserve_is_a_tenth_or_512_mib():
    assert DeviceSearch(SmallDevice(1 << 30, 80 << 30))._reserve == 8 << 30
    assert DeviceSearch(SmallDevice(1 << 30, 2 << 30))._reserve == 512 << 20


def test_a_search_without_scratch_memory_is_refused():
    rng = np.random.default_rng(11)
    device = SmallDevice(free=64 << 20, total=64 << 20)
    search = DeviceSearch(device, precision="f16", reserve_bytes=0)
    search.apply(16, 5_000, np.arange(5_000, dtype=U32), unit_rows(rng, 5_000, 16), NONE, False)
    device.free = 1_000
    with pytest.raises(DeviceMemoryError):
        search.top_candidates(unit_rows(rng, 4, 16), 3)


def test_cupy_backend_without_cupy_raises_device_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now raises ImportError
    with pytest.raises(DeviceUnavailableError) as caught:
        cupy_backend()
    assert isinstance(caught.value, FerromemError)
    assert "CuPy is not installed" in str(caught.value) and "ferromem[gpu]" in str(caught.value)
    assert device_info() is None
    with pytest.raises(DeviceUnavailableError):
        cupy_backend(-1)


def test_without_cupy_installed():
    try:
        import cupy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("CuPy is installed here")
    with pytest.raises(DeviceUnavailableError, match="CuPy is not installed"):
        cupy_backend()
    assert device_info() is None


def test_importing_ferromem_never_imports_cupy():
    code = (
        "import sys, ferromem, ferromem.gpu\n"
        "from ferromem.gpu import DeviceSearch, numpy_backend\n"
        "DeviceSearch(numpy_backend())\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
        "print('clean')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clean"


def test_the_errors_are_re_exportable():
    assert issubclass(DeviceUnavailableError, FerromemError)
    assert issubclass(DeviceMemoryError, FerromemError)
