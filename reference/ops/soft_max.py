"""soft_max: scaled, masked softmax over each row (``ggml_soft_max_ext``; ``ggml_compute_forward_soft_max_f32``).

``a`` is f32 ``[ne0, ne1, ne2, ne3]`` with packed rows; ``mask`` (optional) is f16 or f32 ``[ne0, >= ne1]``,
contiguous, and row ``i1`` of every head uses mask row ``i1``; the head of row (i1, i2, i3) is ``i2``. This is
upstream ggml's indexing (ggml-cpu/ops.cpp). ggml.c@676f0e71b walks the flattened rows ``r`` at ``r*nb[1]``
with mask row ``r % ne1`` and head ``(r / ne1) % ne2``: the same for a contiguous ``a`` (the only case it
handles correctly). Per row ``x`` (float32 throughout), with ``W = vexp.WIDTH[simd]``::

    w[i]  = x[i] * scale                                   (ggml_vec_scale_f32)
    w[i]  = fma(slope, mask[i], w[i])   with FMA           (GNU-mode contraction of w += slope*m; exact if slope=1)
          = w[i] + slope*mask[i]        without FMA        (sse2, sse2_avx: product and sum each rounded)
    max   = MAX(... MAX(MAX(-inf, w[0]), w[1]) ..., w[n-1])      (MAX(a, b) = a > b ? a : b)
    e[i]  = v_expf(w[i] - max)  for the first W*floor(n/W) values;  expf(w[i] - max) for the tail
    sum   = double sum, in order, of each W-chunk's float horizontal sum and of each tail value
    y[i]  = e[i] * (float)(1.0 / sum)

``simd`` names the build (``GgmlBuild.simd``, :mod:`mlaref.reference.builds`); ggml_vec_soft_max_f32
(ggml-cpu/vec.cpp@ggml 0.15.3) and ggml_v_expf (ggml-cpu/vec.h@ggml 0.15.3) are chosen at compile time:

* ``"avx512"`` (AVX512F+DQ, the default): 16-lane chunks, the ``__m512`` ``v_expf`` (``vscalefps``), the chunk
  summed by ``_mm512_reduce_add_ps`` (halves 16 -> 8 -> 4 -> 2 -> 1);
* ``"avx2"`` (AVX2+FMA): 8-lane chunks, the ``__m256`` ``v_expf`` (``fma(j, 2^n, 2^n)``, two-step scaling for
  |n| > 126), halves 8 -> 4 -> 2 -> 1 (extract-high + low, movehl, movehdup);
* ``"sse2_fma"``, ``"sse2_avx"``, ``"sse2"``: 4-lane chunks, the ``__m128`` ``v_expf`` (with FMA, or each
  multiply and add rounded), summed ``(v0+v2) + (v1+v3)`` when compiled with AVX and ``(v0+v1) + (v2+v3)``
  (the shuffle variant) on the x86-64 baseline.

Each ``v_expf`` is reproduced step by step with correctly rounded FMAs (``fp.fmaf``) in :mod:`.vexp`; the tail
uses libm ``expf`` (:mod:`mlaref.reference.libm`).

ALiBi (``max_bias > 0``): with ``n_head = ne2`` and ``n_head_log2 = 2^floor(log2(n_head))``,
``m0 = powf(2, -max_bias / n_head_log2)``, ``m1 = powf(2, -(max_bias/2) / n_head_log2)``, and head ``h``
has slope ``powf(m0, h+1)`` if ``h < n_head_log2`` else ``powf(m1, 2(h - n_head_log2) + 1)``; otherwise 1.
Not on the FlashMLA-2 prompt path (MoE gating and the token-generation path only).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math

import numpy as np

from mlaref.reference import libm as libm
from mlaref.reference import fp
from mlaref.reference.ops._common import check_rows_contiguous, check_tensor
from mlaref.reference.ops.vexp import FMA, WIDTH, check_simd, chunk_sum, v_expf, v_expf_avx512
from mlaref.reference.tensor import Tensor

__all__ = ["soft_max", "v_expf_avx512", "alibi_slopes"]

_F = np.float32


@functools.cache
def _powf():
    fn = ctypes.CDLL(ctypes.util.find_library("m")).powf
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float, ctypes.c_float]
    return fn


def alibi_slopes(n_head: int, max_bias: float) -> np.ndarray:
    """The per-head slope of ggml's soft_max (all 1 when ``max_bias == 0``)."""
    if max_bias <= 0:
        return np.ones(n_head, dtype=np.float32)
    n_head_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0 = _powf()(2.0, float(_F(-_F(max_bias) / _F(n_head_log2))))
    m1 = _powf()(2.0, float(_F(-(_F(max_bias) / _F(2)) / _F(n_head_log2))))
    s = [_powf()(m0, float(h + 1)) if h < n_head_log2 else _powf()(m1, float(2 * (h - n_head_log2) + 1))
         for h in range(n_head)]
    return np.array(s, dtype=np.float32)


