# cython: language_level=3
# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# (The directives repeat setup.py's so that an in-place ``cythonize -i`` build behaves the same.)
"""ferromem._buffers: the data plane's intake of vectors.

Whatever the caller holds becomes one float32, C-contiguous, aligned matrix that the
native engine can read through a pointer:

* ``as_matrix(obj, dim=None)`` -> ndarray float32 (n, d); a 1-D input gives (1, d).
* ``as_vector(obj, dim=None)`` -> ndarray float32 (d,); exactly one vector.
* ``data_address(obj)`` -> int: the address of the first element of a buffer.

This is the one intake of vectors: the facade and the reference engine both read vectors
through it (there is no NumPy twin; the module is built with the package). The contract,
in the order the checks run:

Accepted inputs
    * ``numpy.ndarray`` (and subclasses), any PEP 3118 buffer exporter (memoryview,
      array.array, ...) and objects with ``__array__`` / ``__array_interface__``, of a
      real dtype: float (16/32/64/longdouble), signed or unsigned int. bool, complex,
      object, string, datetime and structured dtypes are rejected.
    * ``list`` / ``tuple`` of numbers (one vector) or of rows (a matrix), where a row is a
      list / tuple of numbers or a 1-D array-like as above. A number is an ``int``
      (not ``bool``), a ``float``, a NumPy integer or floating scalar, or a 0-d array of
      a real dtype. Whether the input is one vector or a matrix is decided by its first
      item: a list, tuple or array-like of at least one dimension makes it a matrix.
    * Anything else (str, bytes, bytearray, None, scalars, dicts, sets, generators, range,
      ...) is rejected.
    Every rejection is an ``InvalidVectorError`` saying what was expected.

Shape
    0-d or more than 2 dimensions: InvalidVectorError. ``as_vector`` with more than one
    row: InvalidVectorError. No rows or no columns: InvalidVectorError. Ragged rows:
    InvalidVectorError. Then, and only after every item was read as a number,
    ``dim`` given and different from d: ``DimensionMismatchError(expected=dim, got=d)``.

Values (checked on the float32 values, after conversion)
    NaN or +-inf (including float64 values beyond float32's range): InvalidVectorError
    naming the row and column. A row of zeros (0.0 or -0.0 only): InvalidVectorError
    ("a zero vector has no direction"). Rows are checked in order; the first bad row is
    reported.

Copies
    No copy when the input already is a float32 (native byte order), C-contiguous,
    4-byte aligned buffer: the result shares the caller's memory (read-only stays
    read-only). An unaligned float32 buffer is copied, because the engine reads it as
    ``&[f32]``, which must be aligned. Everything else is converted exactly once, with
    the same rounding as ``numpy.asarray(x, dtype=numpy.float32)``: a Python int goes
    through float64 (``float(i)``), a NumPy scalar or 0-d array is cast straight to
    float32 (``numpy.float32(s)``, one rounding; this differs for 64-bit ints and long
    doubles), arrays are cast by numpy.
"""

from cpython.buffer cimport PyBUF_RECORDS_RO, PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer
from cpython.bool cimport PyBool_Check
from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.float cimport PyFloat_Check
from cpython.list cimport PyList_Check
from cpython.long cimport PyLong_Check
from cpython.object cimport PyObject
from cpython.pystate cimport PyThreadState
from cpython.tuple cimport PyTuple_Check
from libc.math cimport isfinite
from libc.stdint cimport uint32_t, uintptr_t
from libc.string cimport memcpy

import operator

import numpy as np

from ferromem.exceptions import DimensionMismatchError, InvalidVectorError

__all__ = ["as_matrix", "as_vector", "data_address"]


cdef extern from "Python.h":
    # The per-item fast path works on borrowed pointers: these take PyObject* so that
    # Cython adds no reference counting around each of the millions of items.
    bint _float_check_exact "PyFloat_CheckExact" (PyObject* o) noexcept
    bint _long_check_exact "PyLong_CheckExact" (PyObject* o) noexcept
    double _long_as_double "PyLong_AsDouble" (PyObject* o) noexcept
    PyThreadState* PyEval_SaveThread() noexcept
    void PyEval_RestoreThread(PyThreadState* state) noexcept


