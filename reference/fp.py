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
_HALF_BELOW_BITS = np.uint32(0x3EFFFFFF)  # 0.5 - 2**-25, the largest float32 below 0.5


def f32_bits(x) -> np.ndarray:
    """The IEEE bits of float32 values as uint32."""
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def bits_f32(u) -> np.ndarray:
    """Float32 values from their IEEE bits (uint32)."""
    return np.ascontiguousarray(u, dtype=np.uint32).view(np.float32)


# Values per NumPy pass in the array conversions (measured best on a 1.25 MiB L2): large enough to amortise the
# calls, small enough that the work arrays stay in L2 cache.
_CHUNK_NARROW = 1 << 16  # f32 -> bf16
_CHUNK_F16 = 1 << 15  # f32 -> f16: two work arrays and a bound array besides input and output
_CHUNK_WIDEN = 1 << 17  # f16 -> f32

def _const(value, dtype) -> np.ndarray:
    """A read-only 0-d array: a constant operand of the array passes below."""
    a = np.array(value, dtype=dtype)
    a.flags.writeable = False
    return a


# f32 -> f16 (see f32_to_f16). Exponent fields are those of float32 bits, e = E + 127.
# The constants of the array passes are 0-d arrays of the passes' dtype: a ufunc call converts a Python or
# NumPy scalar first, which costs as much as the call itself on a cache-sized piece.
_F32_ABS = _const(0x7FFFFFFF, np.uint32)
_F32_SIGN = _const(0x80000000, np.uint32)
_F16_CLAMP = _const(0x47800000, np.uint32)  # 65536.0, the first value past the f16 range
# the exponent field at bits 7-14 (of x's high half): its mask, 65536's and Inf's fields, and 2**-14's (113)
_EXP_7 = _const(0x7F80, np.uint32)
_F16_CLAMP_7 = 143 << 7
_F32_INF_7 = 255 << 7
_F16_E_MIN_7 = 113 << 7
_SHIFT_16 = _const(16, np.int32)
_E_TWICE_7 = _const((1 << 16) + (1 << 3), np.uint32)  # e << 7 times this = (e << 23) + (e << 10)
# the sign bit at bit 31 (the sign of C) and at bit 15 (the sign of the half)
_SIGN_TWICE = _const(0x80008000, np.uint32)
# exponent field + 13; half exponent field + 15 = e - 113 (mod 32)
_C_OFFSET = _const((13 << 23) + (15 << 10), np.uint32)

# f16 -> f32 (see f16_to_f32)
_SHIFT_13 = _const(13, np.int32)
# as int32: the sign bit, exponent and mantissa; bits 28-30 cleared
_F16_WIDE_MASK = _const(0x8FFFE000 - (1 << 32), np.int32)
_F16_WIDE_SCALE = _const(2.0**112, np.float32)


def _chunks(n: int, size: int):
    """``(start, stop)`` of the ``size``-long pieces of ``range(n)``."""
    return ((i, min(n, i + size)) for i in range(0, n, size))


def _output(out, shape, dtype, name: str) -> np.ndarray:
    """A new C-contiguous array for a conversion's result, or ``out`` after checking it can take it."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not (isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == shape and out.flags.c_contiguous
            and out.flags.writeable):
        raise ValueError(f"{name}: out must be a writeable C-contiguous {np.dtype(dtype)} array of shape {shape}")
    return out


def _f32_to_f16(x, f16c: bool, out) -> np.ndarray:
    """f32 -> f16 bits, RNE; NaN by the F16C rule (``f16c``) or ggml's portable one. See ``f32_to_f16``."""
    u = f32_bits(x)
    h = _output(out, u.shape, np.uint16, "f32_to_f16")
    uf, hf = u.reshape(-1), h.reshape(-1)
    m = min(uf.size, _CHUNK_F16)
    c, t = np.empty(m, dtype=np.uint32), np.empty(m, dtype=np.uint32)
    # the exponent's lower bound as an array: NumPy's maximum against a scalar is not vectorised
    e_min = np.full(m, _F16_E_MIN_7, dtype=np.uint32)
    for i, j in _chunks(uf.size, _CHUNK_F16):
        k = j - i
        _f32_to_f16_chunk(uf[i:j], hf[i:j], c[:k], t[:k], e_min[:k], f16c)
    return h


