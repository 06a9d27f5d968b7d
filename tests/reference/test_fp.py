"""Tests of reference/fp.py against independent facts, never against itself.

The oracles:

* value formulas written here in float64 (``(1 + m/2**10) * 2**(e-15)`` and friends) and NumPy's own float16;
* hand-stated rules: IEEE 754 round-to-nearest-even, the NaN rules of F16C ``vcvtps2ph`` / ``vcvtph2ps``
  (Intel SDM: a NaN keeps its sign and the top payload bits and is quieted) and of ggml's portable code
  (``ggml_compute_fp32_to_fp16`` in ggml-impl.h: any NaN -> sign | 0x7E00; ``ggml_compute_fp32_to_bf16``:
  ``(u >> 16) | 0x40``);
* upstream ggml itself through the ``ggml`` fixture: ``ggml_fp16_to_fp32_row``, ``ggml_fp32_to_fp16_row``
  (portable), ``ggml_cpu_fp16_to_fp32`` and the CPU ``from_float`` of F16 (F16C), ``ggml_bf16_to_fp32_row``,
  ``ggml_fp32_to_bf16_row`` and ``from_float_ref`` of BF16;
* the C library through :mod:`mlaref.reference.libm` (``fmaf``, ``roundf``, ``rintf``: test_fp_libm.py).

The f32 -> f16/bf16 corpora hold more than 10^7 inputs each: every rounding boundary of every finite target
value (the halfway points and one and two ulps either side), every low-bit pattern below the kept bits for
each binade, the overflow threshold, subnormals, signed zeros, infinities and NaNs with payloads, and
random bit patterns.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
import pytest

from mlaref.reference import libm as libm
from mlaref.reference import fp

needs_libm = pytest.mark.skipif(not libm.available(), reason="no C math library loadable through ctypes")

ALL16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def _bits(x):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def _f32(u):
    return np.ascontiguousarray(u, dtype=np.uint32).view(np.float32)


def _both_signs(u):
    u = np.asarray(u, dtype=np.uint32) & np.uint32(0x7FFFFFFF)
    return np.concatenate([u, u | np.uint32(0x80000000)])


def _neighbours(u, steps=(-2, -1, 0, 1, 2)):
    """Bit patterns ``u + k`` for k in steps, kept inside the finite non-negative f32 range."""
    u = np.asarray(u, dtype=np.int64)
    out = np.concatenate([u + k for k in steps])
    return out[(out >= 0) & (out < 0x7F800000)].astype(np.uint32)


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
# Corpora
# --------------------------------------------------------------------------------------------------------
def _nan_inputs(rng, n):
    """NaNs of both signs: quiet and signalling, random payloads, and payloads living only in the low 13
    bits (an f16 conversion that just shifted them out would produce Inf, not NaN)."""
    payload = rng.integers(1, 1 << 23, size=n, dtype=np.uint32)
    low_only = rng.integers(1, 1 << 13, size=n // 4, dtype=np.uint32)
    fixed = np.array([1, 0x1FFF, 0x2000, 0x400000, 0x400001, 0x7FFFFF, 0x3FFFFF, 0x200000], dtype=np.uint32)
    return _both_signs(np.uint32(0x7F800000) | np.concatenate([payload, low_only, fixed]))


@functools.cache
def _f16_corpus() -> np.ndarray:
    """>= 10^7 f32 bit patterns around every f16 rounding decision (see the module docstring)."""
    rng = np.random.default_rng(16)
    # Every finite f16 magnitude as f32 (NumPy's float16 widening, independent of fp.py), and the halfway
    # points between neighbours, computed in float64 where they are exact. The last one is 65520, halfway
    # between 65504 and the first value past the f16 range (65536): the IEEE overflow threshold.
    h = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    upper = np.append(h[1:], 65536.0)
    mids = ((h + upper) / 2).astype(np.float32)
    assert mids[-1] == np.float32(65520)
    parts = [_neighbours(_bits(h.astype(np.float32))), _neighbours(_bits(mids))]
    # For each binade that maps to f16 (2**-25 .. 2**16), every pattern of the 13 low bits (the bits a normal
    # f16 drops; below 2**-14 more are dropped, and the halfway points above cover those boundaries) under two
    # kept patterns of each parity.
    for e in range(102, 143):
        for kept in rng.integers(0, 1 << 10, size=4, dtype=np.uint32) * 2 + np.array([0, 1, 0, 1], np.uint32):
            parts.append((np.uint32(e) << 23) | ((kept & 0x3FF) << 13) | np.arange(1 << 13, dtype=np.uint32))
    # f32 subnormals and tiny normals (all become +-0 in f16), the overflow region [65504, 65536] in full,
    # and large finite values.
    parts.append(rng.integers(1, 0x00800000, size=200_000, dtype=np.uint32))
    parts.append(rng.integers(0x00800000, 0x33000000, size=200_000, dtype=np.uint32))
    parts.append(np.arange(0x477FE000, 0x47800001, dtype=np.uint32))
    parts.append(rng.integers(0x47800000, 0x7F800000, size=200_000, dtype=np.uint32))
    parts.append(np.array([0, 0x7F800000, 0x7F7FFFFF, 1, 0x00800000], dtype=np.uint32))
    parts.append(_nan_inputs(rng, 100_000))
    constructed = _both_signs(np.concatenate(parts))
    n_random = max(0, 10_000_000 - constructed.size)
    near = (rng.integers(96, 150, size=n_random // 2, dtype=np.uint32) << 23) | rng.integers(
        0, 1 << 23, size=n_random // 2, dtype=np.uint32
    )
    near |= rng.integers(0, 2, size=near.size, dtype=np.uint32) << 31
    anywhere = rng.integers(0, 1 << 32, size=n_random - near.size, dtype=np.uint32)
    out = np.concatenate([constructed, near, anywhere])
    assert out.size >= 10_000_000
    return out


@functools.cache
def _bf16_corpus() -> np.ndarray:
    """>= 10^7 f32 bit patterns around every bf16 rounding decision."""
    rng = np.random.default_rng(1616)
    finite = np.arange(0x7F80, dtype=np.uint32) << 16  # every finite non-negative bf16 as f32
    mids = finite | 0x8000  # halfway to the next bf16 (for 0x7F7F: halfway to 2**128, the overflow threshold)
    parts = [_neighbours(finite), _neighbours(mids)]
    # Every pattern of the 16 dropped bits under 64 kept patterns (both parities, subnormal, normal, near the top).
    kept = np.concatenate([
        rng.integers(1, 0x7F80, size=56, dtype=np.uint32),
        np.array([0, 1, 0x7E, 0x7F, 0x80, 0x81, 0x7F7E, 0x7F7F], dtype=np.uint32),
    ])
    parts.extend((k << 16) | np.arange(1 << 16, dtype=np.uint32) for k in kept)
    parts.append(rng.integers(1, 0x00800000, size=200_000, dtype=np.uint32))
    parts.append(np.array([0, 0x7F800000], dtype=np.uint32))
    parts.append(_nan_inputs(rng, 100_000))
    constructed = _both_signs(np.concatenate(parts))
    n_random = max(0, 10_000_000 - constructed.size)
    out = np.concatenate([constructed, rng.integers(0, 1 << 32, size=n_random, dtype=np.uint32)])
    assert out.size >= 10_000_000
    return out


# --------------------------------------------------------------------------------------------------------
# ggml through ctypes
# --------------------------------------------------------------------------------------------------------
def _ptr(a, ctype):
    return ctypes.cast(a.ctypes.data, ctypes.POINTER(ctype))


def _ggml_widen(ggml, fn_name, h16):
    """Call a ggml ``*_to_fp32`` row function on all of ``h16``; returns the float32 bits."""
    g = ggml.lib()
    h16 = np.ascontiguousarray(h16, dtype=np.uint16)
    y = np.full(h16.size, np.nan, dtype=np.float32)
    src_type = g.ggml_bf16_t if "bf16" in fn_name else ctypes.c_uint16
    getattr(g, fn_name)(_ptr(h16, src_type), _ptr(y, ctypes.c_float), h16.size)
    return _bits(y)


def _ggml_narrow(ggml, fn_name, u32):
    """Call a ggml ``fp32_to_*`` row function on the f32 values with bits ``u32``; returns uint16 bits."""
    g = ggml.lib()
    x = _f32(u32)
    y = np.full(x.size, 0xDEAD, dtype=np.uint16)
    dst_type = g.ggml_bf16_t if "bf16" in fn_name else ctypes.c_uint16
    getattr(g, fn_name)(_ptr(x, ctypes.c_float), _ptr(y, dst_type), x.size)
    return y


# --------------------------------------------------------------------------------------------------------
# f16 -> f32 and bf16 -> f32: all 65536 bit patterns
# --------------------------------------------------------------------------------------------------------
def _f16_value(h):
    """The value of f16 bits by the IEEE formula, in float64 (NaN/Inf excluded by the caller)."""
    h = h.astype(np.int64)
    s = np.where(h & 0x8000, -1.0, 1.0)
    e = (h >> 10) & 0x1F
    m = (h & 0x3FF).astype(np.float64)
    return s * np.where(e == 0, np.ldexp(m, -24), np.ldexp(1.0 + m / 1024.0, e - 15))


def _bf16_value(b):
    b = b.astype(np.int64)
    s = np.where(b & 0x8000, -1.0, 1.0)
    e = (b >> 7) & 0xFF
    m = (b & 0x7F).astype(np.float64)
    return s * np.where(e == 0, np.ldexp(m, -133), np.ldexp(1.0 + m / 128.0, e - 127))


F16_IS_NAN = ((ALL16 & 0x7C00) == 0x7C00) & ((ALL16 & 0x3FF) != 0)
F16_IS_INF = (ALL16 & 0x7FFF) == 0x7C00
BF16_IS_NAN = ((ALL16 & 0x7F80) == 0x7F80) & ((ALL16 & 0x7F) != 0)
BF16_IS_INF = (ALL16 & 0x7FFF) == 0x7F80


def test_f16_to_f32_exhaustive_matches_numpy_float16():
    got = fp.f16_to_f32(ALL16)
    want = ALL16[~F16_IS_NAN].view(np.float16).astype(np.float32)
    _assert_bits_equal(_bits(got[~F16_IS_NAN]), _bits(want), what="f16_to_f32 vs numpy float16")


def test_f16_to_f32_exhaustive_matches_ieee_formula():
    got = fp.f16_to_f32(ALL16).astype(np.float64)
    finite = ~F16_IS_NAN & ~F16_IS_INF
    np.testing.assert_array_equal(got[finite], _f16_value(ALL16[finite]))
    np.testing.assert_array_equal(np.signbit(got[finite]), (ALL16[finite] & 0x8000) != 0)  # -0 stays -0
    np.testing.assert_array_equal(got[F16_IS_INF], np.where(ALL16[F16_IS_INF] & 0x8000, -np.inf, np.inf))


def test_f16_to_f32_nan_rule():
    # F16C vcvtph2ps and ggml's portable widening: sign kept, payload shifted to the top, quiet bit set.
    h = ALL16[F16_IS_NAN].astype(np.uint32)
    assert h.size == 2 * 1023
    want = ((h & 0x8000) << 16) | 0x7F800000 | 0x400000 | ((h & 0x3FF) << 13)
    _assert_bits_equal(_bits(fp.f16_to_f32(ALL16[F16_IS_NAN])), want, what="f16 NaN widening")


@pytest.mark.parametrize(
    "h, value",
    [
        (0x0000, 0.0), (0x3C00, 1.0), (0xC000, -2.0), (0x7BFF, 65504.0), (0x0001, 2.0**-24),
        (0x03FF, 1023 * 2.0**-24), (0x0400, 2.0**-14), (0x3555, 0.333251953125), (0x7C00, np.inf),
        (0xFC00, -np.inf),
    ],
)
def test_f16_to_f32_published_values(h, value):
    assert fp.f16_to_f32(np.uint16(h)) == np.float32(value)


def test_f16_to_f32_negative_zero():
    assert _bits(fp.f16_to_f32(np.uint16(0x8000))) == 0x80000000


def test_f16_to_f32_matches_ggml_exhaustively(ggml):
    ours = _bits(fp.f16_to_f32(ALL16))
    _assert_bits_equal(ours, _ggml_widen(ggml, "ggml_fp16_to_fp32_row", ALL16), what="ggml_fp16_to_fp32_row")
    _assert_bits_equal(ours, _ggml_widen(ggml, "ggml_cpu_fp16_to_fp32", ALL16), what="ggml_cpu_fp16_to_fp32 (F16C)")
    rows = ggml.to_float("f16", ALL16.view(np.uint8).reshape(256, 512), 256)
    _assert_bits_equal(ours.reshape(256, 256), _bits(rows), what="type_traits[F16].to_float")


def test_bf16_to_f32_exhaustive():
    got = fp.bf16_to_f32(ALL16)
    finite = ~BF16_IS_NAN & ~BF16_IS_INF
    np.testing.assert_array_equal(got[finite].astype(np.float64), _bf16_value(ALL16[finite]))
    np.testing.assert_array_equal(np.signbit(got[finite]), (ALL16[finite] & 0x8000) != 0)
    np.testing.assert_array_equal(got[BF16_IS_INF], np.where(ALL16[BF16_IS_INF] & 0x8000, -np.inf, np.inf))
    # NaN: the bits shifted left by 16, payload untouched (no quieting: it is a bit move, not an arithmetic op).
    nan16 = ALL16[BF16_IS_NAN].astype(np.uint32)
    _assert_bits_equal(_bits(got[BF16_IS_NAN]), nan16 << 16, what="bf16 NaN widening")


def test_bf16_to_f32_matches_ggml_exhaustively(ggml):
    ours = _bits(fp.bf16_to_f32(ALL16))
    _assert_bits_equal(ours, _ggml_widen(ggml, "ggml_bf16_to_fp32_row", ALL16), what="ggml_bf16_to_fp32_row")
    rows = ggml.to_float("bf16", ALL16.view(np.uint8).reshape(256, 512), 256)
    _assert_bits_equal(ours.reshape(256, 256), _bits(rows), what="type_traits[BF16].to_float")


def test_f16_round_trip_exhaustive():
    # Every f16 is an f32, so narrowing its widening gives it back; NaNs come back quieted (bit 9 set) by
    # F16C, and as sign | 0x7E00 by ggml's portable code.
    back = fp.f32_to_f16(fp.f16_to_f32(ALL16))
    soft = fp.f32_to_f16_soft(fp.f16_to_f32(ALL16))
    _assert_bits_equal(back[~F16_IS_NAN], ALL16[~F16_IS_NAN], what="f16 round trip")
    _assert_bits_equal(back[F16_IS_NAN], ALL16[F16_IS_NAN] | 0x0200, what="f16 NaN round trip (F16C)")
    _assert_bits_equal(soft[F16_IS_NAN], (ALL16[F16_IS_NAN] & 0x8000) | 0x7E00, what="f16 NaN round trip (soft)")


def test_bf16_round_trip_exhaustive():
    back = fp.f32_to_bf16(fp.bf16_to_f32(ALL16))
    _assert_bits_equal(back[~BF16_IS_NAN], ALL16[~BF16_IS_NAN], what="bf16 round trip")
    _assert_bits_equal(back[BF16_IS_NAN], ALL16[BF16_IS_NAN] | 0x40, what="bf16 NaN round trip")


# --------------------------------------------------------------------------------------------------------
# f32 -> f16
# --------------------------------------------------------------------------------------------------------
@functools.cache
def _f16_results():
    u = _f16_corpus()
    x = _f32(u)
    return u, fp.f32_to_f16(x), fp.f32_to_f16_soft(x)


def _is_nan32(u):
    return (u & 0x7FFFFFFF) > 0x7F800000


def test_f32_to_f16_matches_numpy_on_1e7_inputs():
    u, ours, soft = _f16_results()
    ok = ~_is_nan32(u)
    with np.errstate(over="ignore"):
        want = _f32(u[ok]).astype(np.float16).view(np.uint16)
    _assert_bits_equal(ours[ok], want, _f32(u[ok]), "f32_to_f16 vs numpy")
    _assert_bits_equal(soft[ok], want, _f32(u[ok]), "f32_to_f16_soft vs numpy")


def test_f32_to_f16_nan_rules():
    u, ours, soft = _f16_results()
    nan = _is_nan32(u)
    assert nan.sum() > 100_000
    un = u[nan]
    sign = ((un >> 16) & 0x8000).astype(np.uint16)
    # vcvtps2ph: sign, the top 10 payload bits, quiet bit forced (so a payload only in the low 13 bits
    # gives 0x7E00, never Inf).
    _assert_bits_equal(ours[nan], sign | 0x7E00 | ((un >> 13) & 0x3FF).astype(np.uint16), _f32(un), "F16C NaN")
    _assert_bits_equal(soft[nan], sign | 0x7E00, _f32(un), "portable NaN")


@pytest.mark.parametrize(
    "x_bits, want",
    [
        (0x477FEFFF, 0x7BFF),  # just below 65520 -> 65504, the largest f16
        (0x477FF000, 0x7C00),  # 65520, halfway to 65536: the tie goes to the even Inf
        (0xC77FF000, 0xFC00),
        (0x33000000, 0x0000),  # 2**-25, halfway between 0 and the smallest subnormal: to even 0
        (0x33000001, 0x0001),  # one ulp more: up
        (0x33C00000, 0x0002),  # 3 * 2**-25: halfway between 1 and 2 (units of 2**-24): to even 2
        (0x387FE000, 0x0400),  # 2**-14 - 2**-25: halfway between the largest subnormal and 2**-14: to even
        (0x3F801000, 0x3C00),  # 1 + 2**-11: halfway between 1 and 1 + 2**-10: to even 1
        (0x3F803000, 0x3C02),  # 1 + 3 * 2**-11: to even 1 + 2**-9
        (0x80000000, 0x8000),  # -0
        (0x00000001, 0x0000),  # the smallest f32 subnormal
    ],
)
def test_f32_to_f16_constructed_boundaries(x_bits, want):
    x = _f32(np.array([x_bits], dtype=np.uint32))
    assert fp.f32_to_f16(x)[0] == want
    assert fp.f32_to_f16_soft(x)[0] == want


def test_f32_to_f16_soft_matches_ggml_fp32_to_fp16_row(ggml):
    u, _, soft = _f16_results()
    _assert_bits_equal(soft, _ggml_narrow(ggml, "ggml_fp32_to_fp16_row", u), _f32(u), "ggml_fp32_to_fp16_row")


def _skip_without_f16c(ggml):
    if not ggml.lib().ggml_cpu_has_f16c():
        pytest.skip("the peer's CPU back-end was built without F16C; its F16 from_float is not vcvtps2ph")


def test_f32_to_f16_matches_ggml_f16c_from_float(ggml):
    _skip_without_f16c(ggml)
    u, ours, _ = _f16_results()
    n4 = u.size - u.size % 4
    got = ggml.from_float("f16", _f32(u[:n4])[None, :]).view(np.uint16)[0]
    _assert_bits_equal(ours[:n4], got, _f32(u[:n4]), "type_traits_cpu[F16].from_float (F16C)")


def test_f32_to_f16_cpu_row_tail_is_portable():
    # Upstream ggml_cpu_fp32_to_fp16: F16C for chunks of 16/8/4, GGML_COMPUTE_FP32_TO_FP16 for the last n % 4
    # (ggml-cpu/simd-mappings.h defines no F16C scalar GGML_CPU_FP32_TO_FP16 for GCC). A NaN with payload
    # 0x123456 keeps its top payload bits in a chunk and loses them in the tail.
    row = _f32(np.full(7, 0x7FD23456, dtype=np.uint32))
    want = [0x7E91] * 4 + [0x7E00] * 3  # 0x7C00 | quiet 0x200 | (0x523456 >> 13) & 0x3FF = 0x291
    np.testing.assert_array_equal(fp.f32_to_f16_cpu_row(row), want)
    np.testing.assert_array_equal(fp.f32_to_f16_cpu_row(row[None, :4]), [want[:4]])


def test_f32_to_f16_ggml_row_tails(ggml, rng):
    # Rows of 1..40 values take the 16-, 8- and 4-wide F16C paths and the scalar tail in every mix.
    _skip_without_f16c(ggml)
    u = _f16_corpus()
    x = _f32(u[rng.integers(0, u.size, size=40 * 64)])
    for n in range(1, 41):
        rows = x[: 64 * n].reshape(64, n)
        got = ggml.from_float("f16", rows).view(np.uint16)
        _assert_bits_equal(fp.f32_to_f16_cpu_row(rows), got, rows, f"n={n}")
        _assert_bits_equal(
            fp.f32_to_f16_soft(rows), ggml.from_float_ref("f16", rows).view(np.uint16), rows, f"ref n={n}"
        )


def test_f16_bf16_conversions_on_chunks_with_one_special_value(rng):
    """The conversions work through the data in chunks and take their overflow, NaN, Inf and subnormal-range
    steps only in chunks that need them: every kind of special value, alone at the start, middle or end of a
    chunk of ordinary values (and in a short tail chunk), against NumPy's float16, ggml's NaN rules and the
    bf16 and f16 value formulas."""
    chunk = fp._CHUNK_NARROW
    specials = np.array([0x7FC12345, 0xFF800001, 0x7F800000, 0xFF800000, 0x477FF000, 0x477FEFFF, 0x4F000000,
                         0x33000001, 0x38000000, 0x80000001, 0x80000000, 0x00000000, 0x387FE000], dtype=np.uint32)
    n = 3 * chunk + 77
    base = _bits(rng.uniform(0.5, 2.0, size=n).astype(np.float32) * np.where(rng.random(n) < 0.5, -1, 1))
    u = np.tile(base, (specials.size * 4, 1))
    for k, v in enumerate(specials):
        for p, pos in enumerate((chunk, chunk + chunk // 2, 2 * chunk - 1, n - 1)):
            u[4 * k + p, pos] = v
    x = _f32(u)
    nan = _is_nan32(u)
    with np.errstate(over="ignore", invalid="ignore"):
        plain = x.astype(np.float16).view(np.uint16)
    sign = ((u >> 16) & 0x8000).astype(np.uint16)
    _assert_bits_equal(fp.f32_to_f16(x), np.where(nan, sign | 0x7E00 | ((u >> 13) & 0x3FF), plain), x, "F16C")
    _assert_bits_equal(fp.f32_to_f16_soft(x), np.where(nan, sign | 0x7E00, plain), x, "portable")
    ub = u.astype(np.uint64)
    _assert_bits_equal(fp.f32_to_bf16(x), np.where(nan, (ub >> 16) | 0x40, (ub + 0x7FFF + ((ub >> 16) & 1)) >> 16)
                       .astype(np.uint16), x, "bf16")
    chunk = fp._CHUNK_WIDEN  # rows of 3 chunks + 77: a NaN in the second chunk only, -Inf in the third only
    h = rng.integers(0, 0x7C00, size=(1, 3 * chunk + 77), dtype=np.uint16)
    h |= rng.integers(0, 2, size=h.shape, dtype=np.uint16) << 15
    h[:, chunk + 5] = 0x7E01
    h[:, 2 * chunk + 9] = 0xFC00
    y = _bits(fp.f16_to_f32(h))
    finite = (h & 0x7C00) != 0x7C00
    _assert_bits_equal(y[finite], _bits(h[finite].view(np.float16).astype(np.float32)), what="f16 -> f32")
    assert np.all(y[:, chunk + 5] == 0x7FC02000) and np.all(y[:, 2 * chunk + 9] == 0xFF800000)


# --------------------------------------------------------------------------------------------------------
# f32 -> bf16
# --------------------------------------------------------------------------------------------------------
def _bf16_by_distance(u):
    """Round-to-nearest-even to bf16 decided by comparing float64 distances to the two candidates."""
    a = (u & 0x7FFFFFFF).astype(np.uint32)
    lo = a & np.uint32(0xFFFF0000)
    hi = lo + np.uint32(0x10000)
    x = _f32(a).astype(np.float64)
    lo_v = _f32(lo).astype(np.float64)
    # The candidate past the largest bf16 is 2**128 (exponent unbounded), which makes IEEE overflow fall out.
    hi_v = np.where(hi == 0x7F800000, 2.0**128, _f32(np.minimum(hi, 0x7F7FFFFF)).astype(np.float64))
    with np.errstate(invalid="ignore"):  # Inf - Inf for infinite inputs, which stay Inf (the `finite` mask)
        d_lo, d_hi = x - lo_v, hi_v - x
    lo_odd = ((lo >> 16) & 1) == 1
    finite = a < 0x7F800000
    up = finite & ((d_hi < d_lo) | ((d_hi == d_lo) & lo_odd))
    mag = np.where(up, hi, lo) >> 16
    return (mag | ((u >> 16) & 0x8000)).astype(np.uint16)


@functools.cache
def _bf16_results():
    u = _bf16_corpus()
    return u, fp.f32_to_bf16(_f32(u))


def test_f32_to_bf16_rne_on_1e7_inputs():
    u, ours = _bf16_results()
    ok = ~_is_nan32(u)
    _assert_bits_equal(ours[ok], _bf16_by_distance(u[ok]), _f32(u[ok]), "f32_to_bf16 vs distance oracle")


def test_f32_to_bf16_nan_rule():
    u, ours = _bf16_results()
    nan = _is_nan32(u)
    assert nan.sum() > 100_000
    # ggml_compute_fp32_to_bf16: (u >> 16) | 64, the quiet bit; a payload only in the low 16 bits stays NaN.
    _assert_bits_equal(ours[nan], ((u[nan] >> 16) | 0x40).astype(np.uint16), _f32(u[nan]), "bf16 NaN")


@pytest.mark.parametrize(
    "x_bits, want",
    [
        (0x3F808000, 0x3F80),  # 1 + 2**-8, halfway: to even 1
        (0x3F818000, 0x3F82),  # halfway above an odd value: up to even
        (0x3F808001, 0x3F81),  # one ulp past halfway: up
        (0x7F7F8000, 0x7F80),  # halfway between the largest bf16 and 2**128: Inf
        (0x7F7F7FFF, 0x7F7F),
        (0x00008000, 0x0000),  # subnormal halfway case: to even 0 (subnormals are not flushed)
        (0x00018000, 0x0002),
        (0x80000000, 0x8000),
    ],
)
def test_f32_to_bf16_constructed_boundaries(x_bits, want):
    assert fp.f32_to_bf16(_f32(np.array([x_bits], dtype=np.uint32)))[0] == want


def test_f32_to_bf16_matches_ggml(ggml):
    u, ours = _bf16_results()
    x = _f32(u)
    _assert_bits_equal(ours, _ggml_narrow(ggml, "ggml_fp32_to_bf16_row_ref", u), x, "ggml_fp32_to_bf16_row_ref")
    _assert_bits_equal(ours, ggml.from_float_ref("bf16", x[None, :]).view(np.uint16)[0], x, "BF16 from_float_ref")
    _assert_bits_equal(ours, ggml.from_float("bf16", x[None, :]).view(np.uint16)[0], x, "BF16 CPU from_float")


def test_f32_to_bf16_row_matches_ggml_as_built(ggml):
    """``ggml_fp32_to_bf16_row`` is scalar unless ggml.c itself was compiled with AVX512-BF16; then its
    32-wide chunks flush subnormals (``f32_to_bf16_avx512``). A probe row of 32 subnormals says which build
    this is; the 10^7-input comparison then pins every value to that model."""
    probe_u = np.full(32, 0x00012345, dtype=np.uint32)
    probe = _ggml_narrow(ggml, "ggml_fp32_to_bf16_row", probe_u)
    assert np.all(probe == probe[0]) and probe[0] in (0x0001, 0x0000)
    u, ours = _bf16_results()
    if probe[0] == 0x0000:  # an AVX512-BF16 build: chunks of 32 use vcvtne2ps2bf16, the tail is scalar
        n32 = u.size // 32 * 32
        ours = np.concatenate([fp.f32_to_bf16_avx512(_f32(u[:n32])), ours[n32:]])
    _assert_bits_equal(ours, _ggml_narrow(ggml, "ggml_fp32_to_bf16_row", u), _f32(u), "ggml_fp32_to_bf16_row")


def test_f32_to_bf16_avx512_model_flushes_subnormals_only():
    u, ours = _bf16_results()
    got = fp.f32_to_bf16_avx512(_f32(u))
    sub = ((u & 0x7F800000) == 0) & ((u & 0x7FFFFF) != 0)
    assert sub.sum() > 100_000
    _assert_bits_equal(got[sub], ((u[sub] >> 16) & 0x8000).astype(np.uint16), _f32(u[sub]), "flushed to +-0")
    # Everything else: the RNE / NaN rules checked above (distance oracle and the hand NaN rule).
    ok = ~sub & ~_is_nan32(u)
    _assert_bits_equal(got[ok], _bf16_by_distance(u[ok]), _f32(u[ok]), "avx512 model, normal inputs")
    nan = _is_nan32(u)
    _assert_bits_equal(got[nan], ((u[nan] >> 16) | 0x40).astype(np.uint16), _f32(u[nan]), "avx512 model NaN")