cdef extern from *:
    """
    /* Reading the items of a list or tuple, and the value of a float.
     *
     * The ordinary build reads a list's or tuple's item array in place and a float's
     * value without a check (PySequence_Fast_ITEMS, PyFloat_AS_DOUBLE). The stable-ABI
     * build (Py_LIMITED_API: setup.py's FERROMEM_ABI3=1, the wheel carried to another
     * Python) has neither, because both read the objects' layout: there each item is
     * fetched by the checked calls, which return the same borrowed references, and the
     * item array is NULL (never dereferenced). The callers check a sequence's size before
     * reading an index, so the checked calls never fail.
     */
    #if defined(Py_LIMITED_API)
      #define ferromem_seq_items(seq) ((PyObject **)NULL)
      static inline PyObject *ferromem_seq_item(PyObject *seq, PyObject **items, Py_ssize_t i) {
          (void)items;
          return PyList_Check(seq) ? PyList_GetItem(seq, i) : PyTuple_GetItem(seq, i);
      }
      static inline Py_ssize_t ferromem_seq_size(PyObject *seq) {
          return PyList_Check(seq) ? PyList_Size(seq) : PyTuple_Size(seq);
      }
      #define ferromem_float_value(o) PyFloat_AsDouble(o)
    #else
      #define ferromem_seq_items(seq) PySequence_Fast_ITEMS(seq)
      #define ferromem_seq_item(seq, items, i) ((items)[i])
      #define ferromem_seq_size(seq) PySequence_Fast_GET_SIZE(seq)
      #define ferromem_float_value(o) PyFloat_AS_DOUBLE(o)
    #endif
    """
    # seq: a list or a tuple (the callers check which), never anything else.
    PyObject** _seq_items "ferromem_seq_items" (object seq) noexcept
    PyObject* _seq_item "ferromem_seq_item" (object seq, PyObject** items, Py_ssize_t i) noexcept
    Py_ssize_t _seq_size "ferromem_seq_size" (object seq) noexcept
    # o: a float or an instance of a subclass of float (never calls __float__).
    double _float_value "ferromem_float_value" (PyObject* o) noexcept


cdef object _ndarray = np.ndarray
cdef object _float32 = np.dtype(np.float32)
cdef object _float64 = np.dtype(np.float64)
cdef object _float32_scalar = np.float32
cdef object _empty = np.empty
cdef object _asarray = np.asarray
cdef object _errstate = np.errstate
cdef tuple _numpy_real_scalars = (np.integer, np.floating)
cdef tuple _text_types = (str, bytes, bytearray)

# Releasing the GIL costs little, but taking it back can wait a whole switch interval
# (5 ms) while another thread runs Python code; only release it when the pass over the
# values is long enough to be worth that risk (65536 values: about 6 us of work).
cdef Py_ssize_t _NOGIL_MIN_VALUES = 1 << 16

cdef enum RowStatus:
    ROW_OK = 0
    ROW_NOT_FINITE = 1
    ROW_ALL_ZERO = 2

cdef enum:
    _MAGNITUDE_BITS = 0x7FFFFFFF  # every bit of a float32 but the sign
    _EXPONENT_STEP = 0x00800000  # one unit of the exponent field


# --------------------------------------------------------------------------- validation

cdef inline int _row_status(const float* row, Py_ssize_t d) noexcept nogil:
    """ROW_OK, ROW_NOT_FINITE or ROW_ALL_ZERO for one row of d floats.

    Branch-free on the IEEE-754 bits, so that the compiler vectorises it (baseline SSE2:
    four values per step). With m = the bits without the sign:
    * the value is +-0.0 iff m == 0, so OR-ing every m tells whether any value is not 0;
    * the value is inf or NaN iff m >= 0x7F800000 (exponent all ones), i.e. iff
      m + 0x00800000 reaches bit 31 (m <= 0x7FFFFFFF, so the sum never wraps), so OR-ing
      the sums and testing bit 31 tells whether any value is not finite.
    That is 4 operations per step; comparing the exponent field measured 1.7x slower,
    isfinite() 2.6x slower. (memcpy is the defined way to read a float's bits; it
    compiles to a plain load.)
    """
    cdef uint32_t bits, magnitude
    cdef uint32_t any_nonzero = 0
    cdef uint32_t any_not_finite = 0
    cdef Py_ssize_t j
    for j in range(d):
        memcpy(&bits, &row[j], sizeof(float))
        magnitude = bits & _MAGNITUDE_BITS
        any_nonzero |= magnitude
        any_not_finite |= magnitude + _EXPONENT_STEP
    if any_not_finite >> 31:
        return ROW_NOT_FINITE
    if any_nonzero == 0:
        return ROW_ALL_ZERO
    return ROW_OK


