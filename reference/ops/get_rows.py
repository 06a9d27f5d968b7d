"""get_rows: gather rows of a matrix by i32 indices (``ggml_get_rows``; ``ggml_compute_forward_get_rows_*``).

``a`` is ``[ne0, ne1, ne2, ne3]`` of type f32, f16, bf16 or any block type; ``rows`` is i32 of shape
``[n, ne2, ne3]`` (``rows.ne[1] == a.ne[2]``, ``rows.ne[2] == a.ne[3]``, ``rows.ne[3] == 1``). The result is a new
contiguous f32 tensor ``[ne0, n, ne2, ne3]`` (i32 when ``a`` is i32)::

    dst[:, i10, i11, i12] = to_f32(a[:, rows[i10, i11, i12], i11, i12])

``to_f32`` is the exact widening of f16/bf16, a plain copy of f32/i32, and the format's ``to_float``
(dequantize) for block types: every value is exact given the source. Every index must lie in ``[0, a.ne[1])``
(ggml asserts it). a's rows must be packed (``nb[0] == type size``), as ggml's row routines read them.
Runs on one thread in ik_llama.cpp@676f0e71b (upstream facts §7); upstream ggml splits rows, which does not matter.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference.ops._common import check_rows_contiguous, check_tensor
from mlaref.reference.tensor import Tensor

__all__ = ["get_rows"]


def get_rows(a: Tensor, rows: Tensor) -> Tensor:
    """``ggml_get_rows(a, rows)``."""
    check_tensor("get_rows", "a", a)
    check_tensor("get_rows", "rows", rows, ("i32",))
    if rows.ne[1] != a.ne[2] or rows.ne[2] != a.ne[3] or rows.ne[3] != 1:
        raise ValueError(
            f"get_rows: rows must have shape [n, a.ne[2], a.ne[3], 1] = [n, {a.ne[2]}, {a.ne[3]}, 1], got {list(rows.ne)}"
        )
    check_rows_contiguous("get_rows", "a", a)
    idx = rows.to_numpy()[0]  # (ne12, ne11, ne10) = (a.ne3, a.ne2, n)
    bad = (idx < 0) | (idx >= a.ne[1])
    if bad.any():
        raise ValueError(f"get_rows: row index {int(idx[bad][0])} is outside [0, {a.ne[1]}) (a.ne[1])")
    vals = a.to_numpy()  # (ne3, ne2, ne1, ne0), exact for every source type
    i3 = np.arange(a.ne[3])[:, None, None]
    i2 = np.arange(a.ne[2])[None, :, None]
    picked = vals[i3, i2, idx]  # (ne3, ne2, n, ne0)
    out_type = "i32" if a.type == "i32" else "f32"
    dst = Tensor.empty(out_type, (a.ne[0], rows.ne[0], rows.ne[1], rows.ne[2]))
    dst.storage()[...] = picked
    return dst
