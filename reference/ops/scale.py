"""scale: multiply every element by one float (``ggml_scale``; ``ggml_compute_forward_scale_f32``).

``dst = a * s`` in float32, one rounding per element (``ggml_vec_scale_f32``), so bit-exact. ``s`` is rounded to
float32 first, as the op parameter is a C ``float``. ``a`` is f32 and contiguous (ggml asserts
``ggml_is_contiguous``); the result is a new contiguous tensor of a's shape. In the graph:
``scale(get_rows(probs, topk), 1.0)`` for the MoE expert weights.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference.ops._common import check_tensor
from mlaref.reference.tensor import Tensor

__all__ = ["scale"]


def scale(a: Tensor, s) -> Tensor:
    """``ggml_scale(a, s)``."""
    check_tensor("scale", "a", a, ("f32",))
    if not isinstance(s, (int, float, np.floating, np.integer)) or isinstance(s, bool):
        raise TypeError(f"scale: s must be a real number, got {type(s).__name__}")
    if not a.is_contiguous():
        raise ValueError("scale: a must be contiguous (ggml_compute_forward_scale_f32 asserts ggml_is_contiguous)")
    dst = Tensor.empty("f32", a.ne)
    with np.errstate(all="ignore"):  # IEEE results (inf, nan) are the specified ones
        dst.storage()[...] = a.to_numpy() * np.float32(s)
    return dst
