"""add: element-wise sum with ggml broadcasting of the second operand (``ggml_add``; ``binary_op``).

``a`` and ``b`` are f32; every ``a.ne[k]`` is a multiple of ``b.ne[k]`` (``ggml_can_repeat(b, a)``), and::

    dst[i0, i1, i2, i3] = a[i0, i1, i2, i3] + b[i0 % nb0, i1 % nb1, i2 % nb2, i3 % nb3]   (ne of b)

one IEEE float32 addition per element (the SIMD ``ggml_vec_add_f32`` rounds each lane once, like NumPy's float32
``+``), so the result is bit-exact whatever the vector width. The result is a new contiguous f32 tensor of a's
shape. Inputs may be any strided views.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference.ops._common import check_tensor
from mlaref.reference.tensor import Tensor

__all__ = ["add", "broadcast_b"]


def broadcast_b(op: str, a: Tensor, b: Tensor):
    """b's values (float32) tiled to a's shape ``(ne3, ne2, ne1, ne0)``, after checking ``ggml_can_repeat(b, a)``."""
    for k in range(4):
        if b.ne[k] <= 0 or a.ne[k] % b.ne[k]:
            raise ValueError(f"{op}: b.ne[{k}] = {b.ne[k]} must divide a.ne[{k}] = {a.ne[k]} (ggml broadcasting)")
    reps = tuple(a.ne[3 - j] // b.ne[3 - j] for j in range(4))
    return np.tile(b.to_numpy(), reps)


def add(a: Tensor, b: Tensor) -> Tensor:
    """``ggml_add(a, b)`` for f32 tensors."""
    check_tensor("add", "a", a, ("f32",))
    check_tensor("add", "b", b, ("f32",))
    y = broadcast_b("add", a, b)
    dst = Tensor.empty("f32", a.ne)
    with np.errstate(all="ignore"):  # IEEE results (inf, nan) are the specified ones
        dst.storage()[...] = a.to_numpy() + y
    return dst
