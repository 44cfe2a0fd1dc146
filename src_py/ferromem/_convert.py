"""Pure-NumPy twin of the Cython data plane (``ferromem._buffers``).

Both modules expose ``as_matrix`` and ``as_vector`` and must behave identically (same
results bit for bit, same error classes); the facade uses the compiled one when it
loads and this one otherwise. The contract, in the order the checks run, is written
out in ``src_cython/ferromem/_buffers.pyx``; in short:

* Accepted: an ndarray, a buffer exporter (memoryview, array.array) or an object with
  ``__array__``/``__array_interface__``/``__array_struct__`` of a real dtype (float,
  signed or unsigned int); a list/tuple of numbers (one vector) or of rows (a matrix),
  where a number is an int (not bool), a float, a NumPy real scalar or a 0-d real array,
  and a row is a list/tuple of numbers or a 1-D array-like. The first item decides
  whether a sequence is one vector or a matrix. Everything else is refused.
* Shape: 1-D or 2-D, at least one row of at least one value, rows of equal length;
  ``as_vector`` takes exactly one row. Then ``dim``, then the values: no NaN/inf (also
  after rounding to float32), no all-zero row; the first bad row is reported.
* No copy when the input already is a float32 (native order), C-contiguous, aligned
  buffer. Anything else is converted once, rounding like
  ``numpy.asarray(x, dtype=numpy.float32)`` (Python ints go through float64).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from .exceptions import DimensionMismatchError, InvalidVectorError

__all__ = ["as_matrix", "as_vector"]

_TEXT_TYPES = (str, bytes, bytearray)
_NUMPY_REAL_SCALARS = (np.integer, np.floating)


# --------------------------------------------------------------------------- checks


def _check_rows(n: int, d: int, one_vector: bool, shape: tuple) -> None:
    if one_vector and n != 1:
        raise InvalidVectorError(
            f"expected exactly one vector, got {n} (shape {shape}); pass a batch of "
            "vectors with a list of ids instead"
        )
    if n == 0 or d == 0:
        raise InvalidVectorError(
            f"empty input (shape {shape}): expected at least one vector of at least one value"
        )


def _check_dim(d: int, dim: int | None, one_vector: bool) -> None:
    if dim is not None and d != dim:
        what = "a vector" if one_vector else "vectors"
        raise DimensionMismatchError(
            f"expected {what} of dimension {dim}, got dimension {d}; use the same "
            "embedding model as the store's first vectors, or reset() the store (or "
            "open a new one) to change the dimension",
            expected=dim,
            got=d,
        )


def _validate(matrix: np.ndarray, one_vector: bool) -> None:
    """Raises InvalidVectorError for the first row with NaN/inf or all zeros."""
    finite = np.isfinite(matrix)
    finite_rows = finite.all(axis=1)
    nonzero_rows = (matrix != 0).any(axis=1)
    bad_rows = ~(finite_rows & nonzero_rows)
    if not bad_rows.any():
        return
    row = int(np.argmax(bad_rows))
    if finite_rows[row]:
        where = "the vector is" if one_vector else f"row {row} is"
        raise InvalidVectorError(
            f"{where} all zeros: a zero vector has no direction, so cosine similarity "
            "is undefined for it; check the embedding call that produced it"
        )
    column = int(np.argmin(finite[row]))
    where = f"at index {column}" if one_vector else f"at row {row}, column {column}"
    raise InvalidVectorError(
        f"non-finite value {float(matrix[row, column])!r} {where}: every value must be a "
        "finite float32 number (no NaN, no infinity, magnitude at most about 3.4e38)"
    )


def _kind_problem(dtype: np.dtype) -> str | None:
    """None when the dtype holds real numbers, else the reason it is refused."""
    kind = dtype.kind
    if kind in "fiu":
        return None
    if kind == "b":
        return "got booleans"
    if kind == "c":
        return "got complex numbers"
    if kind == "O":
        return "got Python objects (dtype object): convert them to a numeric array first"
    if kind in "US":
        return f"got strings (dtype {dtype}); embed the text first and pass the embedding"
    return f"got dtype {dtype}"


# --------------------------------------------------------------------------- arrays


def _is_array_like(obj: Any) -> bool:
    """An ndarray, a buffer exporter or an object numpy converts through __array__*.
    Text and NumPy scalars expose buffers too, but they are not vectors."""
    if isinstance(obj, np.ndarray):
        return True
    if isinstance(obj, _TEXT_TYPES) or isinstance(obj, np.generic):
        return False
    try:
        memoryview(obj).release()
        return True
    except TypeError:
        pass
    cls = type(obj)
    return (
        hasattr(cls, "__array__") or hasattr(cls, "__array_interface__") or hasattr(cls, "__array_struct__")
    )


def _read_array(obj: Any, what: str) -> np.ndarray:
    """np.asarray(obj) (a view when obj exposes a buffer), errors as InvalidVectorError."""
    try:
        return np.asarray(obj)
    except (TypeError, ValueError, BufferError) as exc:
        raise InvalidVectorError(
            f"cannot read {what} ({type(obj).__name__}) as an array of numbers: {exc}"
        ) from exc


def _matrix_from_array(arr: np.ndarray, dim: int | None, one_vector: bool) -> np.ndarray:
    problem = _kind_problem(arr.dtype)
    if problem is not None:
        raise InvalidVectorError(f"vector values must be real numbers (float or int), {problem}")
    if arr.ndim == 1:
        n, d = 1, arr.shape[0]
    elif arr.ndim == 2:
        n, d = arr.shape
    else:
        raise InvalidVectorError(
            f"expected one vector (1-D) or a matrix of vectors (2-D), got {arr.ndim} "
            f"dimensions (shape {arr.shape})"
        )
    _check_rows(n, d, one_vector, arr.shape)
    _check_dim(d, dim, one_vector)
    if arr.ndim == 1:
        arr = arr.reshape(1, d)  # a view
    if arr.dtype == np.float32 and arr.flags.c_contiguous and arr.flags.aligned:
        _validate(arr, one_vector)
        return arr  # zero copy: the caller's own memory
    # Values beyond float32's range become inf here and are reported by _validate, so
    # the cast's overflow warning is redundant.
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32, order="C")
    _validate(out, one_vector)
    return out


# --------------------------------------------------------------------------- sequences


def _is_number(item: Any) -> bool:
    """int (not bool), float, NumPy real scalars, 0-d arrays of a real dtype."""
    if isinstance(item, float):
        return True
    if isinstance(item, int):
        return not isinstance(item, bool)
    if isinstance(item, _NUMPY_REAL_SCALARS):
        return True
    if isinstance(item, np.ndarray):
        return item.ndim == 0 and _kind_problem(item.dtype) is None
    return False


def _position(row: int, column: int) -> str:
    return f"index {column}" if row < 0 else f"row {row}, column {column}"


def _number(item: Any, row: int, column: int) -> float:
    """The value of one accepted number, rounded as numpy.asarray(..., float32) would."""
    if not _is_number(item):
        if isinstance(item, (list, tuple)) or _is_array_like(item):
            hint = (
                ": vectors have at most 2 dimensions"
                if row >= 0
                else ": a vector is a flat list of numbers and a matrix a list of such "
                "lists; do not mix numbers and lists"
            )
        elif isinstance(item, _TEXT_TYPES):
            hint = ": embed the text first and pass the embedding"
        elif isinstance(item, (bool, np.bool_)):
            hint = ": booleans are not vector values"
        else:
            hint = ""
        raise InvalidVectorError(
            f"expected a number (int or float) at {_position(row, column)}, got {type(item).__name__}{hint}"
        )
    if isinstance(item, float):  # float subclasses, numpy.float64 among them
        return float(item)
    if isinstance(item, int):  # int subclasses: via float64, as numpy does for Python ints
        try:
            return float(item)
        except OverflowError:
            raise InvalidVectorError(
                f"non-finite value at {_position(row, column)}: the integer is too large "
                "for float32 (magnitude at most about 3.4e38)"
            ) from None
    # A NumPy scalar or 0-d array: numpy casts its own numbers to float32 in one rounding
    # (float(item) would round to float64 first, which differs for 64-bit integers and
    # long doubles). The float32 result is exact as a float64.
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.float32(item))


def _row_of_numbers(values: list[float]) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.array(values, dtype=np.float64).astype(np.float32)


def _row_array(row: Any, index: int) -> np.ndarray:
    """A row that is not a list or tuple, as a 1-D numeric ndarray."""
    if not _is_array_like(row):
        raise InvalidVectorError(
            f"expected row {index} to be a vector (a list of numbers or a 1-D array), got "
            f"{type(row).__name__}: a matrix is a list of vectors"
        )
    arr = _read_array(row, f"row {index}")
    problem = _kind_problem(arr.dtype)
    if problem is not None:
        raise InvalidVectorError(f"row {index}: vector values must be real numbers, {problem}")
    if arr.ndim != 1:
        raise InvalidVectorError(
            f"row {index} has shape {arr.shape}, expected a 1-D vector: vectors have at most 2 dimensions"
        )
    return arr


def _ragged(index: int, length: int, d: int) -> InvalidVectorError:
    return InvalidVectorError(
        f"vectors are ragged: row {index} has {length} values but row 0 has {d}; every "
        "vector must have the same number of values"
    )


def _matrix_from_sequence(seq: list | tuple, dim: int | None, one_vector: bool) -> np.ndarray:
    count = len(seq)
    if count == 0:
        raise InvalidVectorError(
            f"empty input (an empty {type(seq).__name__}): expected at least one vector of at least one value"
        )
    first = seq[0]
    if not (isinstance(first, (list, tuple)) or (_is_array_like(first) and not _is_number(first))):
        # A flat sequence of numbers: one vector.
        _check_rows(1, count, one_vector, (count,))
        out = _row_of_numbers([_number(item, -1, j) for j, item in enumerate(seq)])
        out = out.reshape(1, count)
        _check_dim(count, dim, one_vector)
        _validate(out, one_vector)
        return out

    # A sequence of rows: a matrix. Row 0 fixes the length.
    first_array = None
    if isinstance(first, (list, tuple)):
        d = len(first)
    else:
        first_array = _row_array(first, 0)
        d = first_array.shape[0]
    _check_rows(count, d, one_vector, (count, d))
    out = np.empty((count, d), dtype=np.float32)
    for i, row in enumerate(seq):
        if isinstance(row, (list, tuple)):
            if len(row) != d:
                raise _ragged(i, len(row), d)
            out[i] = _row_of_numbers([_number(item, i, j) for j, item in enumerate(row)])
        else:
            row_array = first_array if i == 0 else _row_array(row, i)
            if row_array.shape[0] != d:
                raise _ragged(i, row_array.shape[0], d)
            with np.errstate(over="ignore", invalid="ignore"):
                out[i] = row_array  # numpy's cast, as numpy.asarray would do
    _check_dim(d, dim, one_vector)
    _validate(out, one_vector)
    return out


# --------------------------------------------------------------------------- entry points


def _to_matrix(obj: Any, dim: Any, one_vector: bool) -> np.ndarray:
    # dim comes from the facade (the store's dimension); any int is taken as is.
    dim = None if dim is None else operator.index(dim)
    if type(obj) is np.ndarray:
        return _matrix_from_array(obj, dim, one_vector)
    if isinstance(obj, (list, tuple)):
        return _matrix_from_sequence(obj, dim, one_vector)
    if isinstance(obj, _TEXT_TYPES):
        raise InvalidVectorError(
            f"a vector must be a sequence of numbers, got {type(obj).__name__}; embed the "
            "text first and pass the embedding (for raw float32 bytes use "
            "numpy.frombuffer(data, dtype=numpy.float32))"
        )
    if _is_array_like(obj) or isinstance(obj, np.generic):
        arr = _read_array(obj, "the vectors")
        if arr.ndim == 0:
            raise InvalidVectorError(
                "expected one vector (1-D) or a matrix of vectors (2-D), got a single "
                f"number ({type(obj).__name__})"
            )
        return _matrix_from_array(arr, dim, one_vector)
    if isinstance(obj, (float, int)):
        raise InvalidVectorError(
            "expected one vector (1-D) or a matrix of vectors (2-D), got a single number "
            f"({type(obj).__name__})"
        )
    raise InvalidVectorError(
        "expected vectors as a NumPy array, a buffer (memoryview, array.array), a list of "
        f"numbers or a list of lists of numbers, got {type(obj).__name__}"
    )


def as_matrix(obj: Any, dim: int | None = None) -> np.ndarray:
    """Returns ``obj`` as a float32, C-contiguous, aligned 2-D array (n, d).

    A 1-D input gives (1, d). No copy when ``obj`` already is such a float32 buffer: the
    result shares its memory. ``dim``: the required dimension d, or None.

    Raises InvalidVectorError (empty, ragged, non-numeric, more than 2 dimensions,
    NaN/inf, an all-zero row) or DimensionMismatchError (``dim`` given and different).
    """
    return _to_matrix(obj, dim, False)


def as_vector(obj: Any, dim: int | None = None) -> np.ndarray:
    """Returns ``obj`` as one float32, C-contiguous, aligned vector (d,).

    Same rules as :func:`as_matrix` for exactly one vector; a 2-D input with one row is
    accepted and returned as a view of that row, one with several rows is an error.
    """
    return _to_matrix(obj, dim, True)[0]
