"""mul_mat_id: one mul_mat per selected expert (``ggml_mul_mat_id``; ``ggml_compute_forward_mul_mat_id``).

Shapes (``ggml_mul_mat_id``, ggml.c@676f0e71b and upstream): ``as`` = src0 ``[K, M, n_expert, 1]`` (one weight
matrix per expert, rows packed), ``b`` = src1 ``[K, n_b, T, 1]``, ``ids`` = i32 ``[n_used, T, 1, 1]`` with
``n_used % n_b == 0``. dst is a new contiguous f32 ``[M, n_used, T, 1]``::

    dst[:, i, t] = mul_mat(as[:, :, ids[i, t]], b[:, i % n_b, t])        i < n_used, t < T

so ``n_b == 1`` broadcasts one src1 row per token to all of its experts (the MoE gate/up projections of
upstream facts §3.3: as [2048, 1408, 64], b = ffn_norm [2048, 1, 512], ids [6, 512] -> [1408, 6, 512]) and
``n_b == n_used`` gives each expert slot its own row (the down projection: b [1408, 6, 512] -> [2048, 6, 512]).

Every element is the mul_mat element of :mod:`mlaref.reference.ops.mul_mat` for the same weight row and src1 row:
src1 rows are converted with the weight's vec_dot type's ``from_float`` (row by row, or block by block when
threads split a row: the same bytes, as every vec_dot type quantizes blocks independently) and each dot product
is ``vec_dot`` under ``plan``. Both ggml versions group the (slot, token) pairs by expert and run per expert a
mul_mat over its rows (upstream: vec_dot per element; ik_llama.cpp: ``iqk_mul_mat_moe`` whose float order is
its own plan), so the grouping order changes nothing. Which pairs are supported and which src1 types are
accepted is :class:`~mlaref.reference.ops.mul_mat.MulMat_253`'s rule (f32 or the vec_dot type are the inputs
both versions take; upstream asserts ``src1->type == F32`` otherwise).

``ids`` must lie in ``[0, n_expert)``: upstream asserts it (debug builds only), ik_llama.cpp@676f0e71b skips an
out-of-range id and leaves its dst columns unwritten, so the reference rejects them. ik also sizes its per-expert
row list for ``T`` entries: one expert chosen by more than ``T`` (slot, token) pairs would overflow it, which
top-k routing (distinct experts per token) never does; the reference has no such limit.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference.ops._common import check_tensor
from mlaref.reference.ops.mul_mat import MulMat_253
from mlaref.reference.tensor import Tensor

__all__ = ["mul_mat_id"]


def mul_mat_id(as_: Tensor, b: Tensor, ids: Tensor, *, plan="ggml_generic", variant: str = "x86",
               vec_dot_type: str | None = None) -> Tensor:
    """``ggml_mul_mat_id(as, b, ids)``: f32 ``[as.ne1, ids.ne0, b.ne2, 1]`` (see the module docstring)."""
    check_tensor("mul_mat_id", "as", as_)
    check_tensor("mul_mat_id", "b", b)
    check_tensor("mul_mat_id", "ids", ids, ("i32",))
    K, M, n_exp = as_.ne[0], as_.ne[1], as_.ne[2]
    n_b, T = b.ne[1], b.ne[2]
    n_used = ids.ne[0]
    if as_.ne[3] != 1 or b.ne[3] != 1:
        raise ValueError(f"mul_mat_id: as and b must be 3-d (ne[3] == 1), got as {list(as_.ne)}, b {list(b.ne)}")
    if ids.ne[2] != 1 or ids.ne[3] != 1:
        raise ValueError(f"mul_mat_id: ids must be 2-d [n_used, T], got {list(ids.ne)}")
    if ids.ne[1] != T:
        raise ValueError(f"mul_mat_id: ids.ne[1] ({ids.ne[1]}) must equal b.ne[2] ({T}): one expert list per token")
    if b.ne[0] != K:
        raise ValueError(f"mul_mat_id: as.ne[0] ({K}) must equal b.ne[0] ({b.ne[0]})")
    if n_b == 0 or n_used % n_b:
        raise ValueError(f"mul_mat_id: ids.ne[0] ({n_used}) must be a multiple of b.ne[1] ({n_b}) (broadcast)")
    if as_.nb[0] != as_.type_size:
        raise ValueError(f"mul_mat_id: as must not be transposed (nb[0] {as_.nb[0]} != type size {as_.type_size})")
    if b.nb[0] != b.type_size:
        raise ValueError(f"mul_mat_id: the elements of b's rows must be contiguous (nb[0] {b.nb[0]} != type size "
                         f"{b.type_size})")
    sel = ids.to_numpy().reshape(T, n_used)  # sel[t, i] = ids[i, t]
    bad = (sel < 0) | (sel >= n_exp)
    if bad.any():
        t, i = (int(v[0]) for v in np.nonzero(bad))
        raise ValueError(f"mul_mat_id: ids[{i}, {t}] = {int(sel[t, i])} is outside [0, {n_exp}) (as.ne[2])")
    mm = MulMat_253(plan=plan, variant=variant, vec_dot_type=vec_dot_type)
    out = np.zeros((T, n_used, M), np.float32)
    b_rows = b.raw()[0]  # (T, n_b, row_bytes): the bytes of every src1 row, strides followed
    for e in range(n_exp):
        ts, slots = np.nonzero(sel == e)  # this expert's (token, slot) pairs, tokens ascending as ggml lists them
        if ts.size == 0:
            continue
        w = as_.view((K, M), (as_.nb[1],), e * as_.nb[2])
        rows = Tensor.from_bytes(np.ascontiguousarray(b_rows[ts, slots % n_b]), b.type, (K, ts.size))
        out[ts, slots] = mm(w, rows).to_numpy().reshape(ts.size, M)
    dst = Tensor.empty("f32", (M, n_used, T, 1))
    dst.storage()[...] = out.reshape(dst.storage().shape)
    return dst