cdef Py_ssize_t _first_invalid_row(const float* data, Py_ssize_t n, Py_ssize_t d,
                                   int* status) noexcept nogil:
    """Index of the first row that is not finite or is all zeros, or -1."""
    cdef Py_ssize_t i
    cdef int row_status
    for i in range(n):
        row_status = _row_status(data + i * d, d)
        if row_status != ROW_OK:
            status[0] = row_status
            return i
    return -1


cdef int _raise_invalid_row(const float* row, Py_ssize_t d, Py_ssize_t row_index,
                            int status, bint one_vector) except -1:
    cdef Py_ssize_t j = 0
    if status == ROW_ALL_ZERO:
        where = "the vector is" if one_vector else f"row {row_index} is"
        raise InvalidVectorError(
            f"{where} all zeros: a zero vector has no direction, so cosine similarity "
            "is undefined for it; check the embedding call that produced it"
        )
    for j in range(d):
        if not isfinite(row[j]):
            break
    where = f"at index {j}" if one_vector else f"at row {row_index}, column {j}"
    raise InvalidVectorError(
        f"non-finite value {float(row[j])!r} {where}: every value must be a finite "
        "float32 number (no NaN, no infinity, magnitude at most about 3.4e38)"
    )


cdef int _validate(object matrix, bint one_vector) except -1:
    """Raises InvalidVectorError for the first row with NaN/inf or all zeros."""
    cdef const float[:, ::1] view = matrix
    cdef Py_ssize_t n = view.shape[0]
    cdef Py_ssize_t d = view.shape[1]
    cdef const float* data = &view[0, 0]
    cdef int status = ROW_OK
    cdef Py_ssize_t bad_row
    cdef PyThreadState* released = NULL
    # The GIL is released by hand rather than with `with nogil:` so that the scan has
    # one call site: Cython's conditional nogil needs a constant condition, and the two
    # inlined copies of the loop that an if/else produces measured 1.6x slower (code
    # placement), 55 us instead of 34 us for 256 x 1536 values.
    if n * d >= _NOGIL_MIN_VALUES:
        released = PyEval_SaveThread()
    bad_row = _first_invalid_row(data, n, d, &status)  # noexcept nogil: safe without the GIL
    if released != NULL:
        PyEval_RestoreThread(released)
    if bad_row >= 0:
        _raise_invalid_row(data + bad_row * d, d, bad_row, status, one_vector)
    return 0


# --------------------------------------------------------------------------- shape checks

cdef object _dim_argument(object dim):
    # dim comes from the facade (the store's dimension); any int is taken as is, so a
    # nonsensical one simply never matches and reports DimensionMismatchError.
    if dim is None:
        return None
    return operator.index(dim)


cdef int _check_rows(Py_ssize_t n, Py_ssize_t d, bint one_vector, object shape) except -1:
    if one_vector and n != 1:
        raise InvalidVectorError(
            f"expected exactly one vector, got {n} (shape {shape}); pass a batch of "
            "vectors with a list of ids instead"
        )
    if n == 0 or d == 0:
        raise InvalidVectorError(
            f"empty input (shape {shape}): expected at least one vector of at least one value"
        )
    return 0


cdef int _check_dim(Py_ssize_t d, object dim, bint one_vector) except -1:
    if dim is not None and d != dim:
        what = "a vector" if one_vector else "vectors"
        raise DimensionMismatchError(
            f"expected {what} of dimension {dim}, got dimension {d}; use the same "
            "embedding model as the store's first vectors, or reset() the store (or "
            "open a new one) to change the dimension",
            expected=dim,
            got=d,
        )
    return 0


# --------------------------------------------------------------------------- arrays

cdef str _kind_problem(object dtype):
    """None when the dtype holds real numbers, else the reason it is refused."""
    cdef str kind = dtype.kind
    if kind == "f" or kind == "i" or kind == "u":
        return None
    if kind == "b":
        return "got booleans"
    if kind == "c":
        return "got complex numbers"
    if kind == "O":
        return "got Python objects (dtype object): convert them to a numeric array first"
    if kind == "U" or kind == "S":
        return f"got strings (dtype {dtype}); embed the text first and pass the embedding"
    return f"got dtype {dtype}"


