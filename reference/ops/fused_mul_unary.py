"""fused_mul_unary: ``unary(a) * b`` in one pass (ik_llama.cpp only: ``ggml_fused_mul_unary``, GGML_OP_FUSED_MUL_UNARY).

``a`` (the gate) and ``b`` (the up projection) are f32 of one shape ``[ne0, ne1, ne2, ne3]``; ``op`` is
``"SILU"``, ``"GELU"`` or ``"RELU"``. The result is a new contiguous f32 tensor of a's shape. ik_llama.cpp@676f0e71b
(ggml.c, ``ggml_compute_forward_fused_mul_unary_f32``) walks the flattened rows ``r`` at ``r*nb[1]`` of a, b and
dst, so a and b must be ``ggml_is_contiguous_1`` (packed rows, higher dimensions packed over the rows; ggml
asserts it for a and silently misreads a b that is not). Per row of ``n = ne0`` values, float32 throughout, for
the build ``simd`` (``GgmlBuild.simd``, :mod:`mlaref.reference.builds`; default ``"avx512"``):

* **SILU** (``ggml_vec_mul_silu_f32``, ggml.c@676f0e71b): ``z = v_silu(x) * y`` on the first ``W*floor(n/W)``
  values, ``z = silu_f32(x) * y`` on the tail, with the build's chunk ``W`` and ``v_expf`` (16 lanes on
  AVX512F+DQ, 8 on AVX2+FMA, 4 on SSE2; :mod:`.vexp`, the same ``ggml_v_expf`` as ggml-cpu/vec.h@ggml 0.15.3):
  exactly ``mul(unary(a, "SILU"), b)`` of upstream ggml (the same ``ggml_v_silu`` / ``ggml_silu_f32``, one more
  rounded product), which the tests check against ggml-python.
* **RELU**: ``ggml_vec_relu_f32`` then ``ggml_vec_mul_f32``: exactly ``mul(unary(a, "RELU"), b)``.
* **GELU** (``ggml_vec_mul_gelu_f32``), modelled for ``simd="avx512"`` only (ik's ``__m256`` ``ggml_v_gelu`` is
  another formula, and builds below AVX2 take the table everywhere): **not** upstream's table lookup on the
  SIMD part. The first ``16*floor(n/16)`` values take ik's AVX-512 ``ggml_v_gelu``::

      arg = fmaf(x, A*x, 1) * (C*x)          A = 0.044715f, C = 2*0.7978845608f (exact doubling)
      z   = (x * (arg > 30 ? 1 : e / (e + 1))) * y,    e = v_expf(arg)

  and the tail takes the f16 table (``x <= -10``: 0; ``x >= 10``: ``x*y``; else ``T[f16(x)]*y``) with ik's
  F16C rounding for the key. This is modelled from the source and bounded by an NMSE test against float64
  gelu; ik itself is not run here.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference import fp
from mlaref.reference.ops._common import check_tensor
from mlaref.reference.ops.unary import (GELU_COEF_A, SIMD_WIDTH, SQRT_2_OVER_PI, UNARY_OPS, gelu_table_lookup,
                                        relu, silu_row)
from mlaref.reference.ops.vexp import check_simd, v_expf_avx512
from mlaref.reference.tensor import Tensor

__all__ = ["fused_mul_unary", "v_gelu_avx512_ik"]

_F = np.float32


def v_gelu_avx512_ik(x: np.ndarray) -> np.ndarray:
    """ik_llama.cpp's AVX-512 ``ggml_v_gelu(x, A, 2*S)`` (ggml.c@676f0e71b), element-wise on float32."""
    x = np.asarray(x, dtype=np.float32)
    c2 = (_F(2) * SQRT_2_OVER_PI).astype(np.float32)
    with np.errstate(all="ignore"):
        arg = fp.fmaf(x, (GELU_COEF_A * x).astype(np.float32), _F(1))
        arg = (arg * (c2 * x).astype(np.float32)).astype(np.float32)
        e = v_expf_avx512(arg)
        ratio = (e / (e + _F(1)).astype(np.float32)).astype(np.float32)
        return (x * np.where(arg > 30, _F(1), ratio)).astype(np.float32)


def _gelu_row_ik(x: np.ndarray) -> np.ndarray:
    n = x.shape[-1]
    cut = n // SIMD_WIDTH * SIMD_WIDTH
    g = np.empty_like(x)
    g[..., :cut] = v_gelu_avx512_ik(x[..., :cut])
    g[..., cut:] = gelu_table_lookup(x[..., cut:], f16c=True)
    return g


def _check_cont1(arg: str, t: Tensor) -> None:
    if not t.is_contiguous(1) or t.nb[0] != 4:
        raise ValueError(f"fused_mul_unary: {arg} must have packed rows and packed higher dimensions "
                         "(ggml_is_contiguous_1; ik walks rows at r*nb[1])")


def fused_mul_unary(a: Tensor, b: Tensor, op: str = "SILU", *, simd: str = "avx512") -> Tensor:
    """``ggml_fused_mul_unary(a, b, op)``: ``unary_op(a) * b`` element-wise, as the build ``simd``
    (``vexp.SIMD``) computes it (see the module docstring)."""
    check_simd("fused_mul_unary", simd)
    check_tensor("fused_mul_unary", "a", a, ("f32",))
    check_tensor("fused_mul_unary", "b", b, ("f32",))
    if not isinstance(op, str):
        raise TypeError(f"fused_mul_unary: op must be a str naming a unary op, got {type(op).__name__}")
    if op not in UNARY_OPS:
        raise ValueError(f"fused_mul_unary: op must be one of {', '.join(UNARY_OPS)}, got {op!r}")
    if op == "GELU" and simd != "avx512":
        raise NotImplementedError(f"fused_mul_unary: GELU is modelled for ik's AVX-512 build only (simd='avx512'), "
                                  f"got simd={simd!r}")
    if a.ne != b.ne:
        raise ValueError(f"fused_mul_unary: a and b must have the same shape, got {list(a.ne)} and {list(b.ne)}")
    _check_cont1("a", a)
    _check_cont1("b", b)
    x, y = a.to_numpy(), b.to_numpy()
    if op == "SILU":
        act = silu_row(x, simd)
    elif op == "RELU":
        act = relu(x)
    else:
        act = _gelu_row_ik(x)
    dst = Tensor.empty("f32", a.ne)
    with np.errstate(all="ignore"):
        z = (act * y).astype(np.float32)  # the table tail's x >= 10 case is x*y: act = x there
    dst.storage()[...] = z
    return dst
