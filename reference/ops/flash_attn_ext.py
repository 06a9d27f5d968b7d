"""flash_attn_ext: softmax(scale·Q·Kᵀ + mask)·V, online, in ggml's orders (one-chunk, split-KV, tiled) and iqk's.

``flash_attn_ext(q, k, v, mask, scale, max_bias=0, softcap=0, *, algorithm="generic", plan=..., kv_split=None)``
takes q f32 ``[Dk, n_q, n_head, ne3]``, k ``[Dk, n_kv, n_head_kv, ne3]`` and v ``[Dv, n_kv, n_head_kv, ne3]`` (f16,
f32 or q8_0; head h reads K/V head ``h // (n_head / n_head_kv)``), an optional f16 mask ``[n_kv, >= n_q, ...]``
(row iq1, broadcast over heads by ``iq2 % mask.ne2``), and returns f32 ``[Dv, n_head, n_q, ne3]``: the result
already permuted (0, 2, 1, 3) as ggml writes it. If ``softcap != 0`` then ``scale /= softcap`` first
(``ggml_compute_forward_flash_attn_ext_f16``). ALiBi (``max_bias > 0``) and attention sinks are not modelled.

**algorithm="generic"**: upstream ggml's ``ggml_compute_forward_flash_attn_ext_f16_one_chunk`` (ops.cpp of
ggml-python's vendored ggml 0.15.3; upstream facts §4e, "ggml's generic algorithm"). Q is converted to K's vec_dot
type with its ``from_float`` (f16: RNE; q8_0: ``variant``). For each KV row ic in order, per query row:
    mv = mask[ic]; skip the row if mv == -inf
    s  = vec_dot(K[ic], Q) * scale           (plan.for_pair(k.vdt) order); softcap: s = softcap*tanhf(s)
    s  = s + mv
    if s > M:  ms = expf(M - s); M = s; VKQ *= ms; vs = 1      (libm expf)
    else:      ms = 1; vs = expf(s - M)
    VKQ += vs * V[ic];   S = S*ms + vs       (fused when the plan has fma, as GCC contracts it)

VKQ is f16 when V is f16 and f32 otherwise (V through ``to_float``). The f16 updates follow the plan's f16 pair:
half-precision FMA with ``vs`` rounded to f16 first (AVX512-FP16 ``vfmadd231ph``, ``acc_type == "f16"``), or
f32 FMA / multiply-add rounded to f16 at each store (F16C). At the end ``out = VKQ * (S == 0 ? 0 : 1/S)``.

**Split KV** (``algorithm="generic", kv_split=n``): upstream's ``ggml_compute_forward_flash_attn_ext_f16`` takes
another path when there is one query row (``neq1 == 1 and neq3 == 1``: decoding one token), K and V are of one
type, f16 or f32, and ``n_kv >= 512``: it splits the KV rows into ``nth`` (its **thread count**) chunks of
``ceil(n_kv / nth)`` rows, runs the one-chunk code above on each (state M, S and VKQ, an f16 VKQ widened to f32,
left unnormalised) and ``ggml_flash_attn_ext_reduce_partials`` merges them in chunk order, skipping chunks
with ``S_c == 0``:
    Mn = fmaxf(M, M_c);  a = expf(M - Mn);  b = expf(M_c - Mn)         (from M = -inf, S = 0, VKQ = 0)
    VKQ = fma(VKQ, a, VKQ_c*b);  S = fma(S, a, S_c*b);  M = Mn          (plan.fma; else both products rounded)
    out = S != 0 ? VKQ * (1/S) : VKQ

So there upstream's bytes depend on its thread count. The spec stays thread-independent: the chunk count is the
explicit ``kv_split`` (``None``: the one-chunk order; ``n >= 1``: this path with n chunks, valid only where
upstream takes it, :func:`upstream_splits_kv`). ``kv_split=1`` is not ``None``: upstream's one-thread merge of
its single chunk is the identity except that it turns a -0.0 of VKQ into +0.0 (``fma(0, 0, -0.0) = +0.0``).

**algorithm="iqk2026"**: the CPU flash attention of the ik_llama.cpp snapshot vendored in ik-llama-cpp-python
0.1.5, AVX2+FMA build, bit for bit (f16 / q8_0 K and V, Dk/Dv 192/128 and 576/512): :mod:`.fa_iqk2026`. Its one-query
KV splits depend on upstream's thread count, passed as ``n_threads``.

**algorithm="tiled"**: from 64 queries (f32 q, K and V both f16 or both f32, and in a SIMD build
``Dv % GGML_F32_EPR == 0``) upstream runs a tiled f32 kernel, another order: :mod:`.fa_tiled`.

**algorithm="blocked"**: the iqk order (upstream facts §4e, "The iqk algorithm"), parametrised by the plan: KV rows
in blocks of ``k_step``, split into ``kv_chunks`` contiguous chunks that run independently and are merged in index
order.
Per block, with s = vec_dot(K, Q)·scale (or softcap·tanhf(s·scale)), and the mask **binary** (any f16 bit
pattern but +0.0 masks the entry to -inf):
    smax = max_k s[k];  if smax == -inf: skip the block
    if smax > M:  if M > -inf: ms = expf(M - smax); S *= ms; acc *= ms   else: S = 0; acc = 0
                  M = smax
    p[k] = exp(s[k] - M)   (plan.exp: libm, or the v_expf polynomial of AVX2 / AVX-512: :mod:`.vexp`)
    S   += sum(p): 8-lane vectors added in order, then the halves fold
    acc[d] = fma(V[k][d], p[k], acc[d]) for k in order       (f32 acc; V widened / dequantized)

Chunks merge as M = max(M1, M2), a = expf(M1 - M), b = expf(M2 - M), S = fma(S2, b, S1*a),
acc = fma(acc2, b, acc1*a) (chunks with M = -inf contribute nothing); then ``out = acc * (1/S)``. The rescale's and
the merge's ``expf`` is libm's (iqk), or the plan's exp where ``plan.rescale_exp == "exp"``: the GPU plan
``cuda_fa_w32`` (reference/plan.py), whose every step a CUDA kernel reproduces (libm runs on no GPU).

Every float step is one rounded element-wise operation; the only loops are over KV rows / blocks.

Tested bit for bit against upstream ggml (ggml-python 0.0.45; tests/reference/test_flash_attn.py): the generic
algorithm with the build's plan for q8_0 K/V at any query count and for f16 K/V below 64 queries; from 64 queries
upstream runs a tiled f32 kernel for f16/f32 K/V, ``algorithm="tiled"`` (fa_tiled.py); the split-KV path at 1 to
4 threads with ``kv_split`` = the thread count (f16 Dk 576 / Dv 512 with V a view of K, f32 192 / 128, masks),
natively (AMD Zen 3) and at the levels generic, avx and avx2.

**q8_KV K and V** (ik_llama.cpp's row format with an 8-byte scale-and-sum header, upstream facts §5a), for the
``generic`` and ``blocked`` algorithms only. ggml's own one-chunk code cannot run them: it calls the traits'
``vec_dot_q8_KV_q8_KV``, which writes no result for a single pair (upstream facts §5a); ik_llama.cpp computes K·Q
of q8_KV rows only in IQK (``HelperQ8KV``: Q converted by ``quantize_row_q8_KV``, iqk_fa_templates.h:191-230 and
290-292 of the ik-llama-cpp-python 0.1.5 snapshot, its GEMM ``f32(d_k·d_q)·f32(Σ qk·qq)``). So with a q8_KV K
each query row is quantized to q8_KV (the AVX2 ``iqk`` quantizer; ``variant="x86"`` means it) and the dot is
:func:`mlaref.reference.types.q8_KV.dot_rows`, that GEMM's value (exact integer sum, two float32 roundings: the
same in any order), and the algorithm's order does the rest. V of type q8_KV is read as ``d·q`` (one float32
product, ``HelperQ8KV::load`` and ``dequantize_row_q8_KV`` alike). Neither is ik's kernel bit for bit (no model of
iqk's q8_KV FA order exists here): check it against float64 attention. ``tiled`` and ``iqk2026`` refuse q8_KV.

Executable oracles: ik_llama.cpp itself, built from the ik-llama-cpp-python 0.1.5 sdist (``mlaref peer build
ik-llama-cpp-python``) and run through mlaref's C harness: ``mlaref conform --peer ik-llama-cpp-python`` checks
``algorithm="iqk2026"`` bit for bit against it (f16 / q8_0 K/V, 192/128 and 576/512 with V a view of K, 1 to 512
queries, causal masks, 1 and 2 threads), natively on AMD Zen 3. The "blocked" algorithm models
ik_llama.cpp@676f0e71b (2025), of which no build is at hand: it stays checked against float64 attention and
hand-built exact cases, and the 2026 snapshot's differences from it (k_step 128, the q8_2 Q conversion, the
repacked q8_0 K, the one-query thread split) are listed in docs/facts/ik-snapshot-fa.md.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from mlaref.reference import fp
from mlaref.reference.ops._common import check_tensor
from mlaref.reference.ops.mul_mat import _from_float
from mlaref.reference.ops.vec_dot import fma_f16, round_f64_to_f16, vec_dot
from mlaref.reference.ops.vexp import v_expf_avx2, v_expf_avx512
from mlaref.reference.plan import get_plan
from mlaref.reference.tensor import Tensor
from mlaref.reference.types import get_type
from mlaref.reference.types.q8_KV import dot_rows as q8_KV_dot_rows
from mlaref.reference import libm as libm
from mlaref.reference.ops.fa_tiled import flash_attn_tiled
from mlaref.reference.ops.fa_iqk2026 import flash_attn_iqk2026

__all__ = ["flash_attn_ext", "upstream_splits_kv", "SPLIT_KV_MIN", "v_expf_avx2", "v_expf_avx512", "expf", "tanhf",
           "K_VEC_DOT_TYPE", "ROW_META_KV_TYPES"]

# the K (and V) types flash_attn_ext takes -> K's vec_dot type, the type Q is converted to (read-only)
K_VEC_DOT_TYPE = MappingProxyType({t: get_type(t).vec_dot_type for t in ("f16", "q8_0", "f32")})
# K / V types with row metadata that flash_attn_ext (generic and blocked only) also takes; K's vec_dot type is itself
ROW_META_KV_TYPES = ("q8_KV",)
_NEG_INF = np.float32(-np.inf)


def expf(x) -> np.ndarray:
    """libm ``expf`` element-wise (through :mod:`mlaref.reference.libm`)."""

    return libm.expf(np.asarray(x, np.float32))


def tanhf(x) -> np.ndarray:
    """libm ``tanhf`` element-wise."""

    return libm.tanhf(np.asarray(x, np.float32))


_EXP = {"libm": expf, "v_expf_avx2": v_expf_avx2, "v_expf_avx512": v_expf_avx512}


def _rows_bytes(t: Tensor, i2: int, i3: int) -> np.ndarray:
    return np.stack([t.row(i1, i2, i3) for i1 in range(t.ne[1])])


def check_operands(op, q, k, v, mask, kv_types=tuple(K_VEC_DOT_TYPE)):
    """The operand rules flash_attn_ext and its chunked partial share: types, contiguous rows, Dk, head broadcast."""
    check_tensor(op, "q", q, ("f32",))
    check_tensor(op, "k", k, kv_types)
    check_tensor(op, "v", v, kv_types)
    if mask is not None:
        check_tensor(op, "mask", mask, ("f16",))
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.nb[0] != t.type_size:
            raise ValueError(f"{op}: the rows of {name} must be contiguous (nb[0] {t.nb[0]} != {t.type_size})")
    if q.ne[0] != k.ne[0]:
        raise ValueError(f"{op}: q.ne[0] ({q.ne[0]}) must equal k.ne[0] ({k.ne[0]}) (Dk)")
    if q.ne[2] % k.ne[2] or q.ne[3] % k.ne[3]:
        raise ValueError(f"{op}: q.ne[2:4] {q.ne[2:]} must be multiples of k.ne[2:4] {k.ne[2:]} (head broadcast)")


def _check(q, k, v, mask, scale, max_bias, softcap):
    op = "flash_attn_ext"
    check_operands(op, q, k, v, mask, tuple(K_VEC_DOT_TYPE) + ROW_META_KV_TYPES)
    if k.ne[1] != v.ne[1]:
        raise ValueError(f"{op}: k and v must have the same number of KV rows (ne[1]: {k.ne[1]} vs {v.ne[1]})")
    if k.ne[2:] != v.ne[2:]:
        raise ValueError(f"{op}: k and v must have the same head dims (ne[2:4]: {k.ne[2:]} vs {v.ne[2:]})")
    if mask is not None and (mask.ne[0] < k.ne[1] or mask.ne[1] < q.ne[1]):
        raise ValueError(f"{op}: mask must cover [n_kv, n_q] = [{k.ne[1]}, {q.ne[1]}], got ne {mask.ne[:2]}")
    for name, val in (("scale", scale), ("max_bias", max_bias), ("softcap", softcap)):
        if not isinstance(val, (int, float, np.floating, np.integer)) or isinstance(val, bool):
            raise TypeError(f"{op}: {name} must be a real number, got {type(val).__name__}")
    if max_bias != 0:
        raise ValueError(f"{op}: max_bias must be 0 (ALiBi is not modelled), got {max_bias}")


def _gather(q, k, v, mask, plan, variant, kq_type):
    """Per query row r = (i3, i1, i2): the K·Q dot products (R, n_kv), V values (R -> kv head) and mask (R, n_kv)."""
    Dk, nq, nh, ne3 = q.ne
    n_kv = k.ne[1]
    rk2, rk3 = nh // k.ne[2], ne3 // k.ne[3]
    vdt = kq_type or (k.type if k.type in ROW_META_KV_TYPES else K_VEC_DOT_TYPE[k.type])
    if vdt == "q8_KV" and k.type != "q8_KV":
        raise ValueError(f"flash_attn_ext: kq_type 'q8_KV' needs a q8_KV K, got {k.type}")
    kq = np.empty((ne3, nq, nh, n_kv), np.float32)
    qv = q.to_numpy()  # (ne3, nh, nq, Dk)
    for i3 in range(ne3):
        for i2 in range(nh):
            krows = _rows_bytes(k, i2 // rk2, i3 // rk3)
            if vdt == "q8_KV":  # IQK's q8_KV GEMM (module docstring): Q rows quantized by the AVX2 quantizer
                qrows = _from_float(qv[i3, i2], vdt, "iqk" if variant == "x86" else variant)
                kq[i3, :, i2, :] = q8_KV_dot_rows(krows, qrows).T
                continue
            qrows = _from_float(qv[i3, i2], vdt, variant)
            kt = k.type
            if vdt == "f32" and k.type != "f32":
                krows = Tensor.from_bytes(krows, k.type, (Dk, n_kv)).to_numpy().reshape(n_kv, Dk).view(np.uint8)
                kt = "f32"
            kq[i3, :, i2, :] = vec_dot(krows, kt, qrows, vdt, Dk, plan).T
    vv = v.to_numpy()  # (ne3k, nhk, n_kv, Dv) f32 values
    head = np.arange(nh) // rk2
    b3 = np.arange(ne3) // rk3
    V = vv[b3[:, None, None], head[None, None, :]]  # (ne3, 1, nh, n_kv, Dv) -> broadcast over queries
    V = np.broadcast_to(V, (ne3, nq, nh) + vv.shape[2:]).reshape(ne3 * nq * nh, n_kv, -1)
    if mask is not None:
        mv = mask.to_numpy()  # (m3, m2, m1, n_kv)
        mbits = np.ascontiguousarray(mask.storage())
        i3 = np.arange(ne3)[:, None, None] % mask.ne[3]
        i1 = np.arange(nq)[None, :, None]
        i2 = np.arange(nh)[None, None, :] % mask.ne[2]
        m = mv[i3, i2, i1, :n_kv].reshape(ne3 * nq * nh, n_kv)
        mb = mbits[i3, i2, i1, :n_kv].reshape(ne3 * nq * nh, n_kv)
    else:
        m = np.zeros((ne3 * nq * nh, n_kv), np.float32)
        mb = np.zeros((ne3 * nq * nh, n_kv), np.uint16)
    return kq.reshape(-1, n_kv), V, m, mb


def _generic_state(kq, V, m, scale, softcap, v_is_f16, plan):
    """The one-chunk loop over the KV rows given: (M, S, VKQ) per query row, VKQ unnormalised (f16 values in f32)."""
    R, n_kv = kq.shape
    Dv = V.shape[2]
    f16mode = "f32"
    p16 = plan.for_pair("f16.f16")
    if p16.acc_type == "f16":
        f16mode = "fp16"
    elif p16.fma or plan.fma:
        f16mode = "f32_fma"
    M = np.full(R, _NEG_INF, np.float32)
    S = np.zeros(R, np.float32)
    acc = np.zeros((R, Dv), np.float32)
    for ic in range(n_kv):
        mv = m[:, ic]
        live = mv != _NEG_INF
        s = (kq[:, ic] * scale).astype(np.float32)
        if softcap != 0:
            s = (np.float32(softcap) * tanhf(s)).astype(np.float32)
        s = (s + mv).astype(np.float32)
        new_max = live & (s > M)
        with np.errstate(invalid="ignore"):
            ms = np.where(new_max, expf(np.where(new_max, M - s, 0).astype(np.float32)), np.float32(1))
            vs = np.where(new_max | ~live, np.float32(1), expf(np.where(live & ~new_max, s - M, 0).astype(np.float32)))
        M = np.where(new_max, s, M).astype(np.float32)
        x = V[:, ic, :]
        if v_is_f16:
            if f16mode == "fp16":
                scaled = round_f64_to_f16(acc.astype(np.float64) * round_f64_to_f16(ms)[:, None])
                upd = fma_f16(x, round_f64_to_f16(vs)[:, None], np.where(new_max[:, None], scaled, acc))
            else:
                scaled = round_f64_to_f16((acc * ms[:, None]).astype(np.float32))
                base = np.where(new_max[:, None], scaled, acc)
                if f16mode == "f32_fma":
                    upd = round_f64_to_f16(fp.fmaf(x, vs[:, None], base))
                else:
                    upd = round_f64_to_f16((base + (x * vs[:, None]).astype(np.float32)).astype(np.float32))
        else:
            base = np.where(new_max[:, None], (acc * ms[:, None]).astype(np.float32), acc)
            if plan.fma:
                upd = fp.fmaf(x, vs[:, None], base)
            else:
                upd = (base + (x * vs[:, None]).astype(np.float32)).astype(np.float32)
        acc = np.where(live[:, None], upd, acc).astype(np.float32)
        Snew = fp.fmaf(S, ms, vs) if plan.fma else ((S * ms).astype(np.float32) + vs).astype(np.float32)
        S = np.where(live, Snew, S).astype(np.float32)
    return M, S, acc


def _generic(kq, V, m, scale, softcap, v_is_f16, plan):
    """The one-chunk order over all KV rows: ``VKQ * (S == 0 ? 0 : 1/S)``."""
    _, S, acc = _generic_state(kq, V, m, scale, softcap, v_is_f16, plan)
    with np.errstate(divide="ignore"):
        inv = np.where(S == 0, np.float32(0), (np.float32(1) / S).astype(np.float32)).astype(np.float32)
    return (acc * inv[:, None]).astype(np.float32)


def _mul_add(a, x, b, y, fma: bool):
    """``a*x + b*y`` as GCC compiles it: ``fma(a, x, b*y)`` with FMA, else both products rounded then added."""
    by = (b * y).astype(np.float32)
    if fma:
        return fp.fmaf(a, x, by)
    return ((a * x).astype(np.float32) + by).astype(np.float32)


def _split_kv(kq, V, m, scale, softcap, v_is_f16, plan, n_split):
    """Upstream's split-KV path: ``n_split`` chunks of ``ceil(n_kv / n_split)`` rows, each the one-chunk order,
    merged in chunk order by ``ggml_flash_attn_ext_reduce_partials`` (module docstring, "Split KV")."""
    R, n_kv = kq.shape
    size = -(-n_kv // n_split)
    M = np.full(R, _NEG_INF, np.float32)
    S = np.zeros(R, np.float32)
    acc = np.zeros((R, V.shape[2]), np.float32)
    for lo in range(0, n_kv, size):  # chunks that start at or past n_kv hold nothing: upstream skips them
        hi = min(lo + size, n_kv)
        Mc, Sc, accc = _generic_state(kq[:, lo:hi], V[:, lo:hi], m[:, lo:hi], scale, softcap, v_is_f16, plan)
        live = Sc != 0  # upstream skips a chunk whose S is 0 (every row masked)
        Mn = np.fmax(M, Mc)
        with np.errstate(invalid="ignore"):  # M - Mn is -inf - -inf only where the chunk is skipped
            a = expf((M - Mn).astype(np.float32))
            b = expf((Mc - Mn).astype(np.float32))
            acc = np.where(live[:, None], _mul_add(acc, a[:, None], accc, b[:, None], plan.fma), acc)
            S = np.where(live, _mul_add(S, a, Sc, b, plan.fma), S).astype(np.float32)
        M = np.where(live, Mn, M).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(S != 0, (np.float32(1) / S).astype(np.float32), np.float32(1)).astype(np.float32)
    return (acc * inv[:, None]).astype(np.float32)


def _hsum_halves(v: np.ndarray) -> np.ndarray:
    while v.shape[-1] > 1:
        h = v.shape[-1] // 2
        v = (v[..., :h] + v[..., h:]).astype(np.float32)
    return v[..., 0]


def _rescale_exp(plan):
    """The exp of the rescale and the chunk merge: libm expf, or the plan's exp (``plan.rescale_exp == "exp"``)."""
    return _EXP[plan.exp] if plan.rescale_exp == "exp" else expf