def soft_max(a: Tensor, mask: Tensor | None = None, scale: float = 1.0, max_bias: float = 0.0, *,
             simd: str = "avx512") -> Tensor:
    """``ggml_soft_max_ext(a, mask, scale, max_bias)`` as the ggml build ``simd`` computes it (``vexp.SIMD``)."""
    check_simd("soft_max", simd)
    check_tensor("soft_max", "a", a, ("f32",))
    check_rows_contiguous("soft_max", "a", a)
    if max_bias < 0 or not np.isfinite(max_bias):
        raise ValueError(f"soft_max: max_bias must be finite and >= 0, got {max_bias}")
    x = a.to_numpy()  # (ne3, ne2, ne1, ne0)
    w = (x * _F(scale)).astype(np.float32)
    if mask is not None:
        check_tensor("soft_max", "mask", mask, ("f16", "f32"))
        if mask.ne[0] != a.ne[0] or mask.ne[1] < a.ne[1] or mask.ne[2] * mask.ne[3] != 1:
            raise ValueError(
                f"soft_max: mask must be [a.ne[0], >= a.ne[1]] = [{a.ne[0]}, >= {a.ne[1]}], got {list(mask.ne)}"
            )
        if not mask.is_contiguous():
            raise ValueError("soft_max: mask must be contiguous")
        m = mask.to_numpy()[0, 0, : a.ne[1]]  # (ne1, ne0)
        slope = alibi_slopes(a.ne[2], max_bias)[None, :, None, None]
        if FMA[simd]:
            w = fp.fmaf(slope, m[None, None], w)
        else:
            with np.errstate(invalid="ignore", over="ignore"):
                w = (w + (slope * m[None, None]).astype(np.float32)).astype(np.float32)
    elif max_bias > 0:
        raise ValueError("soft_max: ALiBi (max_bias > 0) needs a mask")
    # ggml_vec_max_f32: max = MAX(max, w[i]) in index order with MAX(a, b) = a > b ? a : b, starting at -inf
    # (so a NaN is kept only when it comes last, and -0 follows +0); np.max would propagate every NaN.
    mx = np.full(w.shape[:-1], -np.inf, dtype=np.float32)
    for i in range(w.shape[-1]):
        mx = np.where(mx > w[..., i], mx, w[..., i])
    mx = mx[..., None]
    d = (w - mx).astype(np.float32)
    n, width = a.ne[0], WIDTH[simd]
    cut = n // width * width
    e = np.empty_like(d)
    s = np.zeros(d.shape[:-1], dtype=np.float64)
    if cut:
        e[..., :cut] = v_expf(d[..., :cut], simd)
        for c in range(0, cut, width):
            s = s + chunk_sum(e[..., c : c + width], simd).astype(np.float64)
    if cut < n:
        e[..., cut:] = libm.expf(np.ascontiguousarray(d[..., cut:]))
        for i in range(cut, n):
            s = s + e[..., i].astype(np.float64)
    inv = (1.0 / s).astype(np.float32)
    dst = Tensor.empty("f32", a.ne)
    dst.storage()[...] = e * inv[..., None]
    return dst
