"""ggml's vector ``expf`` (``ggml_v_expf``) per x86 build, its chunk width, and soft_max's chunk horizontal sum.

Upstream ggml picks one ``ggml_v_expf`` at compile time (ggml-cpu/vec.h@ggml 0.15.3, lines ~1160-1320; the same
code is in ik_llama.cpp@676f0e71b ggml.c). All three are the Arm optimized-routines ``expf``: Cody-Waite
reduction ``x = n*ln2 + b`` with ``n = round(x*log2(e))`` by the ``0x1.8p23`` shift trick, a degree-5
polynomial in ``b``, then a scaling by ``2^n``. They differ in how the polynomial is closed, how ``2^n`` is
applied and which steps are fused. The variants are named by ``GgmlBuild.simd`` (:mod:`mlaref.reference.builds`):

============  =====  ==============================================================================================
``simd``      lanes  ``ggml_v_expf`` (every step one rounded float32 operation; ``fma`` rounded once)
============  =====  ==============================================================================================
``avx512``    16     ``__m512`` (AVX512F+DQ): ``j = fma(poly, u, fma(C1, b, 1))``; ``vscalefps(j, n)`` = ``j*2^n``
                     rounded once; ``|n| > 192``: ``n <= 0 ? 0 : +inf``
``avx2``      8      ``__m256`` (AVX2+FMA): ``j = fma(poly, u, C1*b)`` (``j`` = p(b) - 1); ``k = 2^n`` from the
                     bits of ``z`` (``(bits(z) << 23) + bits(1.0f)``); ``fma(j, k, k)``; ``|n| > 126``: the
                     two-step scaling ``fma(s2, j, s2) * s1``; ``|n| > 192``: ``s1 * s1`` (0 or +inf)
``sse2_fma``  4      ``__m128`` with ``MADD128`` = ``_mm_fmadd_ps``: the same operations as ``avx2``
``sse2_avx``  4      ``__m128`` without FMA: ``MADD128(a, b, c)`` = ``a*b`` then ``+ c``, each rounded;
                     ``NMADD128(a, b, c)`` = ``c - a*b`` likewise (``-mavx`` without ``-mfma``)
``sse2``      4      the same ``v_expf`` as ``sse2_avx`` (the x86-64 baseline)
``neon``      4      ``float32x4_t`` (aarch64): the operations of ``avx2`` (``vfmaq_f32`` / ``vfmsq_f32``, the same
                     ``|n| > 126`` / ``|n| > 192`` scaling, ``vclezq_f32`` for ``n <= 0``)
============  =====  ==============================================================================================

The ``|n| > 126`` / ``|n| > 192`` branches of the 8- and 4-lane code are taken per vector (only if some lane
needs them), but every lane then selects its own result, and the slow path's ``MADD128(k, j, k)`` equals the
fast path's ``MADD128(j, k, k)``: each variant is an element-wise function, modelled here as one.

soft_max (``ggml_vec_soft_max_f32``, vec.cpp@ggml 0.15.3 line ~531) adds each chunk's values in float before
adding them to its double sum; :func:`chunk_sum` gives that float per build:

* ``avx512``: ``_mm512_reduce_add_ps`` (GCC's avx512fintrin.h: 256-bit halves, 128-bit halves, then
  ``[2,3,0,1]`` shuffle and ``T8[0] + T8[1]``): halves 16 -> 8 -> 4 -> 2 -> 1, ``v[i] + v[i + half]``;
* ``avx2``: extract-high + low, ``movehl``, ``add_ss`` with ``movehdup``: halves 8 -> 4 -> 2 -> 1;
* ``sse2_fma``, ``sse2_avx`` (compiled with ``__AVX__``): ``movehl`` then ``movehdup``: ``(v0+v2) + (v1+v3)``;
* ``sse2`` (no AVX): the ``shuffle(2,3,0,1)`` / ``movehl`` / ``add_ss`` variant: ``(v0+v1) + (v2+v3)``;
* ``neon``: ``vaddvq_f32``, AArch64's pairwise ``faddp``: ``(v0+v1) + (v2+v3)``.

Every chunk of :data:`WIDTH` values takes the vector code; the remaining ``n % WIDTH`` take the scalar code with
libm ``expf``.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference import fp

__all__ = ["SIMD", "WIDTH", "FMA", "check_simd", "v_expf", "v_expf_avx512", "v_expf_avx2", "v_expf_sse2",
           "chunk_sum"]

SIMD = ("avx512", "avx2", "sse2_fma", "sse2_avx", "sse2", "neon")
# Floats per vector: the chunk of soft_max and SILU.
WIDTH = {"avx512": 16, "avx2": 8, "sse2_fma": 4, "sse2_avx": 4, "sse2": 4, "neon": 4}
# Whether the build has FMA: the v_expf's MADD128, and GCC's GNU-mode contraction of a*b + c in plain C.
FMA = {"avx512": True, "avx2": True, "sse2_fma": True, "sse2_avx": False, "sse2": False, "neon": True}

_F = np.float32


def check_simd(op: str, simd) -> str:
    """``simd`` if it names a variant of :data:`SIMD`, else a ``ValueError`` naming the allowed values."""
    if not isinstance(simd, str) or simd not in SIMD:
        raise ValueError(f"{op}: simd must be one of {', '.join(SIMD)} (GgmlBuild.simd), got {simd!r}")
    return simd


def _f32(bits: int) -> np.float32:
    return np.array([bits], np.uint32).view(np.float32)[0]


_R = _F(12582912.0)  # 0x1.8p23
_LOG2E = _f32(0x3FB8AA3B)  # 0x1.715476p+0
_LN2_HI = _f32(0x3F317200)  # 0x1.62e4p-1
_LN2_LO = _f32(0x35BFBE8E)  # 0x1.7f7d1cp-20
# 0x1.ffffecp-1, 0x1.fffdb6p-2, 0x1.555e66p-3, 0x1.573e2ep-5, 0x1.0e4020p-7
_C1, _C2, _C3, _C4, _C5 = (_f32(0x3F7FFFF6), _f32(0x3EFFFEDB), _f32(0x3E2AAF33), _f32(0x3D2B9F17), _f32(0x3C072010))


def _mul(a, b):
    return (np.asarray(a, _F) * np.asarray(b, _F)).astype(_F)


def _madd(fma: bool):
    """``MADD128(a, b, c)``: one correctly rounded fma, or a rounded product then a rounded sum."""
    if fma:
        return fp.fmaf
    return lambda a, b, c: (_mul(a, b) + np.asarray(c, _F)).astype(_F)


def _nmadd(fma: bool):
    """``NMADD128(a, b, c)`` / ``fnmadd``: ``c - a*b`` in one rounding, or a rounded product then a rounded
    difference."""
    if fma:
        return lambda a, b, c: fp.fmaf(-np.asarray(a, _F), b, c)  # negation is exact
    return lambda a, b, c: (np.asarray(c, _F) - _mul(a, b)).astype(_F)


def _reduce(x, fma: bool):
    """The shared first steps: ``z``, ``n = z - 0x1.8p23``, ``b = x - n*ln2`` (two steps), ``u = b*b``."""
    madd, nmadd = _madd(fma), _nmadd(fma)
    x = np.asarray(x, _F)
    z = madd(x, _LOG2E, _R)
    n = (z - _R).astype(_F)
    b = nmadd(n, _LN2_LO, nmadd(n, _LN2_HI, x))
    u = (b * b).astype(_F)
    poly = madd(madd(_C5, b, _C4), u, madd(_C3, b, _C2))
    return z, n, b, u, poly


def v_expf_avx512(x) -> np.ndarray:
    """``ggml_v_expf(__m512)`` (vec.h@ggml 0.15.3, AVX512F+DQ), element-wise on float32, exactly."""
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        _, n, b, u, poly = _reduce(x, True)
        j = fp.fmaf(poly, u, fp.fmaf(_C1, b, _F(1)))
        nn = np.where(np.isfinite(n), n, 0).astype(np.float64)
        # vscalefps: j * 2^n is exact in float64 for |n| <= 192, then one rounding to float32 (subnormals too)
        res = (j.astype(np.float64) * np.exp2(np.clip(nn, -300, 300))).astype(_F)
        alt = np.where(n <= 0, _F(0), _F(np.inf))
        out = np.where(np.abs(n) > 192, alt, res)
    return out.astype(_F)


def _v_expf_2n(x, fma: bool) -> np.ndarray:
    """The 8- and 4-lane ``ggml_v_expf``: ``2^n`` built from the bits of ``z``, scaled with ``MADD128``."""
    madd = _madd(fma)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        z, n, b, u, poly = _reduce(x, fma)
        j = madd(poly, u, (_C1 * b).astype(_F))
        e = fp.f32_bits(z) << np.uint32(23)  # uint32: the high bits fall off, as _mm*_slli_epi32
        k = fp.bits_f32(e + np.uint32(0x3F800000))  # wraps like _mm*_add_epi32
        fast = madd(j, k, k)
        g = np.where(n <= 0, np.uint32(0x82000000), np.uint32(0))
        s1 = fp.bits_f32(g + np.uint32(0x7F000000))  # 2^127, or 2^-125 for n <= 0
        s2 = fp.bits_f32(e - g)
        slow = (madd(s2, j, s2) * s1).astype(_F)
        huge = (s1 * s1).astype(_F)
        an = np.abs(n)
        out = np.where(an > 192, huge, np.where(an > 126, slow, fast))
    return out.astype(_F)


def v_expf_avx2(x) -> np.ndarray:
    """``ggml_v_expf(__m256)`` (vec.h@ggml 0.15.3, AVX2+FMA; iqk's ``v_expf``), element-wise on float32, exactly.

    ``j = fma(poly, u, C1*b)``; ``k = 2^n`` from z's bits; ``fma(j, k, k)``; for |n| > 126 the two-step scaling
    ``fma(s2, j, s2)*s1``; for |n| > 192 ``s1*s1`` (+inf or 0). Also the 4-lane ``__m128`` code with FMA."""
    return _v_expf_2n(x, True)


def v_expf_sse2(x) -> np.ndarray:
    """``ggml_v_expf(__m128)`` without FMA (vec.h@ggml 0.15.3, ``MADD128`` = mul then add), element-wise."""
    return _v_expf_2n(x, False)


_V = {"avx512": v_expf_avx512, "avx2": v_expf_avx2, "sse2_fma": v_expf_avx2, "sse2_avx": v_expf_sse2,
      "sse2": v_expf_sse2, "neon": v_expf_avx2}


def v_expf(x, simd: str) -> np.ndarray:
    """The ``ggml_v_expf`` of build variant ``simd`` (:data:`SIMD`), element-wise on float32."""
    return _V[check_simd("v_expf", simd)](x)


def chunk_sum(v: np.ndarray, simd: str) -> np.ndarray:
    """The float horizontal sum soft_max takes of each chunk: ``v`` is ``(..., WIDTH[simd])``; returns ``(...)``."""
    check_simd("chunk_sum", simd)
    v = np.asarray(v, _F)
    if v.shape[-1] != WIDTH[simd]:
        raise ValueError(f"chunk_sum: a {simd} chunk has {WIDTH[simd]} values, got {v.shape[-1]}")
    if simd in ("sse2", "neon"):  # sse2: shuffle(2,3,0,1) + add, movehl, add_ss; neon: vaddvq_f32 (faddp): pairs
        return ((v[..., 0] + v[..., 1]).astype(_F) + (v[..., 2] + v[..., 3]).astype(_F)).astype(_F)
    while v.shape[-1] > 1:
        half = v.shape[-1] // 2
        v = (v[..., :half] + v[..., half:]).astype(_F)
    return v[..., 0]
