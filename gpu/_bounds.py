"""How far a device mirror's score may lie from the exact cosine the CPU computes.

The engine proves a GPU search exact with this number (docs/gpu.md, "Why the results
equal the CPU's"): after the device picked, per query, the ``width`` best slots by the
mirror's score, the engine re-scores those candidates exactly and keeps the top k only
when the k-th exact score is above the width-th mirror score plus this bound. So the bound
must hold for every row and every query, not on average: each term below is a worst case.

Notation: ``r`` and ``q`` are the row and the query as the engine hands them over (f32,
normalised by the engine, so their norms lie within ``NORM_TOLERANCE`` of 1: the mirror
checks it), ``c`` the exact cosine of the vectors they were normalised from, ``d`` the
dimension, ``u = 2^-24`` the unit roundoff of f32, ``m = 1 + NORM_TOLERANCE``.

1. The CPU's own score ``s_cpu`` (an f32 dot product of the stored vector and the query,
   scaled by the two inverse norms; any summation order, with or without FMA) is within
   ``2 gamma(d, u) + 8u`` of ``c``: ``gamma(d, u)`` for the dot product, the same again for
   the two norms it divides by (each is the square root of an f32 sum, so half of
   ``gamma(d, u)`` each), and a few roundings for the scaling.
2. The handed-over rows are ``c``'s vectors scaled to norms within ``m`` (each component
   rounded once more, relative ``u``), so ``|r.q - c| <= (m^2 - 1) + 2u m^2``.
3. An f16 mirror stores ``r~ = fl16(r)`` and scores with ``q~ = fl16(q)``. binary16 rounds
   with relative error ``u16 = 2^-11`` in its normal range and absolute error at most
   ``eta = 2^-25`` below it (subnormals and underflow), so the error vector ``delta = r~ - r``
   has ``|delta| <= u16 |r| + eta sqrt(d) = e`` (Euclidean norms), and likewise for ``q``.
   ``r~.q~ - r.q = r.eps + delta.q + delta.eps``; by Cauchy-Schwarz that is at most
   ``2 m e + e^2``. An f32 mirror stores ``r`` itself: no term.
4. The device multiplies the stored values (a product of two f16 is exact in f32) and
   accumulates in f32 in an order of its choosing, on tensor cores possibly with
   truncation instead of rounding: every addition then errs by at most ``2^-23`` relative,
   so the sum is within ``gamma(d, 2^-23) * |r~| |q~|`` of the exact dot product of the
   stored values (``|r~| <= m + e``).
5. If the device writes its scores in f16 (a backend that cannot produce f32 results from
   f16 inputs), each score is rounded once more: relative ``2^-11``, absolute ``2^-25``.

``gamma(n, u) = n u / (1 - n u)`` (Higham, Accuracy and Stability of Numerical
Algorithms, 2nd ed., section 3.1). The bound is the sum of the terms that apply.
"""

from __future__ import annotations

import math

import numpy as np

#: How far from 1 the norm of a row or a query handed to the mirror may be. The engine
#: normalises in f32 (a few units in the last place off); anything further off is not a
#: unit vector and is refused, because the bound below would not hold for it.
NORM_TOLERANCE = 1e-4

F32_UNIT = 2.0**-24
#: Relative error of one f32 addition when the hardware may truncate (tensor cores).
F32_TRUNCATING_UNIT = 2.0**-23
F16_UNIT = 2.0**-11
#: Largest absolute rounding error of binary16 below its normal range (half of the
#: smallest subnormal, 2^-24).
F16_UNDERFLOW = 2.0**-25

PRECISIONS = ("f16", "f32")


def gamma(n: int, unit: float) -> float:
    """Higham's gamma_n: the relative error bound of a sum of n + 1 terms (n additions)."""
    nu = n * unit
    if nu >= 1.0:
        raise ValueError(f"gamma({n}, {unit}) is undefined: n * unit >= 1")
    return nu / (1.0 - nu)


def mirror_error_bound(dim: int, precision: str, *, f16_scores: bool = False) -> float:
    """An upper bound on |mirror score - the CPU's exact f32 cosine| for every row and
    query of ``dim`` values handed to a mirror of ``precision`` ("f16" or "f32");
    ``f16_scores``: the device writes its scores in f16 (term 5 of the module's text)."""
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    m = 1.0 + NORM_TOLERANCE
    root_d = math.sqrt(dim)
    cpu = 2.0 * gamma(dim, F32_UNIT) + 8.0 * F32_UNIT
    handed_over = (m * m - 1.0) + 2.0 * F32_UNIT * m * m
    if precision == "f16":
        e = F16_UNIT * m + F16_UNDERFLOW * root_d
        storage = 2.0 * m * e + e * e
        stored_norm = m + e
    else:
        storage = 0.0
        stored_norm = m
    accumulation = gamma(dim, F32_TRUNCATING_UNIT) * stored_norm * stored_norm
    rounding_out = 0.0
    if f16_scores:
        largest = stored_norm * stored_norm * (1.0 + gamma(dim, F32_TRUNCATING_UNIT))
        rounding_out = F16_UNIT * largest + F16_UNDERFLOW
    total = cpu + handed_over + storage + accumulation + rounding_out
    # Rounded up to the next f32 so that an f32 copy of the bound is never below it.
    return float(_next_f32_up(total))


def _next_f32_up(value: float) -> float:
    as_f32 = np.float32(value)
    if float(as_f32) < value:
        as_f32 = np.nextafter(as_f32, np.float32(np.inf))
    return float(as_f32)
