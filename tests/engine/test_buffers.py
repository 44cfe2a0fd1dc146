"""The data plane's intake of vectors: ``ferromem._buffers`` (Cython).

What is checked:

* zero copy: a float32, C-contiguous, aligned buffer (numpy 1-D/2-D, memoryview,
  array.array, read-only arrays) comes back sharing the caller's memory, same address;
* exactly one conversion for everything else, with values bit-for-bit equal to
  ``numpy.asarray(x, dtype=numpy.float32)`` (numpy's own float32 rounding);
* every rejection is the right class from ``ferromem.exceptions``.

It is the one intake of vectors: the NumPy twin it once had (``ferromem._convert``) is
gone, and the reference engine re-checks vectors through it too.
"""

from __future__ import annotations

import array
import ctypes
import math
from collections import deque
from fractions import Fraction

import numpy as np
import pytest
from ferromem.exceptions import DimensionMismatchError, InvalidVectorError
from hypothesis import given, settings
from hypothesis import strategies as st

buffers = pytest.importorskip(
    "ferromem._buffers",
    reason="the Cython extension ferromem._buffers is not built (pip install -e . builds it)",
)
if not hasattr(buffers, "as_matrix"):  # the placeholder module of an old build
    pytest.skip("ferromem._buffers is an old placeholder build; rebuild it", allow_module_level=True)

as_matrix = buffers.as_matrix
as_vector = buffers.as_vector
data_address = buffers.data_address


def bits(arr: np.ndarray) -> np.ndarray:
    """The raw bits: equality of these is exact (it tells -0.0 from 0.0 and NaNs apart)."""
    return np.ascontiguousarray(arr).view(np.uint32)


def assert_exactly(result: np.ndarray, expected: np.ndarray) -> None:
    assert result.dtype == np.float32
    assert result.flags.c_contiguous
    assert result.flags.aligned
    assert result.shape == expected.shape
    np.testing.assert_array_equal(bits(result), bits(expected.astype(np.float32)))


def assert_zero_copy(result: np.ndarray, source) -> None:
    assert data_address(result) == data_address(source)
    assert np.shares_memory(result, np.asarray(source))


def assert_copied(result: np.ndarray, source: np.ndarray) -> None:
    assert not np.shares_memory(result, source)


RNG = np.random.default_rng(20240611)
M32 = RNG.standard_normal((5, 7)).astype(np.float32)
V32 = RNG.standard_normal(7).astype(np.float32)


# --------------------------------------------------------------------------- zero copy


def test_float32_2d_is_returned_without_copy():
    result = as_matrix(M32)
    assert result.shape == (5, 7)
    assert_zero_copy(result, M32)
    assert_exactly(result, M32)


def test_float32_1d_becomes_a_one_row_view():
    result = as_matrix(V32)
    assert result.shape == (1, 7)
    assert_zero_copy(result, V32)


def test_as_vector_of_float32_1d_is_a_view():
    result = as_vector(V32)
    assert result.shape == (7,)
    assert_zero_copy(result, V32)


def test_as_vector_of_one_row_matrix_is_the_row_view():
    one_row = M32[2:3]  # C-contiguous (1, 7) view into M32
    result = as_vector(one_row)
    assert result.shape == (7,)
    assert_zero_copy(result, one_row)
    assert data_address(result) == data_address(M32[2])


def test_memoryview_is_not_copied():
    source = M32.copy()
    view = memoryview(source)
    result = as_matrix(view)
    assert_zero_copy(result, view)
    assert data_address(result) == data_address(source)
    assert_exactly(result, source)


def test_memoryview_cast_from_bytes_is_not_copied_and_stays_read_only():
    raw = V32.tobytes()
    view = memoryview(raw).cast("f")
    result = as_vector(view)
    assert_zero_copy(result, view)
    assert not result.flags.writeable
    assert_exactly(result, V32)


def test_array_array_f_is_not_copied():
    source = array.array("f", V32.tolist())
    result = as_matrix(source)
    assert result.shape == (1, 7)
    assert_zero_copy(result, source)
    assert_exactly(result, V32.reshape(1, 7))


