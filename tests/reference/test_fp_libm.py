"""Tests of reference/fp.py's C-library routines (``fmaf``, ``roundf``, ``nearest_int``) against libm itself.

The oracle is the C library through :mod:`mlaref.reference.libm` (``fmaf``, ``roundf``, ``rintf``), hand-stated
rules (ties away from zero, ties to even), and constructed double-rounding traps for ``fmaf``.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlaref.reference import fp
from mlaref.reference import libm as libm

needs_libm = pytest.mark.skipif(not libm.available(), reason="no C math library loadable through ctypes")


def _bits(x):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def _f32(u):
    return np.ascontiguousarray(u, dtype=np.uint32).view(np.float32)


def _assert_bits_equal(got, want, x=None, what=""):
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    bad = np.flatnonzero(got != want)
    if bad.size:
        i = bad[:8]
        detail = f"inputs {[hex(v) for v in _bits(x).reshape(-1)[i]]} " if x is not None else ""
        pytest.fail(
            f"{what}: {bad.size} of {got.size} differ; first at {i.tolist()}: {detail}"
            f"got {[hex(v) for v in got.reshape(-1)[i]]} want {[hex(v) for v in want.reshape(-1)[i]]}"
        )


# --------------------------------------------------------------------------------------------------------
# fmaf
# --------------------------------------------------------------------------------------------------------
def _assert_same_float(got, want, what):
    """Equal bits, except that any NaN matches any NaN (libm and NumPy may pick different payloads)."""
    both_nan = np.isnan(got) & np.isnan(want)
    _assert_bits_equal(np.where(both_nan, 0, _bits(got)), np.where(both_nan, 0, _bits(want)), what=what)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def _fma_inputs(rng, n):
    """``n`` (a, b, c) triples: plain normals, heavy cancellation, near-ties, wide exponents, specials."""
    q = n // 5
    a1, b1, c1 = (rng.standard_normal(q).astype(np.float32) for _ in range(3))
    # Cancellation: c close to -a*b, so the exact result depends on the low product bits.
    a2, b2 = (rng.standard_normal(q).astype(np.float32) for _ in range(2))
    c2 = (-(a2 * b2) * (1 + rng.standard_normal(q).astype(np.float32) * np.float32(2**-20))).astype(np.float32)
    # c large, the product about half an ulp of c: the sum sits near a rounding boundary of f32.
    c3 = rng.standard_normal(q).astype(np.float32)
    a3 = rng.standard_normal(q).astype(np.float32)
    b3 = (np.ldexp(np.abs(c3).astype(np.float64), -24) / a3 * (1 + rng.standard_normal(q) * 2**-12)).astype(
        np.float32
    )
    # Wide exponents (results that overflow, underflow to subnormals, or vanish).
    def wide(size):
        e = rng.integers(40, 215, size=size, dtype=np.uint32)
        m = rng.integers(0, 1 << 23, size=size, dtype=np.uint32)
        s = rng.integers(0, 2, size=size, dtype=np.uint32) << 31
        return _f32(s | (e << 23) | m)

    a4, b4, c4 = wide(q), wide(q), wide(q)
    # Any bit pattern: NaN, Inf, subnormal, zero included.
    a5, b5, c5 = (_f32(rng.integers(0, 1 << 32, size=n - 4 * q, dtype=np.uint32)) for _ in range(3))
    # Double-rounding traps and near-traps (m past 361 leaves the error visible to float64).
    a6, b6, c6 = _double_rounding_traps(rng, q // 4, m_max=2000)[:3]
    specials = np.float32([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1e-45, 3.4028235e38])
    sa, sb, sc = (g.reshape(-1) for g in np.meshgrid(specials, specials, specials, indexing="ij"))
    cat = np.concatenate
    return cat([a1, a2, a3, a4, a5, a6, sa]), cat([b1, b2, b3, b4, b5, b6, sb]), cat([c1, c2, c3, c4, c5, c6, sc])


@needs_libm
def test_libm_oracle_on_hand_values():
    # The oracle itself, on values known by hand: a wrong ctypes signature would show here first.
    assert _bits(libm.sqrtf(np.float32([2.0])))[0] == 0x3FB504F3  # sqrt(2) correctly rounded to f32
    assert libm.fmaf(np.float32([2.0]), np.float32([3.0]), np.float32([1.0]))[0] == 7.0
    np.testing.assert_array_equal(libm.roundf(np.float32([0.5, 1.5, 2.5, -2.5])), [1, 2, 3, -3])
    np.testing.assert_array_equal(libm.rintf(np.float32([0.5, 1.5, 2.5, -2.5])), [0, 2, 2, -2])
    assert libm.expf(np.float32([0.0]))[0] == 1.0 and libm.cosf(np.float32([0.0]))[0] == 1.0
    with pytest.raises(TypeError, match="float32"):
        libm.fmaf(np.float64([1.0]), np.float32([1.0]), np.float32([1.0]))


@needs_libm
def test_fmaf_matches_libm_on_1e6_inputs(rng):
    a, b, c = _fma_inputs(rng, 1_000_000)
    assert a.size >= 1_000_000
    with np.errstate(all="ignore"):
        got = fp.fmaf(a, b, c)
    _assert_same_float(got, libm.fmaf(a, b, c), "fmaf vs libm fmaf")


def _double_rounding_traps(rng, n, m_max=362):
    """(a, b, c, exact) where ``a*b + c`` lies within 2**-46 relative of an f32 halfway point, on the side
    away from the even neighbour. float64 rounds the sum onto the halfway point, and the second rounding
    (ties to even) then goes the wrong way; the correctly rounded result is ``c`` itself.

    Construction: ``c = s * 2**k * (1 + odd * 2**-23)`` (an odd f32 significand, so the neighbour of ``c``
    across the halfway point is even), ``a*b = -+2**(k-24) * (1 - m*m * 2**-46)`` with
    ``a = (1 + m * 2**-23) * 2**i``, ``b = (1 - m * 2**-23) * 2**j``, ``i + j = k - 24``. Then
    ``a*b + c = c -+ ulp(c)/2 +- m*m * 2**(k-70)``; with ``m < 362`` (the default ``m_max``), ``m*m < 2**17``
    keeps that error below float64's half ulp at that size. A larger ``m_max`` also makes near-traps.
    """
    k = rng.integers(-90, 100, size=n)
    odd = rng.integers(0, 1 << 22, size=n) * 2 + 1
    m = rng.integers(1, m_max, size=n)
    s = np.where(rng.integers(0, 2, size=n) == 1, -1.0, 1.0)
    toward = np.where(rng.integers(0, 2, size=n) == 1, -1.0, 1.0)  # which halfway point: below or above c
    i = rng.integers(-40, 40, size=n)
    i = np.clip(i, k - 24 - 100, k - 24 + 100)  # keep b = 2**j * ... a normal f32
    j = k - 24 - i
    c = (s * np.ldexp(1.0 + odd * 2.0**-23, k)).astype(np.float32)
    a = (toward * s * np.ldexp(1.0 + m * 2.0**-23, i)).astype(np.float32)
    b = np.ldexp(1.0 - m * 2.0**-23, j).astype(np.float32)
    # Every value above is exact in float32 by construction; check it rather than trust it.
    assert np.array_equal(a.astype(np.float64), toward * s * np.ldexp(1.0 + m * 2.0**-23, i))
    assert np.array_equal(b.astype(np.float64), np.ldexp(1.0 - m * 2.0**-23, j))
    assert np.array_equal(c.astype(np.float64), s * np.ldexp(1.0 + odd * 2.0**-23, k))
    return a, b, c, c


@needs_libm
def test_fmaf_double_rounding_traps(rng):
    a, b, c, exact = _double_rounding_traps(rng, 20_000)
    naive = (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)
    # The naive way is wrong on every trap (it lands one ulp away from c) ...
    assert np.all(naive != exact)
    assert np.all(np.abs(naive.astype(np.float64) - exact) == np.ldexp(1.0, np.frexp(exact)[1] - 24))
    # ... and libm fmaf and fp.fmaf are right on every one.
    _assert_bits_equal(_bits(libm.fmaf(a, b, c)), _bits(exact), what="libm fmaf on the traps")
    _assert_bits_equal(_bits(fp.fmaf(a, b, c)), _bits(exact), what="fp.fmaf on the traps")


def test_fmaf_published_trap():
    # The smallest trap by hand: (1 + 2**-23) * -(2**-24 - 2**-47) + (1 + 2**-23) = 1 + 2**-24 + 2**-70,
    # just above the halfway point between 1 and 1 + 2**-23, so the answer is 1 + 2**-23; float64 rounds
    # the sum to 1 + 2**-24 exactly and the tie then goes to the even 1.0.
    a, b, c = np.float32(1 + 2**-23), np.float32(-(2**-24 - 2**-47)), np.float32(1 + 2**-23)
    assert np.float32(np.float64(a) * np.float64(b) + np.float64(c)) == np.float32(1.0)
    assert fp.fmaf(a, b, c) == np.float32(1 + 2**-23)


# --------------------------------------------------------------------------------------------------------
# roundf and nearest_int
# --------------------------------------------------------------------------------------------------------
def test_roundf_ties_go_away_from_zero():
    k = np.arange(-(1 << 22), 1 << 22, 97, dtype=np.float64)
    ties = (k + 0.5).astype(np.float32)  # exact: |k| < 2**22 leaves room for the half
    want = np.where(k >= 0, k + 1, k).astype(np.float32)  # away from zero: up for positive, down for negative
    np.testing.assert_array_equal(fp.roundf(ties), want)
    np.testing.assert_array_equal(fp.roundf(np.float32([0.5, -0.5, 1.5, -1.5, 2.5, -2.5])),
                                  np.float32([1, -1, 2, -2, 3, -3]))


@needs_libm
def test_roundf_matches_libm(rng):
    u = rng.integers(0, 1 << 32, size=200_000, dtype=np.uint32)
    near = (rng.integers(100, 152, size=300_000, dtype=np.uint32) << 23) | rng.integers(
        0, 1 << 23, size=300_000, dtype=np.uint32
    )
    # every float within 3 ulps of k and k + 1/2 for |k| < 300 and of large powers of two
    centres = np.concatenate([np.arange(-300, 300, 0.5), 2.0 ** np.arange(20, 26), -(2.0 ** np.arange(20, 26))])
    c = _bits(centres.astype(np.float32)).astype(np.int64)
    around = (c[:, None] + np.arange(-3, 4)[None, :]).reshape(-1)
    around = around[(around & 0x7FFFFFFF) < 0x7F800000].astype(np.uint32)  # the neighbours of +0 below it wrap
    x = _f32(np.concatenate([u, near, near | 0x80000000, around]))
    x = np.concatenate([x, np.float32([0.0, -0.0, 0.49999997, -0.49999997, np.inf, -np.inf, np.nan])])
    _assert_same_float(fp.roundf(x), libm.roundf(x), "roundf vs libm roundf (signed zeros included)")
    v = x.copy()
    assert fp.roundf(v, out=v) is v
    _assert_same_float(v, libm.roundf(x), "roundf in place")
    assert fp.roundf(np.float32(-0.3)).shape == () and np.signbit(fp.roundf(np.float32(-0.3)))


def test_nearest_int_ties_go_to_even():
    k = np.arange(-(1 << 22), (1 << 22) - 1, 89, dtype=np.int64)
    ties = (k + 0.5).astype(np.float32)
    want = np.where(k % 2 == 0, k, k + 1)  # of k and k + 1, the even one
    np.testing.assert_array_equal(fp.nearest_int(ties), want)
    np.testing.assert_array_equal(fp.nearest_int(np.float32([0.5, -0.5, 1.5, -1.5, 2.5, -2.5])), [0, 0, 2, -2, 2, -2])


def test_nearest_int_outside_its_domain_is_the_c_bit_arithmetic(rng):
    """Outside |x| <= 4194303 (asserts compiled out) ggml's nearest_int is still defined bit arithmetic: the low 23
    bits of f32(x + 1.5*2**23) minus 2**22. Here that sum is rounded once from float64, where it is exact."""
    special = np.array(
        [0.5, 1.5, 2.5, -0.5, -2.5, 4194303.0, -4194303.0, 4194304.5, 1e10, -1e10, 3e38, np.inf, -np.inf, np.nan,
         -0.0, 1e-45],
        dtype=np.float32,
    )
    x = (rng.standard_normal(100_000) * 1e7).astype(np.float32)
    x = np.concatenate([special, x, np.round(x * 2) / 2])
    with np.errstate(over="ignore", invalid="ignore"):
        v = (x.astype(np.float64) + 12582912.0).astype(np.float32)
    want = (_bits(v).astype(np.int64) & 0x7FFFFF) - 0x400000
    got = fp.nearest_int(x)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got.astype(np.int64), want)


@needs_libm
def test_nearest_int_matches_libm_rintf_on_its_domain(rng):
    # Domain |x| <= 4194303: x + 1.5 * 2**23 must stay inside [2**23, 2**24), where the f32 ulp is 1.
    x = (rng.uniform(-4194303, 4194303, size=300_000)).astype(np.float32)
    small = (rng.standard_normal(200_000) * 100).astype(np.float32)
    edges = np.float32([4194303, -4194303, -4194304, 4194302.5, -4194302.5, 0.0, -0.0, 0.49999997, -0.49999997])
    x = np.concatenate([x, small, edges])
    want = libm.rintf(x).astype(np.int64)
    np.testing.assert_array_equal(fp.nearest_int(x).astype(np.int64), want)