def _f32_to_f16_chunk(u, h, c, t, e_min, f16c: bool) -> None:
    """One cache-sized piece of ``_f32_to_f16``: f32 bits ``u`` -> f16 bits ``h``, in the work arrays ``c, t``.

    One float32 addition ``x + C`` rounds and encodes at once: ``C`` (below) is chosen so that the low 16 bits
    of the sum are the half. Everything else builds ``C`` from the sign and exponent of ``x``, in 7 passes and one
    max-reduction (which finds values past the f16 range).
    """
    bits = u
    # the high half of x, shifted down arithmetically: bit 15 and bits 16-31 are the sign, bits 7-14 the exponent
    np.right_shift(u.view(np.int32), _SHIFT_16, out=t.view(np.int32))
    np.bitwise_and(t, _EXP_7, out=c)
    top = np.maximum.reduce(c)
    if top >= _F16_CLAMP_7:
        # |x| >= 65536, Inf and NaN: go on with |x| clamped to 65536, which rounds to Inf (NaN is fixed below)
        u = np.minimum(u & _F32_ABS, _F16_CLAMP) | (u & _F32_SIGN)
        np.right_shift(u.view(np.int32), _SHIFT_16, out=t.view(np.int32))
        np.bitwise_and(t, _EXP_7, out=c)
    # C, for x with sign s and exponent field e (e' = max(e, 113), the binade of x or, for |x| < 2**-14, of
    # the subnormal halves), has the bits
    #     s << 31 | (e' + 13) << 23 | 2 << 16 | s << 15 | ((e' - 113) mod 32) << 10
    # i.e. C = +-2**(E' + 13) * (1 + M / 2**23), the mantissa M even and below 2**18.
    # * Rounding: x and C have the same sign, so |x + C| = |C| + |x| rounded. |x| < 2**(E' + 1), so the sum stays
    #   in C's binade [2**(E' + 13), 2**(E' + 14)), whose float32 step 2**(E' - 10) is the f16 step of |x|;
    #   C is a multiple of it, so the sum is |C| + k * 2**(E' - 10) with k = |x| / 2**(E' - 10) rounded to
    #   nearest, ties to the even sum mantissa M + k, i.e. to even k: the f16 rounding of |x|, k in [0, 2048].
    # * Encoding: the bits of the sum are those of C plus k (no carry out of the mantissa), so its low 16 bits
    #   are s << 15 | ((E' + 14) << 10) + k, the bits of the half s * k * 2**(E' - 10): for a normal half
    #   (E' + 15) << 10 | (k - 1024), for E' = -14 the subnormal k (k = 1024 is 2**-14, and a carry to the next
    #   exponent is the rounding up into the next binade, up to 0x7C00 = Inf for |x| >= 65520).
    # Built as: (e' << 7) * (2**16 + 2**3) = e' << 23 | e' << 10 (no overlap: e' <= 143); + the constant sets
    # the exponent to e' + 13 and bits 10-17 to e' + 15 = (e' - 113) mod 32 + 128, whose bit 15 is clear (e' + 15
    # is in [128, 158]) and whose bit 17 lands in the mantissa's free part; then the two sign bits, kept from the
    # shifted high half (bits 31 and 15).
    np.maximum(c, e_min, out=c)
    np.multiply(c, _E_TWICE_7, out=c)
    np.bitwise_and(t, _SIGN_TWICE, out=t)
    np.add(c, t, out=c)
    np.add(c, _C_OFFSET, out=c)
    cf = c.view(np.float32)
    np.add(u.view(np.float32), cf, out=cf)
    np.copyto(h, c, casting="unsafe")
    if top == _F32_INF_7:
        nan = (bits & _F32_ABS) > 0x7F800000
        un = bits[nan]
        fixed = ((un >> np.uint32(16)) & np.uint32(0x8000)) | np.uint32(0x7E00)
        if f16c:
            fixed |= (un >> np.uint32(13)) & np.uint32(0x3FF)
        h[nan] = fixed