def test_read_only_array_is_not_copied_and_stays_read_only():
    source = M32.copy()
    source.flags.writeable = False
    result = as_matrix(source)
    assert_zero_copy(result, source)
    assert not result.flags.writeable


def test_writes_through_the_result_reach_the_caller():
    source = M32.copy()
    as_matrix(source)[1, 2] = 42.0
    assert source[1, 2] == 42.0


def test_any_pep3118_float32_exporter_is_not_copied():
    # ctypes arrays know nothing of numpy: they only export a PEP 3118 buffer ("<f").
    source = (ctypes.c_float * 7)(*V32.tolist())
    result = as_matrix(source)
    assert result.shape == (1, 7)
    assert data_address(result) == ctypes.addressof(source) == data_address(source)
    assert_exactly(result, V32.reshape(1, 7))


def test_size_one_dimensions_with_odd_strides_are_contiguous_enough():
    base = np.ones((4, 8), np.float32)
    odd = base[::2][:1]  # (1, 8), C-contiguous by numpy's rules, stride 64 on axis 0
    assert odd.flags.c_contiguous
    result = as_matrix(odd)
    assert_zero_copy(result, odd)


# --------------------------------------------------------------------------- copies


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(M32.astype(np.float64), id="float64"),
        pytest.param(M32.astype(np.float16), id="float16"),
        pytest.param(M32.astype(np.longdouble), id="longdouble"),
        pytest.param(np.asfortranarray(M32), id="fortran-order"),
        pytest.param(RNG.standard_normal((10, 14)).astype(np.float32)[::2, ::2], id="strided"),
        pytest.param(M32[:, ::-1], id="reversed-columns"),
        pytest.param(M32.astype(">f4"), id="big-endian-float32"),
        pytest.param(np.arange(1, 36, dtype=np.int64).reshape(5, 7), id="int64"),
        pytest.param(np.arange(1, 36, dtype=np.int8).reshape(5, 7), id="int8"),
        pytest.param(np.arange(1, 36, dtype=np.uint16).reshape(5, 7), id="uint16"),
        pytest.param(np.arange(1, 36, dtype=np.uint64).reshape(5, 7) << np.uint64(40), id="uint64"),
    ],
)
def test_other_arrays_are_converted_once_with_numpy_rounding(source):
    result = as_matrix(source)
    assert_copied(result, source)
    assert_exactly(result, np.asarray(source, dtype=np.float32))


def test_unaligned_float32_is_copied_because_the_engine_needs_alignment():
    raw = bytearray(4 * 7 + 1)
    unaligned = np.frombuffer(raw, dtype=np.float32, offset=1, count=7)
    unaligned[...] = V32  # frombuffer of a bytearray is writeable
    assert not unaligned.flags.aligned
    result = as_vector(unaligned)
    assert result.flags.aligned
    assert_copied(result, unaligned)
    assert_exactly(result, V32)


def test_float64_memoryview_and_array_array_d_are_converted():
    values = RNG.standard_normal(9)
    for source in (memoryview(values), array.array("d", values.tolist())):
        result = as_vector(source)
        assert not np.shares_memory(result, values)
        assert_exactly(result, values)


def test_list_of_floats_is_converted_once():
    values = RNG.standard_normal(33).tolist()
    result = as_matrix(values)
    assert result.shape == (1, 33)
    assert_exactly(result, np.asarray([values], dtype=np.float32))


def test_list_of_lists_and_tuples_of_mixed_number_types():
    rows = [
        [1, 2.5, -3],
        (0.1, np.float32(0.2), np.float64(0.3)),
        [np.int64(7), np.uint8(255), np.float16(0.5)],
        [True + 1, 2**40, -(2**63)],  # plain ints, some beyond float32's exact range
        [np.array(1.25), 0.0, -0.0],  # a 0-d array counts as a number
    ]
    result = as_matrix(rows)
    assert_exactly(result, np.asarray(rows, dtype=np.float32))


