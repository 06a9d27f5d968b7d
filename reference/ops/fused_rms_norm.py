"""fused_rms_norm: rms_norm and a weight row in one op (ik_llama.cpp's ``ggml_fused_rms_norm``; not in upstream).

Per row ``x`` of ``a`` (f32, rows packed) with weight ``w`` (f32, one row of ``ne0`` values, packed)::

    sum   = sum over i of (double)(x[i] * x[i])      in index order, as rms_norm
    mean  = (float)(sum / ne0);   scale = 1.0f / sqrtf(mean + eps)
    y[i]  = (x[i] * w[i]) * scale                    weight first (ggml_vec_mul_f32), then ggml_vec_scale_f32

Reproduces ``ggml_compute_forward_fused_rms_norm_f32`` (ggml.c@676f0e71b), which asserts ``eps > 0``. The
order matters: ``rms_norm`` then ``mul`` computes ``(x*scale)*w``, which can differ in the last bit. ik_llama.cpp
changed the order in PR #1427 (``aa053205e``, "Faster fused_rms_norm on the CPU", ggml.c, 2026-03-14):
``y[j] = scale * c[j] * x[j]``, i.e. ``(scale*w)*x``, which the April-2026 snapshot computes (upstream facts
§4g); ``order="scale_w_x"`` gives it, ``order="x_w_scale"`` (the default) 676f0e71b's. When ``w``
has more than one row or a different ``ne0``, ``ggml_fused_rms_norm`` builds ``mul(rms_norm(a), w)`` instead,
and so does this function; ``w = None`` is plain ``rms_norm``. The result is a new contiguous f32 tensor.
"""

from __future__ import annotations

from mlaref.reference.ops._common import check_rows_contiguous, check_tensor
from mlaref.reference.ops.mul import mul
from mlaref.reference.ops.rms_norm import check_eps, rms_norm, row_scale
from mlaref.reference.tensor import Tensor

__all__ = ["ORDERS", "fused_rms_norm"]

ORDERS = ("x_w_scale", "scale_w_x")  # 676f0e71b; ik_llama.cpp since #1427 (aa053205e)


def fused_rms_norm(a: Tensor, w: Tensor | None, eps: float, order: str = "x_w_scale") -> Tensor:
    """``ggml_fused_rms_norm(a, w, eps)``; ``order`` picks the version's float order (see the module docstring)."""
    if order not in ORDERS:
        raise ValueError(f"fused_rms_norm: order must be one of {', '.join(ORDERS)}, got {order!r}")
    check_tensor("fused_rms_norm", "a", a, ("f32",))
    if w is None:
        return rms_norm(a, eps)
    check_tensor("fused_rms_norm", "w", w, ("f32",))
    if w.nrows() > 1 or w.ne[0] != a.ne[0]:
        return mul(rms_norm(a, eps), w)
    e = check_eps("fused_rms_norm", eps, strict=True)
    check_rows_contiguous("fused_rms_norm", "a", a)
    check_rows_contiguous("fused_rms_norm", "w", w)
    x = a.to_numpy()
    wv = w.to_numpy().reshape(-1)
    dst = Tensor.empty("f32", a.ne)
    scale = row_scale(x, e)[..., None]
    dst.storage()[...] = (x * wv) * scale if order == "x_w_scale" else (scale * wv) * x
    return dst