def f32_to_f16(x, out: np.ndarray | None = None) -> np.ndarray:
    """f32 -> f16 bits (uint16) as F16C ``vcvtps2ph`` with round-to-nearest-even.

    Finite values round to nearest, ties to even, by one float32 addition ``x + C``: for ``|x|`` in
    ``[2**E, 2**(E+1))`` (``E >= -14``; ``E = -14`` for the subnormal range) ``C`` has the sign of ``x`` and lies
    in the binade ``[2**(E+13), 2**(E+14))``, whose float32 ulp ``2**(E-10)`` is the f16 step of ``x``, so IEEE
    float32 addition performs exactly the f16 rounding; ``C``'s low mantissa bits are chosen so that the low 16
    bits of the sum are the half (see ``_f32_to_f16_chunk``). ``|x| >= 65520`` rounds up to Inf. NaN keeps its
    sign and the top 10 payload bits and is quieted (bit 9 set).
    ``out``: an optional C-contiguous uint16 array of ``x``'s shape.
    """
    return _f32_to_f16(x, True, out)


def f32_to_f16_soft(x, out: np.ndarray | None = None) -> np.ndarray:
    """f32 -> f16 bits as ggml's portable ``ggml_compute_fp32_to_fp16``: RNE, and NaN -> sign | 0x7E00."""
    return _f32_to_f16(x, False, out)