def test_tuple_of_numbers_is_one_vector():
    result = as_vector((1.0, 2, 3.5))
    assert_exactly(result, np.array([1.0, 2, 3.5], np.float32))


def test_list_of_arrays_is_a_matrix():
    rows = [M32[0].astype(np.float64), M32[1], np.asfortranarray(M32)[2], memoryview(M32[3].copy())]
    result = as_matrix(rows)
    assert_exactly(result, np.asarray(M32[:4], dtype=np.float32))


def test_list_of_float32_views_is_copied_into_a_new_matrix():
    rows = [M32[0], M32[1]]
    result = as_matrix(rows)
    assert_copied(result, M32)
    assert_exactly(result, M32[:2])


def test_ints_round_like_numpy_does_for_python_ints():
    # 2**60 + 2**36 + 1 rounds differently int->float32 directly and via float64;
    # numpy.asarray(list, float32) goes via float64 (Python's float(int)), so do we.
    values = [2**60 + 2**36 + 1, 2**24 + 1, -(2**53) - 1, 1]
    result = as_vector(values)
    assert_exactly(result, np.asarray(values, dtype=np.float32))


def test_numpy_scalars_round_like_numpy_casts_them():
    # numpy casts its own 64-bit ints and long doubles to float32 in one rounding (not via
    # float64 as for Python ints); the list path must agree with numpy.asarray.
    big = 2**60 + 2**36 + 1
    tiny = np.longdouble(2) ** -24 + np.longdouble(2) ** -60
    values = [np.int64(big), np.uint64(big), np.longdouble(1) + tiny, np.array(np.int64(big)), 1.0]
    result = as_vector(values)
    assert_exactly(result, np.asarray(values, dtype=np.float32))
    assert result[0] != np.float32(float(big))  # the two roundings do differ here


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=1, max_size=8))
def test_numpy_int64_scalars_match_numpy(values):
    scalars = [np.int64(v) for v in values]
    expected = np.asarray(scalars, dtype=np.float32)
    if not expected.any():
        with pytest.raises(InvalidVectorError):
            as_vector(scalars)
    else:
        assert_exactly(as_vector(scalars), expected)


def test_float64_values_round_to_nearest_float32():
    values = [0.1, 1 / 3, 1e-40, 3.4028235e38, 16777217.0, 2.0**-149, 2.0**-150 * 3]
    result = as_vector(values)
    assert_exactly(result, np.asarray(values, dtype=np.float32))
    assert_exactly(as_vector(np.array(values)), np.asarray(values, dtype=np.float32))


def test_large_list_of_100k_floats():
    values = RNG.standard_normal(100_000).tolist()
    result = as_vector(values)
    assert result.shape == (100_000,)
    assert_exactly(result, np.asarray(values, dtype=np.float32))


def test_large_list_of_lists():
    matrix = RNG.standard_normal((300, 384))
    result = as_matrix(matrix.tolist())
    assert_exactly(result, matrix.astype(np.float32))


def test_large_matrices_are_checked_with_the_gil_released_and_still_caught():
    # Big enough for the nogil branch of the check; the bad value is in the last row.
    matrix = RNG.standard_normal((200, 1024)).astype(np.float32)
    assert_zero_copy(as_matrix(matrix), matrix)
    matrix[199, 1023] = np.inf
    with pytest.raises(InvalidVectorError, match=r"row 199, column 1023"):
        as_matrix(matrix)


def test_threads_checking_large_matrices_at_once_each_get_their_own_answer():
    # The check releases the GIL for large inputs; each thread must still see its own
    # result or error.
    from concurrent.futures import ThreadPoolExecutor

    good = RNG.standard_normal((128, 1024)).astype(np.float32)
    bad = good.copy()
    bad[77, 5] = np.nan

    def check(i):
        source = good if i % 2 == 0 else bad
        try:
            return data_address(as_matrix(source)) == data_address(source)
        except InvalidVectorError as exc:
            return "row 77, column 5" in str(exc)

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(check, range(64)))


