"""unary: element-wise activations SILU, GELU, RELU (``ggml_unary``; ``ggml_compute_forward_{silu,gelu,relu}_f32``).

``a`` is f32 ``[ne0, ne1, ne2, ne3]`` with packed rows (any row strides); the result is a new contiguous f32
tensor of a's shape. Each row of ``n = ne0`` values runs through one vector routine, so the position of a value
in its row matters (SIMD chunks versus scalar tail). What upstream ggml computes (vec.h, vec.cpp, ggml-cpu.c at
ggml 0.15.3 as vendored by ggml-python 0.0.45), all in float32, for the build ``simd`` (``GgmlBuild.simd``,
:mod:`mlaref.reference.builds`; default ``"avx512"``):

* **SILU** (``ggml_vec_silu_f32``, ggml-cpu/vec.cpp@ggml 0.15.3): the first ``W*floor(n/W)`` values of a row
  take ``ggml_v_silu``, ``x / (1 + v_expf(0 - x))``; the last ``n % W`` take ``ggml_silu_f32``,
  ``x / (1 + expf(-x))`` with libm ``expf``. ``W`` and ``v_expf`` are the build's (:mod:`.vexp`,
  ggml-cpu/vec.h@ggml 0.15.3): 16 lanes and the ``__m512`` ``v_expf`` on AVX512F+DQ (``"avx512"``), 8 lanes
  and the ``__m256`` one on AVX2+FMA (``"avx2"``), 4 lanes and the ``__m128`` one otherwise (with FMA:
  ``"sse2_fma"``; without, each multiply and add rounded: ``"sse2_avx"``, ``"sse2"``).
  Each ``+`` and ``/`` is rounded once. ik_llama.cpp@676f0e71b's ``ggml_v_silu`` / ``ggml_vec_silu_f32``
  (ggml.c) are the same code.
* **GELU** (``ggml_vec_gelu_f32`` with ``GGML_GELU_FP16``): a table lookup. ``x <= -10`` gives 0, ``x >= 10``
  gives ``x``; otherwise ``y = f16_to_f32(T[f32_to_f16(x)])`` with ``T[h] = f32_to_f16(gelu(f16_to_f32(h)))``
  and ``gelu(x) = (0.5*x) * (1 + tanhf((S*x) * fmaf(A*x, x, 1)))``, ``A = 0.044715f``,
  ``S = 0.7978845608f``, libm ``tanhf``. The ``fmaf`` is GCC's contraction of ``1.0f + GELU_COEF_A*x*x`` in
  the GNU-mode build of a target with FMA (it is what makes all 65536 table entries agree with ggml-python;
  without it one differs); a build without FMA (``"sse2"``, ``"sse2_avx"``) rounds ``A*x*x`` and the sum.
  Both f16 conversions are ggml's portable ``GGML_CPU_FP32_TO_FP16`` (``fp.f32_to_f16_soft``; NaN
  -> sign | 0x7E00).
* **RELU** (``ggml_vec_relu_f32``): ``x > 0 ? x : 0`` (so -0 and NaN give +0).

:func:`silu_row` and :func:`gelu_table_lookup` are the building blocks ``fused_mul_unary`` reuses.
"""

from __future__ import annotations

import functools

import numpy as np

from mlaref.reference import libm as libm
from mlaref.reference import fp
from mlaref.reference.ops._common import check_rows_contiguous, check_tensor
from mlaref.reference.ops.vexp import FMA, WIDTH, check_simd, v_expf
from mlaref.reference.tensor import Tensor

__all__ = ["unary", "UNARY_OPS", "silu_row", "gelu_f32", "gelu_table_lookup", "relu"]

UNARY_OPS = ("SILU", "GELU", "RELU")

_F = np.float32
GELU_COEF_A = _F(0.044715)
SQRT_2_OVER_PI = _F(0.79788456080286535587989211986876)
SIMD_WIDTH = WIDTH["avx512"]  # floats per __m512: the chunk of ggml's AVX-512 vector routines


def v_silu(x: np.ndarray, simd: str = "avx512") -> np.ndarray:
    """``ggml_v_silu`` of build ``simd``: ``x / (1 + v_expf(0 - x))``, each step rounded once."""
    with np.errstate(all="ignore"):
        e = v_expf((_F(0) - x).astype(np.float32), simd)
        return (x / (_F(1) + e).astype(np.float32)).astype(np.float32)