def f32_to_f16_cpu_row(x) -> np.ndarray:
    """f32 rows (last axis) -> f16 bits as upstream ggml's CPU ``from_float`` for F16 (``ggml_cpu_fp32_to_fp16``).

    The first ``n - n % 4`` values of each row of ``n`` take F16C (``f32_to_f16``), the last ``n % 4`` the portable
    routine (``f32_to_f16_soft``); the two differ only on NaN payloads.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0:
        raise ValueError("f32_to_f16_cpu_row: x must have at least one dimension (rows along the last axis)")
    n = x.shape[-1]
    out = f32_to_f16(x)
    if n % 4:
        out[..., n - n % 4 :] = f32_to_f16_soft(x[..., n - n % 4 :])
    return out


def f16_to_f32(h, out: np.ndarray | None = None) -> np.ndarray:
    """f16 bits (uint16) -> float32, exact.

    The int16 bits, sign-extended to 32 bits and shifted up by 13, hold the sign in bit 31 and exponent and
    mantissa in bits 13..27; masking bits 28..30 leaves a float32 that is the half's value times ``2**-112``
    (an f32 subnormal for a subnormal half), and one exact multiplication by ``2**112`` finishes. Exponent 31
    (Inf, NaN) is patched: NaN keeps its sign and payload and is quieted, as both ``vcvtph2ps`` and ggml's
    portable ``ggml_compute_fp16_to_fp32`` (whose final float multiply quiets a signalling NaN) do.
    ``out``: an optional C-contiguous float32 array of ``h``'s shape.
    """
    h = np.ascontiguousarray(h, dtype=np.uint16)
    y = _output(out, h.shape, np.float32, "f16_to_f32")
    hf, yf = h.reshape(-1), y.reshape(-1)
    special = False
    for i, j in _chunks(hf.size, _CHUNK_WIDEN):
        hc, yc = hf[i:j], yf[i:j]
        yi = yc.view(np.int32)
        # sign-extend by a plain int16 -> int32 copy, then shift in place: a shifting ufunc with a widening
        # cast would go through NumPy's slower buffered loop
        np.copyto(yi, hc.view(np.int16), casting="unsafe")
        # exponent 31 (Inf, NaN), tested while the chunk is in cache by two max-reductions instead of a mask
        # and a pass: the negative ones (0xFC00-0xFFFF) are the largest uint16 values, the positive ones
        # (0x7C00-0x7FFF) the largest int16 values
        special = special or hc.max() >= 0xFC00 or hc.view(np.int16).max() >= 0x7C00
        np.left_shift(yi, _SHIFT_13, out=yi)
        np.bitwise_and(yi, _F16_WIDE_MASK, out=yi)
        np.multiply(yc, _F16_WIDE_SCALE, out=yc)
    if special:
        sel = (hf & np.uint16(0x7C00)) == 0x7C00
        quiet = (hf[sel] & np.uint16(0x3FF)) != 0
        yf.view(np.int32)[sel] |= np.where(quiet, np.int32(0x7FC00000), np.int32(0x7F800000))
    return y


def f32_to_bf16(x, out: np.ndarray | None = None) -> np.ndarray:
    """f32 -> bf16 bits as ggml's scalar ``ggml_compute_fp32_to_bf16``.

    Round to nearest even by ``(u + 0x7fff + ((u >> 16) & 1)) >> 16``; NaN -> ``(u >> 16) | 0x40`` (quieted).
    Subnormals are rounded like any other value. uint32 arithmetic cannot overflow: the largest non-NaN pattern
    is -Inf, 0xFF800000, and 0xFF800000 + 0x8000 < 2**32; NaN lanes, the only ones that could, are replaced.
    ``out``: an optional C-contiguous uint16 array of ``x``'s shape.
    """
    u = f32_bits(x)
    h = _output(out, u.shape, np.uint16, "f32_to_bf16")
    uf, hf = u.reshape(-1), h.reshape(-1)
    r_buf = np.empty(min(uf.size, _CHUNK_NARROW), dtype=np.uint32)
    for i, j in _chunks(uf.size, _CHUNK_NARROW):
        uc, hc, r = uf[i:j], hf[i:j], r_buf[: j - i]
        np.bitwise_and(uc, np.uint32(0x7FFFFFFF), out=r)
        nan = r.max() > 0x7F800000
        np.right_shift(uc, np.uint32(16), out=r)
        r &= np.uint32(1)
        r += uc
        r += np.uint32(0x7FFF)
        r >>= np.uint32(16)
        np.copyto(hc, r, casting="unsafe")
        if nan:
            sel = (uc & np.uint32(0x7FFFFFFF)) > 0x7F800000
            hc[sel] = (uc[sel] >> np.uint32(16)) | np.uint32(0x40)
    return h


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


def bf16_to_f32(b, out: np.ndarray | None = None) -> np.ndarray:
    """bf16 bits (uint16) -> float32: the bits shifted left by 16 (exact, NaN payload kept).

    ``out``: an optional C-contiguous float32 array of ``b``'s shape.
    """
    b = np.ascontiguousarray(b, dtype=np.uint16)
    y = _output(out, b.shape, np.float32, "bf16_to_f32")
    np.left_shift(b, 16, out=y.view(np.uint32), dtype=np.uint32)
    return y


def roundf(x, out: np.ndarray | None = None) -> np.ndarray:
    """C ``roundf``: nearest integer, halfway cases away from zero, as float32.

    Computed as ``trunc(x + copysign(0.5 - 2**-25, x))``: adding the largest float below 0.5 (with ``x``'s sign)
    and truncating is ``roundf`` for every float32: below
    a half nothing reaches the next integer, and an exact .5 sums to a tie that rounds to the even, larger-magnitude
    neighbour; from 2**23 up the addition rounds back to ``x``. Signed zeros, infinities and NaN pass through.
    ``out``: an optional float32 array of ``x``'s shape to work in (``x`` may be ``out`` itself).
    """
    v = np.array(x, dtype=np.float32) if out is None else out
    if out is not None and v is not x:
        np.copyto(v, x)
    half = np.empty(v.shape, dtype=np.uint32)
    # copysign by integer ops: NumPy's float32 copysign is several times slower than two bit operations.
    np.bitwise_and(v.view(np.uint32), np.uint32(0x80000000), out=half)
    half |= _HALF_BELOW_BITS
    with np.errstate(invalid="ignore"):  # signalling NaNs
        v += half.view(np.float32)
    return np.trunc(v, out=v)


def nearest_int(x) -> np.ndarray:
    """ggml's ``nearest_int``: round half to even by adding 1.5*2**23 in float32 (valid for |x| <= 4194303).

    Reproduces ``nearest_int`` (ggml-quants.c): ``val = x + 12582912.f``, then the low 23 mantissa bits minus
    0x400000, in int32 arithmetic; outside the valid range (inf, NaN, huge) the same bit arithmetic, as in C with
    its asserts compiled out. Returns int32.
    """
    v = np.ascontiguousarray(x, dtype=np.float32) + _F32_MAGIC_ROUND
    i = v.view(np.int32)
    i &= np.int32(0x007FFFFF)
    i -= np.int32(0x00400000)
    return i


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