def test_subnormal_and_negative_zero_values_are_kept():
    values = [np.float32(1e-45), -0.0, 0.0]
    result = as_vector(values)
    assert_exactly(result, np.asarray(values, dtype=np.float32))


def test_numpy_subclasses_are_viewed_as_plain_arrays():
    class Tagged(np.ndarray):
        pass

    matrix = M32.view(Tagged)
    result = as_matrix(matrix)
    assert type(result) is np.ndarray
    assert_zero_copy(result, M32)


def test_dim_that_matches_is_accepted():
    assert as_matrix(M32, dim=7).shape == (5, 7)
    assert as_vector([1.0, 2.0], dim=np.int64(2)).shape == (2,)


# --------------------------------------------------------------------------- errors


def test_invalid_vector_error_is_a_value_error():
    assert issubclass(InvalidVectorError, ValueError)
    assert issubclass(DimensionMismatchError, InvalidVectorError)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_name_row_and_column(bad):
    matrix = M32.copy()
    matrix[3, 4] = bad
    with pytest.raises(InvalidVectorError, match=r"row 3, column 4") as info:
        as_matrix(matrix)
    assert type(info.value) is InvalidVectorError
    assert repr(float(bad)) in str(info.value)


def test_non_finite_in_list_and_in_float64():
    with pytest.raises(InvalidVectorError, match=r"row 1, column 0"):
        as_matrix([[1.0, 2.0], [math.nan, 1.0]])
    with pytest.raises(InvalidVectorError, match=r"index 2"):
        as_vector([1.0, 2.0, math.inf])
    with pytest.raises(InvalidVectorError, match=r"row 0, column 1"):
        as_matrix(np.array([[1.0, -np.inf]]))


def test_float64_beyond_float32_range_is_not_finite():
    with pytest.raises(InvalidVectorError, match=r"index 1"):
        as_vector(np.array([1.0, 1e39]))
    with pytest.raises(InvalidVectorError, match=r"index 0"):
        as_vector([-1e39, 1.0])
    with pytest.raises(InvalidVectorError):
        as_vector([10**39, 1])
    with pytest.raises(InvalidVectorError):  # beyond float64 too: OverflowError inside
        as_vector([10**400, 1])


def test_values_that_underflow_to_zero_make_a_zero_vector():
    with pytest.raises(InvalidVectorError, match="zero vector has no direction"):
        as_vector([1e-50, -1e-50])


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(np.zeros((3, 4), np.float32), id="float32-all-rows"),
        pytest.param(np.array([[1.0, 2.0], [0.0, -0.0]]), id="float64-second-row"),
        pytest.param([[1, 2], [0, 0]], id="list-of-lists"),
        pytest.param([0.0, 0.0, 0.0], id="list"),
        pytest.param(np.zeros(5, np.int32), id="int32"),
    ],
)
def test_zero_rows_are_rejected(source):
    with pytest.raises(InvalidVectorError, match="zero vector has no direction"):
        as_matrix(source)