cdef object _read_array(object obj, str what):
    """np.asarray(obj) (a view when obj exposes a buffer), errors as InvalidVectorError."""
    try:
        return _asarray(obj)
    except (TypeError, ValueError, BufferError) as exc:
        raise InvalidVectorError(
            f"cannot read {what} ({type(obj).__name__}) as an array of numbers: {exc}"
        ) from exc


cdef object _matrix_from_array(object arr, object dim, bint one_vector):
    cdef Py_ssize_t n, d
    dtype = arr.dtype
    problem = _kind_problem(dtype)
    if problem is not None:
        raise InvalidVectorError(f"vector values must be real numbers (float or int), {problem}")
    ndim = arr.ndim
    if ndim == 1:
        n = 1
        d = arr.shape[0]
    elif ndim == 2:
        n = arr.shape[0]
        d = arr.shape[1]
    else:
        raise InvalidVectorError(
            f"expected one vector (1-D) or a matrix of vectors (2-D), got {ndim} "
            f"dimensions (shape {arr.shape})"
        )
    _check_rows(n, d, one_vector, arr.shape)
    _check_dim(d, dim, one_vector)
    if ndim == 1:
        arr = arr.reshape(1, d)  # always a view, whatever the strides

    if dtype == _float32:
        flags = arr.flags
        if flags.c_contiguous and flags.aligned:
            _validate(arr, one_vector)  # zero copy: the caller's own memory
            return arr

    # Any other dtype or layout: numpy's cast, exactly one copy (a fused cast-and-check
    # loop for float64 measured no faster than numpy's run-time dispatched SIMD cast plus
    # the check). Values beyond float32's range become inf and are reported by the
    # check, so the cast's overflow warning is redundant.
    with _errstate(over="ignore", invalid="ignore"):
        out = arr.astype(_float32, order="C")
    _validate(out, one_vector)
    return out


cdef bint _is_array_like(object obj):
    """An ndarray, a buffer exporter or an object numpy converts through __array__*.

    Text and NumPy scalars expose buffers too, but they are not vectors.
    """
    if isinstance(obj, _ndarray):
        return True
    if isinstance(obj, _text_types) or isinstance(obj, np.generic):
        return False
    if PyObject_CheckBuffer(obj):
        return True
    cls = type(obj)
    return (hasattr(cls, "__array__") or hasattr(cls, "__array_interface__")
            or hasattr(cls, "__array_struct__"))


# --------------------------------------------------------------------------- lists

cdef bint _is_number(object item):
    """True for the values a list may hold: int (not bool), float, numpy real scalars."""
    if PyFloat_Check(item):
        return True
    if PyLong_Check(item):
        return not PyBool_Check(item)
    if isinstance(item, _numpy_real_scalars):
        return True
    if isinstance(item, _ndarray):
        return item.ndim == 0 and _kind_problem(item.dtype) is None
    return False


cdef str _position(Py_ssize_t row, Py_ssize_t col):
    return f"index {col}" if row < 0 else f"row {row}, column {col}"


cdef double _number_slow(object item, Py_ssize_t row, Py_ssize_t col) except? -1.0:
    """The value of any accepted number that is not an exact float or int."""
    if not _is_number(item):
        if PyList_Check(item) or PyTuple_Check(item) or _is_array_like(item):
            hint = (": vectors have at most 2 dimensions" if row >= 0 else
                    ": a vector is a flat list of numbers and a matrix a list of such "
                    "lists; do not mix numbers and lists")
        elif isinstance(item, _text_types):
            hint = ": embed the text first and pass the embedding"
        elif PyBool_Check(item) or isinstance(item, np.bool_):
            hint = ": booleans are not vector values"
        else:
            hint = ""
        raise InvalidVectorError(
            f"expected a number (int or float) at {_position(row, col)}, got "
            f"{type(item).__name__}{hint}"
        )
    if PyFloat_Check(item):  # float subclasses, numpy.float64 among them
        return _float_value(<PyObject*>item)
    if PyLong_Check(item):  # int subclasses: via float64, as numpy does for Python ints
        try:
            return float(item)
        except OverflowError:
            # Only an int beyond float64's range gets here; it is beyond float32's too.
            raise InvalidVectorError(
                f"non-finite value at {_position(row, col)}: the integer is too large "
                "for float32 (magnitude at most about 3.4e38)"
            ) from None
    return _numpy_number(item)