def _blocked_chunk(kq, V, mb, lo, hi, scale, softcap, plan):
    R = kq.shape[0]
    Dv = V.shape[2]
    exp, rexp = _EXP[plan.exp], _rescale_exp(plan)
    M = np.full(R, _NEG_INF, np.float32)
    S = np.zeros(R, np.float32)
    acc = np.zeros((R, Dv), np.float32)
    for k0 in range(lo, hi, plan.k_step):
        k1 = min(k0 + plan.k_step, hi)
        if softcap != 0:
            s = (np.float32(softcap) * tanhf((kq[:, k0:k1] * scale).astype(np.float32))).astype(np.float32)
        else:
            s = (kq[:, k0:k1] * scale).astype(np.float32)
        s = np.where(mb[:, k0:k1] == 0, s, _NEG_INF).astype(np.float32)
        smax = np.max(s, axis=1)  # exact: a max has no rounding
        live = smax != _NEG_INF
        grow = live & (smax > M)
        rescale = grow & (M != _NEG_INF)
        with np.errstate(invalid="ignore"):
            ms = rexp(np.where(rescale, M - smax, 0).astype(np.float32))
        S = np.where(rescale, (S * ms).astype(np.float32), np.where(grow, np.float32(0), S)).astype(np.float32)
        acc = np.where(rescale[:, None], (acc * ms[:, None]).astype(np.float32),
                       np.where(grow[:, None], np.float32(0), acc)).astype(np.float32)
        M = np.where(grow, smax, M).astype(np.float32)
        with np.errstate(invalid="ignore"):
            d = np.where(live[:, None] & (s != _NEG_INF), s - M[:, None], 0).astype(np.float32)
        p = np.where(live[:, None] & (s != _NEG_INF), exp(d), np.float32(0)).astype(np.float32)
        # S += sum(p): 8-lane vectors added in order (missing lanes of a short block are +0), then halves.
        width = -(-(k1 - k0) // 8) * 8
        pv = np.zeros((R, width), np.float32)
        pv[:, : k1 - k0] = p
        lanes = pv[:, 0:8]
        for j in range(8, width, 8):
            lanes = (lanes + pv[:, j:j + 8]).astype(np.float32)
        S = np.where(live, (S + _hsum_halves(lanes)).astype(np.float32), S).astype(np.float32)
        for kk in range(k1 - k0):
            upd = fp.fmaf(V[:, k0 + kk, :], p[:, kk, None], acc)
            acc = np.where(live[:, None], upd, acc).astype(np.float32)
    return M, S, acc


def _blocked(kq, V, mb, scale, softcap, plan):
    n_kv = kq.shape[1]
    nch = plan.kv_chunks
    bounds = [n_kv * c // nch for c in range(nch + 1)]
    M = S = acc = None
    mexp = _rescale_exp(plan)  # the merge's exp: libm unless the plan says otherwise
    for c in range(nch):
        Mc, Sc, accc = _blocked_chunk(kq, V, mb, bounds[c], bounds[c + 1], scale, softcap, plan)
        if M is None:
            M, S, acc = Mc, Sc, accc
            continue
        Mn = np.maximum(M, Mc)
        with np.errstate(invalid="ignore"):
            a = np.where(M == _NEG_INF, np.float32(0), mexp(np.where(M == _NEG_INF, 0, M - Mn).astype(np.float32)))
            b = np.where(Mc == _NEG_INF, np.float32(0), mexp(np.where(Mc == _NEG_INF, 0, Mc - Mn).astype(np.float32)))
        S = fp.fmaf(Sc, b, (S * a).astype(np.float32))
        acc = fp.fmaf(accc, b[:, None], (acc * a[:, None]).astype(np.float32))
        M = Mn
    if np.any(S <= 0):
        raise ValueError("flash_attn_ext: a query row has every KV entry masked (S = 0); the blocked (iqk) "
                         "algorithm asserts S > 0")
    inv = (np.float32(1) / S).astype(np.float32)
    return (acc * inv[:, None]).astype(np.float32)


SPLIT_KV_MIN = 512  # ggml_compute_forward_flash_attn_ext_f16: use_split_kv_path needs nek1 >= 512


def upstream_splits_kv(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether upstream ggml 0.15.3 takes its split-KV path (``use_split_kv_path`` in
    ``ggml_compute_forward_flash_attn_ext_f16``): one query row (``q.ne[1] == 1 and q.ne[3] == 1``), q f32, K and V
    of one type, f16 or f32, and ``n_kv >= 512``. There its result depends on its thread count: pass that count as
    ``kv_split`` to :func:`flash_attn_ext`."""
    return (q.ne[1] == 1 and q.ne[3] == 1 and q.type == "f32" and k.type == v.type and k.type in ("f16", "f32")
            and k.ne[1] >= SPLIT_KV_MIN)


def _check_kv_split(kv_split, algorithm, q, k, v):
    op = "flash_attn_ext"
    if not isinstance(kv_split, (int, np.integer)) or isinstance(kv_split, bool) or kv_split < 1:
        raise ValueError(f"{op}: kv_split must be None or an int >= 1 (upstream's thread count), got {kv_split!r}")
    if algorithm != "generic":
        raise ValueError(f"{op}: kv_split applies to algorithm='generic' only (upstream's split-KV path runs the "
                         f"one-chunk code), got algorithm={algorithm!r}")
    if not upstream_splits_kv(q, k, v):
        raise ValueError(f"{op}: kv_split models upstream's split-KV path, taken only for one query row (q.ne[1] == 1 "
                         f"and q.ne[3] == 1), K and V of one type, f16 or f32, and n_kv >= {SPLIT_KV_MIN}; got q.ne "
                         f"{q.ne}, k {k.type}, v {v.type}, n_kv {k.ne[1]}")


def flash_attn_ext(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale, max_bias=0.0, softcap=0.0, *,
                   algorithm: str = "generic", plan="ggml_generic", variant: str = "x86",
                   kq_type: str | None = None, kv_split: int | None = None,
                   n_threads: int | None = None) -> Tensor:
    """``ggml_flash_attn_ext`` on the CPU; see the module docstring. Returns f32 ``[Dv, n_head, n_q, ne3]``.

    ``kq_type`` overrides the type Q is converted to for the K·Q dots (default: K's vec_dot type; ``"f32"``
    widens K instead, as iqk's x86 f16 kernel keeps Q in f32). ``kv_split``: the number of KV chunks upstream's
    split-KV path uses, its thread count (``None``: no split, the one-chunk order); valid only where upstream
    takes that path (:func:`upstream_splits_kv`), with ``algorithm="generic"``. ``n_threads``: only for
    ``algorithm="iqk2026"``, the thread count upstream ran with (default 1); its one-query KV splits depend on it.
    """
    _check(q, k, v, mask, scale, max_bias, softcap)
    if algorithm not in ("generic", "blocked", "tiled", "iqk2026"):
        raise ValueError(f"flash_attn_ext: algorithm must be 'generic', 'blocked' or 'tiled' (or the ik snapshot's "
                         f"'iqk2026'), got {algorithm!r}")
    if n_threads is not None and algorithm != "iqk2026":
        raise ValueError(f"flash_attn_ext: n_threads applies to algorithm='iqk2026' only, got {algorithm!r}")
    if kv_split is not None:
        _check_kv_split(kv_split, algorithm, q, k, v)
    if algorithm in ("tiled", "iqk2026") and (k.type in ROW_META_KV_TYPES or v.type in ROW_META_KV_TYPES):
        raise ValueError(f"flash_attn_ext: algorithm={algorithm!r} does not take {k.type} / {v.type} K / V (rows with "
                         "metadata); q8_KV runs with algorithm 'generic' or 'blocked' (see the module docstring)")
    plan = get_plan(plan)
    scale = np.float32(scale)
    if softcap != 0:
        scale = np.float32(scale / np.float32(softcap))
    if algorithm == "iqk2026":  # the 2026 ik_llama.cpp snapshot's iqk kernel: its own K·Q and order, see fa_iqk2026
        if kv_split is not None:
            raise ValueError("flash_attn_ext: kv_split does not apply to algorithm='iqk2026' (pass n_threads)")
        out = flash_attn_iqk2026(q, k, v, mask, scale, softcap, 1 if n_threads is None else n_threads)
    elif algorithm == "tiled":  # upstream's f32 tile kernel (64+ queries, f16/f32 K/V): its own K·Q, see fa_tiled

        out = flash_attn_tiled(q, k, v, mask, scale, softcap, plan)
    else:
        kq, V, m, mb = _gather(q, k, v, mask, plan, variant, kq_type)
        if kv_split is not None:
            out = _split_kv(kq, V, m, scale, softcap, v.type == "f16", plan, int(kv_split))
        elif algorithm == "generic":
            out = _generic(kq, V, m, scale, softcap, v.type == "f16", plan)
        else:
            out = _blocked(kq, V, mb, scale, softcap, plan)
    Dk, nq, nh, ne3 = q.ne
    dst = Tensor.empty("f32", (v.ne[0], nh, nq, ne3))
    dst.storage()[...] = out.reshape(ne3, nq, nh, v.ne[0])
    return dst
