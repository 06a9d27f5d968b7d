"""multi_add: the sum of n consecutive sub-rows of each row (ik_llama.cpp only: ``ggml_multi_add``, GGML_OP_MULTI_ADD).

ik_llama.cpp@676f0e71b (ggml.c, ``ggml_multi_add`` / ``ggml_compute_forward_multi_add_f32``) sums the MoE
experts' outputs: ``a`` is the view ``[ne0, ne1]`` (``ne2 == ne3 == 1``) of the weighted expert outputs
``[ne0, n, ne1]`` whose row ``r`` starts at ``r*nb[1]``, with ``nb[1] = n*ne0*4`` for the contiguous
``[2048, 6, 512]`` tensor of upstream facts §3.3. ``n = n_experts >= 1``. The result is a new contiguous f32
``[ne0, ne1]``::

    dst[:, r] = ((0 + x_0) + x_1) + ... + x_{n-1},     x_j = the ne0 floats at byte r*nb[1] + j*ne0*4

in float32, each addition rounded once (``memset`` to +0, then ``ggml_vec_add_f32`` n times), so the first
addition turns a -0 of ``x_0`` into +0. The sub-rows ``x_j`` are read *past the view's ne0* from the same buffer:
the reference needs the bytes up to ``r*nb[1] + n*ne0*4`` to exist in a's buffer and checks that ``nb[1]`` leaves
room for them (``nb[1] >= n*ne0*4``), since ggml would read whatever lies there.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference.ops._common import check_tensor
from mlaref.reference.tensor import Tensor

__all__ = ["multi_add"]


def multi_add(a: Tensor, n_experts: int) -> Tensor:
    """``ggml_multi_add(a, n_experts)``: per row, the in-order float32 sum of ``n_experts`` sub-rows of ne0 floats."""
    check_tensor("multi_add", "a", a, ("f32",))
    if isinstance(n_experts, bool) or not isinstance(n_experts, (int, np.integer)):
        raise TypeError(f"multi_add: n_experts must be an int, got {type(n_experts).__name__}")
    n = int(n_experts)
    if n < 1:
        raise ValueError(f"multi_add: n_experts must be >= 1, got {n}")
    if a.ne[2] != 1 or a.ne[3] != 1:
        raise ValueError(f"multi_add: a must be 2-d (ne[2] == ne[3] == 1), got {list(a.ne)}")
    if a.nb[0] != 4:
        raise ValueError(f"multi_add: the elements of a's rows must be contiguous (nb[0] {a.nb[0]} != 4)")
    ne0, ne1 = a.ne[0], a.ne[1]
    span = n * ne0 * 4
    if ne1 > 1 and a.nb[1] < span:
        raise ValueError(f"multi_add: a.nb[1] ({a.nb[1]}) must be >= n_experts*ne0*4 ({span}): each row holds "
                         f"{n} sub-rows of {ne0} floats")
    need = a.offset + (ne1 - 1) * a.nb[1] + span if ne1 else 0
    if need > a.data.size:
        raise ValueError(f"multi_add: the {n} sub-rows of the last row end at byte {need}, past a's buffer "
                         f"({a.data.size} bytes)")
    acc = np.zeros((ne1, ne0), np.float32)
    for j in range(n):
        xj = np.ndarray((ne1, ne0), dtype=np.float32, buffer=a.data, offset=a.offset + j * ne0 * 4,
                        strides=(a.nb[1], 4)) if ne1 and ne0 else np.zeros((ne1, ne0), np.float32)
        with np.errstate(all="ignore"):
            acc = (acc + xj).astype(np.float32)
    dst = Tensor.empty("f32", (ne0, ne1))
    dst.storage()[...] = acc.reshape(dst.storage().shape)
    return dst
