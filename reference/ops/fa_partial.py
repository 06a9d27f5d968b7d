"""fa_partial: flash attention over one KV chunk without the final division, and the fixed-order merge of chunks.

mlaref's two ops for the ``chunked`` FlashMLA-2 variant (:mod:`mlaref.reference.graphs.deepseek2`; IR in
:mod:`mlaref.reference.graphs.ir`). They split :func:`~mlaref.reference.ops.flash_attn_ext.flash_attn_ext`'s
``algorithm="blocked"`` at its chunk boundary, so that

    fa_merge(... fa_merge(partial(chunk 0), partial(chunk 1)) ..., partial(chunk n-1), final=True)

gives the same bytes as ``flash_attn_ext(q, K, V, mask, algorithm="blocked", plan=p.replace(kv_chunks=n))``
when the chunks are the plan's chunks (``n_kv * c // n`` .. ``n_kv * (c + 1) // n``, i.e. equal chunks of
``kv_chunk`` cells when ``n * kv_chunk == n_kv``). tests/graphs/test_executor.py checks this.

``flash_attn_ext_partial(q, k, v, mask, scale, *, plan, variant)``: q f32 ``[Dk, n_q, n_head, ne3]``, k/v
``[Dk|Dv, n, n_head_kv, ne3]`` (f16 or q8_0; head h reads K/V head ``h // (n_head / n_head_kv)``), an optional f16
mask ``[n, >= n_q]`` that may be a strided column block of the full mask. Result f32 ``[Dv + 2, n_head, n_q,
ne3]``; row (h, t) holds ``acc[0..Dv-1]``, then ``M``, then ``S``, computed by the blocked online softmax
over the chunk's cells in blocks of ``plan.k_step`` (upstream facts §4e, "The iqk algorithm"):

    s = vec_dot(K[j], Q) * scale          (Q converted to K's vec_dot type, plan.for_pair order)
    s = -inf where the mask's f16 bits are not +0.0 (binary mask)
    per block: smax = max s;  skip the block if smax == -inf
               if smax > M:  if M > -inf: ms = expf(M - smax); S = S*ms; acc = acc*ms   else: S = 0; acc = 0
                             M = smax
               p = exp(s - M)  (plan.exp: libm expf or the v_expf polynomial of AVX2 / AVX-512; 0 where s = -inf)
               S = S + hsum(p)    8-lane vectors of p added in order (missing lanes +0), then halves 8->4->2->1
               acc[d] = fma(V[j][d], p[j], acc[d])   for j in the block, in order

A chunk whose every cell is masked keeps ``M = -inf, S = 0, acc = 0``.

``fa_merge(a, b, final)``: ``a`` covers the earlier cells. With ``M = max(Ma, Mb)``,
``wa = Ma == -inf ? 0 : expf(Ma - M)`` and ``wb`` likewise (libm ``expf``, as flash_attn_ext's chunk merge)::

    S   = fma(Sb, wb, Sa * wa)
    acc = fma(acc_b, wb, acc_a * wa)

``final`` returns ``acc * (1/S)`` (the reciprocal rounded to f32, then one multiply: what flash_attn_ext and
iqk do; the IR docstring's "acc / S" means this) in flash_attn_ext's layout ``[Dv, n_head, n_q, ne3]``; a
row with ``S == 0`` (every cell masked) gives 0, where the blocked flash_attn_ext raises (iqk asserts S > 0).
``b = None`` with ``final`` finalises a single partial. Every float step is one rounded element-wise
operation; loops run over KV blocks and rows only.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference import fp
from mlaref.reference.ops._common import check_tensor
from mlaref.reference.ops.flash_attn_ext import K_VEC_DOT_TYPE, check_operands, expf
from mlaref.reference.ops.mul_mat import _from_float
from mlaref.reference.ops.vec_dot import vec_dot
from mlaref.reference.ops.vexp import v_expf_avx2, v_expf_avx512
from mlaref.reference.plan import get_plan
from mlaref.reference.tensor import Tensor

__all__ = ["flash_attn_ext_partial", "fa_merge", "fa_partial"]

_NEG_INF = np.float32(-np.inf)
_EXP = {"libm": expf, "v_expf_avx2": v_expf_avx2, "v_expf_avx512": v_expf_avx512}


def _check(q, k, v, mask, scale):
    op = "flash_attn_ext_partial"
    check_operands(op, q, k, v, mask)
    if k.ne[1] != v.ne[1] or k.ne[2:] != v.ne[2:]:
        raise ValueError(f"{op}: k {k.ne} and v {v.ne} must have the same cells and heads (ne[1:4])")
    if mask is not None and (mask.ne[0] != k.ne[1] or mask.ne[1] < q.ne[1]):
        raise ValueError(f"{op}: the mask must be [n_cells = {k.ne[1]}, >= n_q = {q.ne[1]}], got ne {mask.ne[:2]}")
    if not isinstance(scale, (int, float, np.floating)) or isinstance(scale, bool):
        raise TypeError(f"{op}: scale must be a real number, got {type(scale).__name__}")


def _scores(q: Tensor, k: Tensor, plan, variant: str) -> np.ndarray:
    """K·Q dot products, shape (R, n) with row r = (i3·n_q + i1)·n_head + i2 (the result's row order)."""
    Dk, nq, nh, ne3 = q.ne
    n = k.ne[1]
    rk2, rk3 = nh // k.ne[2], ne3 // k.ne[3]
    vdt = K_VEC_DOT_TYPE[k.type]
    qv = q.to_numpy()  # (ne3, nh, nq, Dk)
    kq = np.empty((ne3, nq, nh, n), np.float32)
    for i3 in range(ne3):
        for i2 in range(nh):
            qrows = _from_float(qv[i3, i2], vdt, variant)
            kh, k3 = i2 // rk2, i3 // rk3
            krows = np.stack([k.row(j, kh, k3) for j in range(n)])
            kq[i3, :, i2, :] = vec_dot(krows, k.type, qrows, vdt, Dk, plan).T
    return kq.reshape(-1, n)


def _values(q: Tensor, v: Tensor) -> np.ndarray:
    """V as float32 (R, n, Dv): each query row sees its KV head's values."""
    _, nq, nh, ne3 = q.ne
    vv = v.to_numpy()  # (ne3k, nhk, n, Dv), exact widening / dequantization
    head = np.arange(nh) // (nh // v.ne[2])
    b3 = np.arange(ne3) // (ne3 // v.ne[3])
    V = vv[b3[:, None, None], head[None, None, :]]  # (ne3, 1, nh, n, Dv)
    return np.broadcast_to(V, (ne3, nq, nh) + vv.shape[2:]).reshape(ne3 * nq * nh, v.ne[1], v.ne[0])


def _mask_bits(q: Tensor, mask: Tensor | None, n: int) -> np.ndarray:
    _, nq, nh, ne3 = q.ne
    if mask is None:
        return np.zeros((ne3 * nq * nh, n), np.uint16)
    bits = mask.storage()  # (m3, m2, m1, n) f16 bits, follows the view's strides
    i3 = np.arange(ne3)[:, None, None] % mask.ne[3]
    i1 = np.arange(nq)[None, :, None]
    i2 = np.arange(nh)[None, None, :] % mask.ne[2]
    return np.asarray(bits[i3, i2, i1, :]).reshape(ne3 * nq * nh, n)


def _hsum8(p: np.ndarray) -> np.ndarray:
    """Σ p over axis 1 as iqk adds it: 8-lane vectors in order (a short last vector padded with +0), then halves."""
    R, n = p.shape
    width = -(-n // 8) * 8
    pv = np.zeros((R, width), np.float32)
    pv[:, :n] = p
    lanes = pv[:, 0:8]
    for j in range(8, width, 8):
        lanes = (lanes + pv[:, j:j + 8]).astype(np.float32)
    while lanes.shape[1] > 1:
        h = lanes.shape[1] // 2
        lanes = (lanes[:, :h] + lanes[:, h:]).astype(np.float32)
    return lanes[:, 0]


def _partial_state(kq, V, mbits, scale, plan):
    """(M, S, acc) of the blocked online softmax over all cells of ``kq`` (see the module docstring)."""
    R, n = kq.shape
    exp = _EXP[plan.exp]
    M = np.full(R, _NEG_INF, np.float32)
    S = np.zeros(R, np.float32)
    acc = np.zeros((R, V.shape[2]), np.float32)
    for k0 in range(0, n, plan.k_step):
        k1 = min(k0 + plan.k_step, n)
        s = np.where(mbits[:, k0:k1] == 0, (kq[:, k0:k1] * scale).astype(np.float32), _NEG_INF).astype(np.float32)
        smax = s.max(axis=1)  # a max rounds nothing
        live = smax != _NEG_INF
        grow = live & (smax > M)
        rescale = grow & (M != _NEG_INF)
        with np.errstate(invalid="ignore"):
            ms = expf(np.where(rescale, M - smax, 0).astype(np.float32))
        S = np.where(rescale, (S * ms).astype(np.float32), np.where(grow, np.float32(0), S)).astype(np.float32)
        acc = np.where(rescale[:, None], (acc * ms[:, None]).astype(np.float32),
                       np.where(grow[:, None], np.float32(0), acc)).astype(np.float32)
        M = np.where(grow, smax, M).astype(np.float32)
        use = live[:, None] & (s != _NEG_INF)
        with np.errstate(invalid="ignore"):
            p = np.where(use, exp(np.where(use, s - M[:, None], 0).astype(np.float32)), np.float32(0))
        p = p.astype(np.float32)
        S = np.where(live, (S + _hsum8(p)).astype(np.float32), S).astype(np.float32)
        for j in range(k1 - k0):
            acc = np.where(live[:, None], fp.fmaf(V[:, k0 + j, :], p[:, j, None], acc), acc).astype(np.float32)
    return M, S, acc


def flash_attn_ext_partial(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale, *,
                           plan="ggml_generic", variant: str = "x86") -> Tensor:
    """Partial flash attention over the cells of ``k``/``v``: f32 ``[Dv + 2, n_head, n_q, ne3]`` = (acc, M, S)."""
    _check(q, k, v, mask, scale)
    plan = get_plan(plan)
    kq = _scores(q, k, plan, variant)
    M, S, acc = _partial_state(kq, _values(q, v), _mask_bits(q, mask, k.ne[1]), np.float32(scale), plan)
    Dv = v.ne[0]
    _, nq, nh, ne3 = q.ne
    dst = Tensor.empty("f32", (Dv + 2, nh, nq, ne3))
    out = dst.storage().reshape(-1, Dv + 2)
    out[:, :Dv] = acc
    out[:, Dv] = M
    out[:, Dv + 1] = S
    return dst


def _unpack(t: Tensor, what: str):
    check_tensor("fa_merge", what, t, ("f32",))
    if not t.is_contiguous() or t.ne[0] < 3:
        raise ValueError(f"fa_merge: {what} must be a contiguous partial [Dv + 2, n_head, n_q, ne3], got ne {t.ne}")
    x = t.storage().reshape(-1, t.ne[0])
    return x[:, -2].copy(), x[:, -1].copy(), x[:, :-2].copy()


def fa_merge(a: Tensor, b: Tensor | None, final: bool) -> Tensor:
    """Merge partial ``b`` (later cells) into partial ``a``; ``final`` divides (see the module docstring)."""
    Ma, Sa, acc_a = _unpack(a, "a")
    if b is None:
        if not final:
            raise ValueError("fa_merge: a single partial (b = None) can only be finalised (final=True)")
        M, S, acc = Ma, Sa, acc_a
    else:
        if b.ne != a.ne:
            raise ValueError(f"fa_merge: a and b must have the same shape, got {a.ne} and {b.ne}")
        Mb, Sb, acc_b = _unpack(b, "b")
        M = np.maximum(Ma, Mb)
        with np.errstate(invalid="ignore"):
            wa = np.where(Ma == _NEG_INF, np.float32(0), expf(np.where(Ma == _NEG_INF, 0, Ma - M).astype(np.float32)))
            wb = np.where(Mb == _NEG_INF, np.float32(0), expf(np.where(Mb == _NEG_INF, 0, Mb - M).astype(np.float32)))
        wa = wa.astype(np.float32)
        wb = wb.astype(np.float32)
        S = fp.fmaf(Sb, wb, (Sa * wa).astype(np.float32))
        acc = fp.fmaf(acc_b, wb[:, None], (acc_a * wa[:, None]).astype(np.float32))
    Dv = a.ne[0] - 2
    if final:
        with np.errstate(divide="ignore"):
            inv = np.where(S == 0, np.float32(0), (np.float32(1) / S).astype(np.float32)).astype(np.float32)
        dst = Tensor.empty("f32", (Dv,) + a.ne[1:])
        dst.storage().reshape(-1, Dv)[...] = (acc * inv[:, None]).astype(np.float32)
        return dst
    dst = Tensor.empty("f32", a.ne)
    out = dst.storage().reshape(-1, Dv + 2)
    out[:, :Dv] = acc
    out[:, Dv] = M
    out[:, Dv + 1] = S
    return dst


def fa_partial(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale, **kwargs) -> Tensor:
    """Alias of :func:`flash_attn_ext_partial` under the module's name (the ops package re-exports it)."""
    return flash_attn_ext_partial(q, k, v, mask, scale, **kwargs)
