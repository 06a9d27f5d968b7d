"""How two results are compared: equal bytes, the first difference, and NMSE (the one definition in mlaref).

"Bit-exact" always means equal bytes (:func:`same_bytes`). Where an order is not the one being specified, a
result is compared by its normalised mean squared error against a reference (usually float64 math)::

    nmse(x, ref) = sum((x - ref)^2) / sum(ref^2)            in float64

Elements that are equal (NaN equal to NaN included) contribute nothing; a non-finite value where the two differ
makes the NMSE infinite; a zero denominator gives 0 when the two are equal and infinity otherwise. This is the
measure of ggml's ``test-backend-ops`` (``nmse``), whose bounds the conformance cases use.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nmse", "same_bytes", "ulps"]


def nmse(x, ref) -> float:
    """``sum((x - ref)^2) / sum(ref^2)`` in float64 (see the module docstring for NaN, inf and a zero ``ref``)."""
    a = np.asarray(x, np.float64).reshape(-1)
    b = np.asarray(ref, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"nmse: {a.size} values against {b.size}")
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    if not np.all(np.isfinite(a[~same])) or not np.all(np.isfinite(b[~same])):
        return float("inf")
    a, b = np.where(same, 0, a), np.where(same, 0, b)
    ref64 = np.asarray(ref, np.float64).reshape(-1)
    den = float(np.sum(ref64[np.isfinite(ref64)] ** 2))
    num = float(np.sum((a - b) ** 2))
    return 0.0 if num == 0 else (num / den if den > 0 else float("inf"))


def same_bytes(x, y) -> bool:
    """Whether two arrays hold the same bytes (same size; floats compared as their bit patterns)."""
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    return x.nbytes == y.nbytes and bool(np.array_equal(x.view(np.uint8), y.view(np.uint8)))


def ulps(a_bits: int, b_bits: int, width: int) -> int:
    """The distance in units in the last place between two floats of ``width`` bits given as their bit patterns
    (sign-magnitude mapped onto a line, so +0 and -0 are 0 apart)."""
    sign = 1 << (width - 1)

    def ordered(u):
        return -(u & (sign - 1)) if u & sign else u

    return abs(ordered(a_bits) - ordered(b_bits))
