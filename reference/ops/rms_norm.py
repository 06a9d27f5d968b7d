"""rms_norm: divide each row by its root mean square (``ggml_rms_norm``; ``ggml_compute_forward_rms_norm_f32``).

Per row ``x`` of ``n = ne0`` f32 values (ggml-cpu/ops.cpp upstream and ggml.c@676f0e71b agree)::

    sum   = 0.0 (double);  for i in 0..n-1:  sum += (double)(x[i] * x[i])   (product in float, sum in double)
    mean  = (float)(sum / n)                                                (division in double)
    scale = 1.0f / sqrtf(mean + eps)                                        (float)
    y[i]  = x[i] * scale                                                    (float, ggml_vec_scale_f32)

Each step is one IEEE operation rounded once; the sum runs in index order (``loop over i``, vectorised across
rows), so the result is bit-exact. ``x`` rows must be packed (ggml asserts ``nb[0] == 4``); other strides are
free. The result is a new contiguous f32 tensor. Threads take rows round-robin; the split does not matter.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference.ops._common import check_rows_contiguous, check_tensor
from mlaref.reference.tensor import Tensor

__all__ = ["rms_norm", "row_scale"]


def row_scale(x: np.ndarray, eps: np.float32) -> np.ndarray:
    """``1.0f/sqrtf(mean + eps)`` per row of ``x`` (float32 ``(..., n)``), with ggml's double sum of squares."""
    n = x.shape[-1]
    s = np.zeros(x.shape[:-1], dtype=np.float64)
    for i in range(n):
        s = s + (x[..., i] * x[..., i]).astype(np.float64)
    mean = (s / np.float64(n)).astype(np.float32)
    return (np.float32(1.0) / np.sqrt(mean + eps)).astype(np.float32)


def check_eps(op: str, eps, strict: bool) -> np.float32:
    if not isinstance(eps, (int, float, np.floating)) or isinstance(eps, bool):
        raise TypeError(f"{op}: eps must be a real number, got {type(eps).__name__}")
    e = np.float32(eps)
    if not np.isfinite(e) or e < 0 or (strict and e == 0):
        rule = "> 0" if strict else ">= 0"
        raise ValueError(f"{op}: eps must be finite and {rule} (ggml asserts it), got {eps}")
    return e


def rms_norm(a: Tensor, eps: float) -> Tensor:
    """``ggml_rms_norm(a, eps)`` on an f32 tensor."""
    check_tensor("rms_norm", "a", a, ("f32",))
    e = check_eps("rms_norm", eps, strict=False)
    check_rows_contiguous("rms_norm", "a", a)
    x = a.to_numpy()
    dst = Tensor.empty("f32", a.ne)
    dst.storage()[...] = x * row_scale(x, e)[..., None]
    return dst