cdef double _numpy_number(object item) except? -1.0:
    """A NumPy scalar or 0-d array, cast to float32 the way numpy casts it.

    numpy converts its own scalars to float32 in one rounding; float(item) would round
    to float64 first, which differs for 64-bit integers and long doubles. The float32
    result is exact as a double.
    """
    if type(item) is _float32_scalar:
        return float(item)
    dtype = item.dtype
    if dtype.kind == "f" and dtype.itemsize > 4:
        # A float64 0-d array or a long double may overflow float32: inf, reported by
        # the check; numpy's warning about it would be redundant.
        with _errstate(over="ignore", invalid="ignore"):
            return float(_float32_scalar(item))
    return float(_float32_scalar(item))


cdef int _fill_numbers(object seq, float* dst, Py_ssize_t d, Py_ssize_t row) except -1:
    """Writes the d numbers of a list or tuple to dst (row < 0: a flat vector).

    Exact floats and ints are read in C straight from the list's item array; anything
    else goes through _number_slow, which may run Python code (__float__, __index__)
    that could resize the list: the item array is then fetched again and its length
    checked, so a borrowed pointer is never used after the list changed.
    """
    cdef PyObject** items = _seq_items(seq)
    cdef PyObject* item
    cdef double value
    cdef Py_ssize_t j
    for j in range(d):
        item = _seq_item(seq, items, j)
        if _float_check_exact(item):
            value = _float_value(item)
        elif _long_check_exact(item):
            value = _long_as_double(item)
            if value == -1.0 and PyErr_Occurred() != NULL:
                PyErr_Clear()  # overflow: _number_slow raises the proper error
                value = _number_slow(<object>item, row, j)
        else:
            held = <object>item  # a strong reference while Python code may run
            value = _number_slow(held, row, j)
            if _seq_size(seq) != d:
                raise InvalidVectorError("the list of vector values changed while it was read")
            items = _seq_items(seq)
        dst[j] = <float>value
    return 0


cdef object _row_array(object row, Py_ssize_t i):
    """A row that is not a list or tuple, as a 1-D numeric ndarray."""
    if not _is_array_like(row):
        raise InvalidVectorError(
            f"expected row {i} to be a vector (a list of numbers or a 1-D array), got "
            f"{type(row).__name__}: a matrix is a list of vectors"
        )
    arr = _read_array(row, f"row {i}")
    problem = _kind_problem(arr.dtype)
    if problem is not None:
        raise InvalidVectorError(f"row {i}: vector values must be real numbers, {problem}")
    if arr.ndim != 1:
        raise InvalidVectorError(
            f"row {i} has shape {arr.shape}, expected a 1-D vector: vectors have at most 2 "
            "dimensions"
        )
    return arr


cdef int _copy_array_row(object arr, float* dst, Py_ssize_t d, object out, Py_ssize_t i) except -1:
    cdef const float[:] f32
    cdef const double[:] f64
    cdef Py_ssize_t j
    dtype = arr.dtype
    if dtype == _float32 and arr.flags.aligned:
        f32 = arr
        for j in range(d):
            dst[j] = f32[j]
    elif dtype == _float64 and arr.flags.aligned:
        f64 = arr
        for j in range(d):
            dst[j] = <float>f64[j]
    else:
        with _errstate(over="ignore", invalid="ignore"):
            out[i] = arr
    return 0


