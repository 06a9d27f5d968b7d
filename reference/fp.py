"""Floating-point rounding as ggml does it: f16/bf16 conversions, roundf, nearest_int and a correctly rounded fmaf.

Every function takes and returns NumPy arrays (scalars work too) and is vectorised; none depends on the
platform's rounding of float16 or on ``np.float16`` casts, so the rules are visible in the code.

Two f32 -> f16 conversions exist in ggml and differ only on NaN:

=====================  ===================================================  ==========================================
function               ggml routine reproduced                              NaN result
=====================  ===================================================  ==========================================
``f32_to_f16``         F16C ``vcvtps2ph`` / ``_cvtss_sh``                   sign | 0x7E00 | payload >> 13 (quieted)
``f32_to_f16_soft``    ``ggml_compute_fp32_to_fp16`` (ggml-impl.h)          sign | 0x7E00
=====================  ===================================================  ==========================================

Finite values round to nearest, ties to even, in both; |x| >= 65520 becomes +-Inf.

Which one a row conversion uses depends on the build and on the position in the row:

* ik_llama.cpp@676f0e71b, x86 with F16C: ``ggml_fp32_to_fp16_row`` uses ``vcvtps2ph`` for chunks of 8 and 4 and
  ``_cvtss_sh`` (also F16C) for the tail, so every element follows ``f32_to_f16``.
* upstream ggml (the ``ggml-python`` peer): ``ggml_fp32_to_fp16_row`` (``from_float_ref``) is the portable
  routine throughout (``f32_to_f16_soft``), while the CPU back-end's ``ggml_cpu_fp32_to_fp16`` (``from_float``)
  uses F16C for chunks of 16, 8 and 4 and the portable routine for the last ``n % 4`` elements of a row,
  because ``GGML_CPU_FP32_TO_FP16`` falls back to ``GGML_COMPUTE_FP32_TO_FP16`` with GCC/Clang
  (ggml-cpu/simd-mappings.h). ``f32_to_f16_cpu_row`` models that.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "f32_bits",
    "bits_f32",
    "f32_to_f16",
    "f32_to_f16_soft",
    "f32_to_f16_cpu_row",
    "f16_to_f32",
    "f32_to_bf16",
    "f32_to_bf16_avx512",
    "bf16_to_f32",
    "roundf",
    "nearest_int",
    "fmaf",
]

_F32_MAGIC_ROUND = np.float32(12582912.0)  # 1.5 * 2**23


def f32_bits(x) -> np.ndarray:
    """The IEEE bits of float32 values as uint32."""
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def bits_f32(u) -> np.ndarray:
    """Float32 values from their IEEE bits (uint32)."""
    return np.ascontiguousarray(u, dtype=np.uint32).view(np.float32)


def _f32_to_f16_finite(a: np.ndarray) -> np.ndarray:
    """RNE conversion of the magnitude bits ``a`` (< 0x7f800000) to f16 magnitude bits."""
    a = a.astype(np.uint32)
    # Normal f16 range: drop 13 mantissa bits, round half to even; a carry ripples into the exponent
    # and from 0x7bff into 0x7c00 (= Inf), which is exactly IEEE overflow.
    e = (a >> 23).astype(np.int64) - 127 + 15
    m = (a & 0x7FFFFF).astype(np.int64)
    h = (e << 10) | (m >> 13)
    rem = m & 0x1FFF
    h = h + ((rem > 0x1000) | ((rem == 0x1000) & ((h & 1) == 1)))
    # Subnormal f16 range (|x| < 2**-14): the value in units of 2**-24, rounded half to even. Both
    # the scaling and np.rint are exact in float64 here.
    small = np.where(a < 0x38800000, a, 0).astype(np.uint32)
    sub = np.rint(small.view(np.float32).astype(np.float64) * 2.0**24).astype(np.int64)
    h = np.where(a < 0x38800000, sub, h)
    h = np.minimum(h, 0x7C00)  # everything from 65520 up rounds to Inf
    return h.astype(np.uint16)


def f32_to_f16(x) -> np.ndarray:
    """f32 -> f16 bits (uint16) as F16C ``vcvtps2ph`` with round-to-nearest-even.

    NaN keeps its sign and the top 10 payload bits and is quieted (bit 9 set).
    """
    u = f32_bits(x)
    sign = ((u >> 16) & 0x8000).astype(np.uint16)
    a = u & 0x7FFFFFFF
    nan = a > 0x7F800000
    finite = _f32_to_f16_finite(np.where(a >= 0x7F800000, 0, a))
    inf = a == 0x7F800000
    h = np.where(inf, np.uint16(0x7C00), finite)
    h = np.where(nan, (0x7E00 | ((a >> 13) & 0x3FF)).astype(np.uint16), h)
    return (sign | h).astype(np.uint16)


def f32_to_f16_soft(x) -> np.ndarray:
    """f32 -> f16 bits as ggml's portable ``ggml_compute_fp32_to_fp16``: RNE, and NaN -> sign | 0x7E00."""
    u = f32_bits(x)
    a = u & 0x7FFFFFFF
    h = f32_to_f16(x)
    return np.where(a > 0x7F800000, ((u >> 16) & 0x8000) | 0x7E00, h).astype(np.uint16)


