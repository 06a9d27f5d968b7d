"""mul: element-wise product with ggml broadcasting of the second operand (``ggml_mul``; ``binary_op``).

``a`` and ``b`` are f32 with ``ggml_can_repeat(b, a)``::

    dst[i0, i1, i2, i3] = a[i0, i1, i2, i3] * b[i0 % nb0, i1 % nb1, i2 % nb2, i3 % nb3]   (ne of b)

one float32 multiplication per element, rounded once (``ggml_vec_mul_f32``), hence bit-exact. Typical use: a
weight row (``b`` of shape [ne0]) applied to every row of ``a``, or the MoE expert weights [1, 6, T] applied to
[2048, 6, T]. The result is a new contiguous f32 tensor of a's shape.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference.ops._common import check_tensor
from mlaref.reference.ops.add import broadcast_b
from mlaref.reference.tensor import Tensor

__all__ = ["mul"]


def mul(a: Tensor, b: Tensor) -> Tensor:
    """``ggml_mul(a, b)`` for f32 tensors."""
    check_tensor("mul", "a", a, ("f32",))
    check_tensor("mul", "b", b, ("f32",))
    y = broadcast_b("mul", a, b)
    dst = Tensor.empty("f32", a.ne)
    with np.errstate(all="ignore"):  # IEEE results (inf, nan) are the specified ones
        dst.storage()[...] = a.to_numpy() * y
    return dst