def v_silu_avx512(x: np.ndarray) -> np.ndarray:
    """``ggml_v_silu`` (AVX-512): ``x / (1 + v_expf(0 - x))``, each step rounded once."""
    return v_silu(x, "avx512")


def silu_f32(x: np.ndarray) -> np.ndarray:
    """``ggml_silu_f32``: ``x / (1 + expf(-x))`` with libm ``expf``."""
    with np.errstate(all="ignore"):
        e = libm.expf(np.ascontiguousarray(-x, dtype=np.float32))
        return (x / (_F(1) + e).astype(np.float32)).astype(np.float32)


def silu_row(x: np.ndarray, simd: str = "avx512") -> np.ndarray:
    """``ggml_vec_silu_f32`` of build ``simd`` on rows along the last axis: SIMD chunks of ``WIDTH[simd]``,
    scalar tail."""
    check_simd("silu_row", simd)
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[-1]
    cut = n // WIDTH[simd] * WIDTH[simd]
    y = np.empty_like(x)
    y[..., :cut] = v_silu(x[..., :cut], simd)
    if cut < n:
        y[..., cut:] = silu_f32(x[..., cut:])
    return y


def gelu_f32(x: np.ndarray, contract: bool = True) -> np.ndarray:
    """``ggml_gelu_f32`` in float32 with libm ``tanhf``; ``contract``: ``1 + A*x*x`` as ``fmaf(A*x, x, 1)``."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(all="ignore"):
        ax = (GELU_COEF_A * x).astype(np.float32)
        inner = fp.fmaf(ax, x, _F(1)) if contract else (_F(1) + (ax * x).astype(np.float32)).astype(np.float32)
        arg = ((SQRT_2_OVER_PI * x).astype(np.float32) * inner).astype(np.float32)
        t = libm.tanhf(arg)
        return ((_F(0.5) * x).astype(np.float32) * (_F(1) + t).astype(np.float32)).astype(np.float32)


@functools.cache
def _gelu_table(f16c: bool, contract: bool = True) -> np.ndarray:
    """The 65536-entry f16 table ``T[h] = f32_to_f16(gelu_f32(f16_to_f32(h), contract))`` (ggml_cpu_init)."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    to_f16 = fp.f32_to_f16 if f16c else fp.f32_to_f16_soft
    t = to_f16(gelu_f32(fp.f16_to_f32(h), contract))
    t.setflags(write=False)
    return t


def gelu_table_lookup(x: np.ndarray, f16c: bool = False, contract: bool = True) -> np.ndarray:
    """``ggml_vec_gelu_f32`` under ``GGML_GELU_FP16``: 0 for ``x <= -10``, ``x`` for ``x >= 10``, else the table.

    ``f16c`` selects the f16 rounding of NaN (F16C ``_cvtss_sh``, as ik_llama.cpp's ``GGML_FP32_TO_FP16``
    on x86) instead of upstream's portable routine; finite values round the same. ``contract``: the table was
    built with ``1 + A*x*x`` contracted to an fma (a build with FMA).
    """
    x = np.asarray(x, dtype=np.float32)
    to_f16 = fp.f32_to_f16 if f16c else fp.f32_to_f16_soft
    y = fp.f16_to_f32(_gelu_table(f16c, contract)[to_f16(x)])
    return np.where(x <= -10, _F(0), np.where(x >= 10, x, y)).astype(np.float32)


def relu(x: np.ndarray) -> np.ndarray:
    """``ggml_vec_relu_f32``: ``x > 0 ? x : 0``."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(x > 0, x, _F(0)).astype(np.float32)


def unary(a: Tensor, op: str, *, simd: str = "avx512") -> Tensor:
    """``ggml_unary(a, op)`` for ``op`` in ``UNARY_OPS`` ("SILU", "GELU", "RELU") on an f32 tensor, as the ggml
    build ``simd`` (``vexp.SIMD``) computes it."""
    check_simd("unary", simd)
    check_tensor("unary", "a", a, ("f32",))
    check_rows_contiguous("unary", "a", a)
    if not isinstance(op, str):
        raise TypeError(f"unary: op must be a str naming a unary op, got {type(op).__name__}")
    if op not in UNARY_OPS:
        raise ValueError(f"unary: op must be one of {', '.join(UNARY_OPS)}, got {op!r}")
    x = a.to_numpy()
    if op == "SILU":
        y = silu_row(x, simd)
    elif op == "GELU":
        y = gelu_table_lookup(x, contract=FMA[simd])
    else:
        y = relu(x)
    dst = Tensor.empty("f32", a.ne)
    dst.storage()[...] = y
    return dst