def f32_to_f16_cpu_row(x) -> np.ndarray:
    """f32 rows (last axis) -> f16 bits as upstream ggml's CPU ``from_float`` for F16 (``ggml_cpu_fp32_to_fp16``).

    The first ``n - n % 4`` values of each row of ``n`` take F16C (``f32_to_f16``), the last ``n % 4`` the portable
    routine (``f32_to_f16_soft``); the two differ only on NaN payloads.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0:
        raise ValueError("f32_to_f16_cpu_row: x must have at least one dimension (rows along the last axis)")
    n = x.shape[-1]
    tail = np.arange(n) >= n - n % 4
    return np.where(tail, f32_to_f16_soft(x), f32_to_f16(x)).astype(np.uint16)


def f16_to_f32(h) -> np.ndarray:
    """f16 bits (uint16) -> float32, exact.

    NaN keeps its sign and payload and is quieted, as both ``vcvtph2ps`` and ggml's portable
    ``ggml_compute_fp16_to_fp32`` (whose final float multiply quiets a signalling NaN) do.
    """
    h = np.asarray(h, dtype=np.uint16).astype(np.uint32)
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    normal = ((e + (127 - 15)) << 23) | (m << 13)
    special = 0x7F800000 | (m << 13) | np.where(m != 0, 0x400000, 0).astype(np.uint32)
    # Subnormals: m * 2**-24 is exact in float32.
    sub = f32_bits((m.astype(np.float64) * 2.0**-24).astype(np.float32))
    bits = np.where(e == 0, sub, np.where(e == 0x1F, special, normal))
    return bits_f32((sign | bits).astype(np.uint32))


def f32_to_bf16(x) -> np.ndarray:
    """f32 -> bf16 bits as ggml's scalar ``ggml_compute_fp32_to_bf16``.

    Round to nearest even by ``(u + 0x7fff + ((u >> 16) & 1)) >> 16``; NaN -> ``(u >> 16) | 0x40`` (quieted).
    Subnormals are rounded like any other value.
    """
    u = f32_bits(x).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, (u >> 16) | 0x40, rounded).astype(np.uint16)


def f32_to_bf16_avx512(x) -> np.ndarray:
    """f32 -> bf16 bits as AVX512-BF16 ``vcvtne2ps2bf16``: RNE, subnormal inputs flushed to +-0, NaN quieted.

    ``ggml_fp32_to_bf16_row`` (ggml.c) uses this for 32-element chunks when ggml.c itself is compiled with
    AVX512-BF16 (ik_llama.cpp built with ``-march=native`` on such a CPU) and the scalar ``f32_to_bf16`` for the
    tail, so the two can differ on subnormals. The ggml-python peer's ggml-base is built without it, so there
    the row function is scalar throughout (tests/reference/test_fp.py probes which build it is).
    """
    u = f32_bits(x)
    subnormal = ((u & 0x7F800000) == 0) & ((u & 0x7FFFFF) != 0)
    flushed = np.where(subnormal, u & 0x80000000, u).astype(np.uint32)
    return f32_to_bf16(bits_f32(flushed))


def bf16_to_f32(b) -> np.ndarray:
    """bf16 bits (uint16) -> float32: the bits shifted left by 16 (exact, NaN payload kept)."""
    return bits_f32(np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16)


def roundf(x) -> np.ndarray:
    """C ``roundf``: nearest integer, halfway cases away from zero, as float32."""
    with np.errstate(invalid="ignore"):  # signalling NaNs in the cast, inf - inf for infinite x (kept as t = x)
        xd = np.asarray(x, dtype=np.float32).astype(np.float64)
        t = np.trunc(xd)
        frac = xd - t  # exact: both are doubles holding float32-representable values
        # np.where, not t + 0.0: adding +0.0 would turn roundf(-0.3) = -0.0 into +0.0.
        t = np.where(np.abs(frac) >= 0.5, t + np.sign(xd), t)
    return t.astype(np.float32)


def nearest_int(x) -> np.ndarray:
    """ggml's ``nearest_int``: round half to even by adding 1.5*2**23 in float32 (valid for |x| <= 4194303).

    Reproduces ``nearest_int`` (ggml-quants.c): ``val = x + 12582912.f``, then the low 23 mantissa bits minus
    0x400000. Returns int32.
    """
    v = (np.asarray(x, dtype=np.float32) + _F32_MAGIC_ROUND).astype(np.float32)
    i = f32_bits(v).astype(np.int64)
    return ((i & 0x007FFFFF) - 0x00400000).astype(np.int32)


def fmaf(a, b, c) -> np.ndarray:
    """Correctly rounded float32 fused multiply-add ``a*b + c`` (one rounding), as C ``fmaf``.

    The product of two float32 is exact in float64. The float64 sum ``s = p + c`` may be inexact; TwoSum
    gives its exact error ``e``. Rounding ``s`` to odd (if ``e != 0`` and the last bit of ``s`` is even,
    step one ulp toward ``e``) keeps enough information that the final rounding to float32 is the correct
    rounding of the exact ``a*b + c``: 53 >= 24 + 2 bits. Non-finite inputs take the plain float64 path,
    which already gives IEEE results for them.
    """
    a32 = np.asarray(a, dtype=np.float32)
    b32 = np.asarray(b, dtype=np.float32)
    c32 = np.asarray(c, dtype=np.float32)
    p = a32.astype(np.float64) * b32.astype(np.float64)
    cd = c32.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + cd
        bb = s - p
        err = (p - (s - bb)) + (cd - bb)
        finite = np.isfinite(s) & np.isfinite(p) & np.isfinite(cd)
        even = (np.ascontiguousarray(s).view(np.uint64) & 1) == 0
        fix = finite & (err != 0) & even
        toward = np.where(err > 0, np.inf, -np.inf)
        s = np.where(fix, np.nextafter(s, toward), s)
        return s.astype(np.float32)