cdef object _matrix_from_sequence(object seq, object dim, bint one_vector):
    cdef Py_ssize_t count = _seq_size(seq)
    cdef Py_ssize_t n, d, i, length
    cdef float[:, ::1] target
    if count == 0:
        raise InvalidVectorError(
            f"empty input (an empty {type(seq).__name__}): expected at least one vector "
            "of at least one value"
        )
    first = <object>_seq_item(seq, _seq_items(seq), 0)

    if not (PyList_Check(first) or PyTuple_Check(first)
            or (_is_array_like(first) and not _is_number(first))):
        # A flat sequence of numbers: one vector.
        _check_rows(1, count, one_vector, (count,))
        out = _empty((1, count), dtype=_float32)
        target = out
        _fill_numbers(seq, &target[0, 0], count, -1)
        _check_dim(count, dim, one_vector)
        _validate(out, one_vector)
        return out

    # A sequence of rows: a matrix. Row 0 fixes the length.
    n = count
    first_array = None
    if PyList_Check(first) or PyTuple_Check(first):
        d = _seq_size(first)
    else:
        first_array = _row_array(first, 0)
        d = first_array.shape[0]
    _check_rows(n, d, one_vector, (n, d))
    out = _empty((n, d), dtype=_float32)
    target = out
    for i in range(n):
        if _seq_size(seq) != n:
            raise InvalidVectorError("the list of vectors changed while it was read")
        row = <object>_seq_item(seq, _seq_items(seq), i)  # a strong reference for the loop
        if PyList_Check(row) or PyTuple_Check(row):
            length = _seq_size(row)
            if length != d:
                raise _ragged(i, length, d)
            _fill_numbers(row, &target[i, 0], d, i)
        else:
            row_array = first_array if i == 0 else _row_array(row, i)
            length = row_array.shape[0]
            if length != d:
                raise _ragged(i, length, d)
            _copy_array_row(row_array, &target[i, 0], d, out, i)
    _check_dim(d, dim, one_vector)
    _validate(out, one_vector)
    return out


cdef object _ragged(Py_ssize_t i, Py_ssize_t length, Py_ssize_t d):
    return InvalidVectorError(
        f"vectors are ragged: row {i} has {length} values but row 0 has {d}; every vector "
        "must have the same number of values"
    )


# --------------------------------------------------------------------------- entry points

cdef object _to_matrix(object obj, object dim, bint one_vector):
    dim = _dim_argument(dim)
    if type(obj) is _ndarray:
        return _matrix_from_array(obj, dim, one_vector)
    if PyList_Check(obj) or PyTuple_Check(obj):
        return _matrix_from_sequence(obj, dim, one_vector)
    if isinstance(obj, _text_types):
        raise InvalidVectorError(
            f"a vector must be a sequence of numbers, got {type(obj).__name__}; embed the "
            "text first and pass the embedding (for raw float32 bytes use "
            "numpy.frombuffer(data, dtype=numpy.float32))"
        )
    if _is_array_like(obj) or isinstance(obj, np.generic):
        arr = _read_array(obj, "the vectors")
        if arr.ndim == 0:
            raise InvalidVectorError(
                f"expected one vector (1-D) or a matrix of vectors (2-D), got a single "
                f"number ({type(obj).__name__})"
            )
        return _matrix_from_array(arr, dim, one_vector)
    if PyFloat_Check(obj) or PyLong_Check(obj):
        raise InvalidVectorError(
            f"expected one vector (1-D) or a matrix of vectors (2-D), got a single number "
            f"({type(obj).__name__})"
        )
    raise InvalidVectorError(
        "expected vectors as a NumPy array, a buffer (memoryview, array.array), a list of "
        f"numbers or a list of lists of numbers, got {type(obj).__name__}"
    )


def as_matrix(obj, dim=None):
    """Returns ``obj`` as a float32, C-contiguous, aligned 2-D array (n, d).

    A 1-D input gives (1, d). No copy when ``obj`` already is such a float32 buffer: the
    result shares its memory. ``dim``: the required dimension d, or None.

    Raises InvalidVectorError (empty, ragged, non-numeric, more than 2 dimensions,
    NaN/inf, an all-zero row) or DimensionMismatchError (``dim`` given and different).
    """
    return _to_matrix(obj, dim, False)


def as_vector(obj, dim=None):
    """Returns ``obj`` as one float32, C-contiguous, aligned vector (d,).

    Same rules as :func:`as_matrix` for exactly one vector; a 2-D input with one row is
    accepted and returned as a view of that row, one with several rows is an error.
    """
    return _to_matrix(obj, dim, True)[0]


def data_address(obj):
    """The address of the first element of ``obj``'s buffer (``obj`` must export one).

    For tests and diagnostics: two objects with the same address share memory.
    """
    cdef Py_buffer view
    try:
        PyObject_GetBuffer(obj, &view, PyBUF_RECORDS_RO)
    except (BufferError, ValueError):
        if isinstance(obj, _ndarray):  # dtypes numpy does not export (datetime64, ...)
            return obj.__array_interface__["data"][0]
        raise
    try:
        return <uintptr_t>view.buf
    finally:
        PyBuffer_Release(&view)