def test_zero_row_message_names_the_row():
    matrix = M32.copy()
    matrix[2] = 0
    with pytest.raises(InvalidVectorError, match=r"row 2 is all zeros"):
        as_matrix(matrix)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param([], id="empty-list"),
        pytest.param((), id="empty-tuple"),
        pytest.param([[]], id="list-of-empty-list"),
        pytest.param([[], []], id="list-of-empty-lists"),
        pytest.param(np.empty((0, 4), np.float32), id="no-rows"),
        pytest.param(np.empty((3, 0), np.float32), id="no-columns"),
        pytest.param(np.empty(0, np.float32), id="empty-1d"),
        pytest.param(memoryview(b"").cast("f"), id="empty-memoryview"),
        pytest.param(array.array("f"), id="empty-array-array"),
    ],
)
def test_empty_input_is_rejected(source):
    with pytest.raises(InvalidVectorError, match="empty"):
        as_matrix(source)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param([[1.0, 2.0], [3.0]], id="short-second-row"),
        pytest.param([[1.0], [2.0, 3.0]], id="long-second-row"),
        pytest.param([(1.0, 2.0), np.array([1.0, 2.0, 3.0])], id="array-row"),
        pytest.param([[1.0, 2.0], 3.0], id="number-after-row"),
        pytest.param([1.0, [2.0, 3.0]], id="row-after-number"),
    ],
)
def test_ragged_and_mixed_input_is_rejected(source):
    with pytest.raises(InvalidVectorError):
        as_matrix(source)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(["1.0", "2.0"], id="strings-in-list"),
        pytest.param([1.0, None], id="none-in-list"),
        pytest.param([[1.0, "x"]], id="string-in-row"),
        pytest.param([1.0, 2j], id="complex-in-list"),
        pytest.param([True, 2.0], id="bool-in-list"),
        pytest.param([np.bool_(True), 2.0], id="numpy-bool-in-list"),
        pytest.param([1.0, Fraction(1, 3)], id="fraction-in-list"),
        pytest.param([1.0, object()], id="object-in-list"),
        pytest.param([[[1.0, 2.0]]], id="three-dims-list"),
        pytest.param([np.ones((2, 2))], id="list-of-2d-arrays"),
        pytest.param(np.ones((2, 2, 2)), id="three-dims-array"),
        pytest.param(np.array([True, False]), id="bool-array"),
        pytest.param(np.array([1.0, 2.0], dtype=object), id="object-array"),
        pytest.param(np.array([1 + 1j, 2]), id="complex-array"),
        pytest.param(np.array(["1", "2"]), id="string-array"),
        pytest.param(np.array([1, 2], dtype="datetime64[s]"), id="datetime-array"),
        pytest.param(np.float32(1.0), id="numpy-scalar"),
        pytest.param(np.array(1.0, np.float32), id="0-d-array"),
        pytest.param(1.5, id="float"),
        pytest.param(3, id="int"),
        pytest.param("1 2 3", id="str"),
        pytest.param(b"\x00\x00\x80\x3f", id="bytes"),
        pytest.param(bytearray(8), id="bytearray"),
        pytest.param(None, id="none"),
        pytest.param({"a": 1.0}, id="dict"),
        pytest.param({1.0, 2.0}, id="set"),
        pytest.param((x for x in [1.0, 2.0]), id="generator"),
        pytest.param(range(1, 4), id="range"),
        pytest.param(deque([1.0, 2.0]), id="deque"),
        pytest.param(memoryview(np.array([True, False])), id="bool-memoryview"),
    ],
)
def test_non_numeric_or_badly_shaped_input_is_rejected(source):
    with pytest.raises(InvalidVectorError) as info:
        as_matrix(source)
    assert type(info.value) is InvalidVectorError
    assert "expected" in str(info.value) or "must" in str(info.value)


def test_messages_say_where_and_what():
    with pytest.raises(InvalidVectorError, match=r"index 1, got str"):
        as_vector([1.0, "2.0"])
    with pytest.raises(InvalidVectorError, match=r"row 1, column 0, got NoneType"):
        as_matrix([[1.0], [None]])
    with pytest.raises(InvalidVectorError, match=r"row 1 has 1 values but row 0 has 2"):
        as_matrix([[1.0, 2.0], [3.0]])
    with pytest.raises(InvalidVectorError, match=r"at most 2 dimensions"):
        as_matrix([[[1.0]]])
    with pytest.raises(InvalidVectorError, match=r"booleans"):
        as_matrix(np.array([[True]]))


def test_dimension_mismatch_carries_expected_and_got():
    for source in (M32, M32.astype(np.float64), M32.tolist(), V32, V32.tolist()):
        with pytest.raises(DimensionMismatchError) as info:
            as_matrix(source, dim=8)
        assert (info.value.expected, info.value.got) == (8, 7)
    with pytest.raises(DimensionMismatchError) as info:
        as_vector(V32, dim=3)
    assert (info.value.expected, info.value.got) == (3, 7)


def test_dimension_is_checked_only_after_items_are_numbers():
    # Non-numeric items are reported as such, not as a dimension mismatch.
    with pytest.raises(InvalidVectorError) as info:
        as_matrix([["a", "b", "c"]], dim=2)
    assert type(info.value) is InvalidVectorError
    with pytest.raises(InvalidVectorError) as info:
        as_matrix([[1.0, 2.0, 3.0], [1.0, 2.0]], dim=2)
    assert type(info.value) is InvalidVectorError


def test_dimension_is_checked_before_values():
    with pytest.raises(DimensionMismatchError):
        as_matrix([[np.nan, 1.0, 2.0]], dim=2)


def test_as_vector_rejects_several_rows():
    for source in (M32, M32.tolist(), [V32, V32]):
        with pytest.raises(InvalidVectorError, match="exactly one vector") as info:
            as_vector(source)
        assert type(info.value) is InvalidVectorError


class _ClearsOnConversion(int):
    """An accepted number (an int subclass) whose conversion runs Python code that
    empties a list; the converter must notice instead of reading freed items."""

    target: list = []

    def __float__(self):
        self.target.clear()
        return float(int(self))


@pytest.mark.parametrize("nested", [False, True])
def test_list_emptied_while_being_read_is_rejected_not_crashed(nested):
    values = [1.0, _ClearsOnConversion(2), 3.0, 4.0]
    if nested:
        rows = [values, [5.0, 6.0, 7.0, 8.0]]
        _ClearsOnConversion.target = rows
        source = rows
    else:
        _ClearsOnConversion.target = values
        source = values
    with pytest.raises(InvalidVectorError, match="changed while it was read"):
        as_matrix(source)


def test_int_subclasses_convert_through_their_value():
    class Level(int):
        pass

    assert_exactly(as_vector([Level(3), 1.5]), np.array([3.0, 1.5], np.float32))


def test_input_list_is_left_unchanged():
    rows = [[1.0, 2.0], [3.0, 4.0]]
    snapshot = [list(r) for r in rows]
    as_matrix(rows)
    assert rows == snapshot


# --------------------------------------------------------------------------- data_address


def test_data_address_of_views_and_exporters():
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert data_address(matrix) == matrix.__array_interface__["data"][0]
    assert data_address(matrix[1:]) == data_address(matrix) + 16
    assert data_address(matrix[::-1]) == data_address(matrix[2])
    assert data_address(memoryview(matrix)) == data_address(matrix)
    dates = np.array([1, 2], dtype="datetime64[s]")  # numpy exports no buffer for these
    assert data_address(dates) == dates.__array_interface__["data"][0]
    with pytest.raises(TypeError):
        data_address([1.0, 2.0])


# --------------------------------------------------------------------------- properties

finite_float32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
any_double = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(any_double, min_size=3, max_size=3), min_size=1, max_size=6))
def test_lists_of_doubles_match_numpy_or_are_rejected(rows):
    with np.errstate(over="ignore", invalid="ignore"):
        expected = np.asarray(rows, dtype=np.float32)
    valid = np.isfinite(expected).all() and (expected != 0).any(axis=1).all()
    if valid:
        assert_exactly(as_matrix(rows), expected)
        assert_exactly(as_matrix(np.array(rows)), expected)
    else:
        with pytest.raises(InvalidVectorError):
            as_matrix(rows)
        with pytest.raises(InvalidVectorError):
            as_matrix(np.array(rows))


@settings(max_examples=100, deadline=None)
@given(st.lists(finite_float32, min_size=1, max_size=40))
def test_float32_round_trip_is_exact(values):
    expected = np.asarray(values, dtype=np.float32)
    if not expected.any():
        with pytest.raises(InvalidVectorError):
            as_vector(values)
        return
    assert_exactly(as_vector(values), expected)
    assert_zero_copy(as_vector(expected), expected)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=-(2**70), max_value=2**70), min_size=1, max_size=8))
def test_python_ints_match_numpy(values):
    expected = np.asarray(values, dtype=np.float32)
    if not expected.any():
        with pytest.raises(InvalidVectorError):
            as_vector(values)
    else:
        assert_exactly(as_vector(values), expected)
