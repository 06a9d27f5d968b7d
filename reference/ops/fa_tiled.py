"""fa_tiled: upstream ggml's tiled flash_attn_ext (64-query x 64-KV tiles, f32 GEMMs), row by row, exactly.

``flash_attn_tiled(q, k, v, mask, scale, softcap, plan)`` is ``flash_attn_ext(..., algorithm="tiled")``: it
reproduces ``ggml_compute_forward_flash_attn_ext_tiled`` (ggml-cpu/ops.cpp@ggml 0.15.3, line ~8585), with
``simd_gemm`` (ggml-cpu/simd-gemm.h@ggml 0.15.3) and ``ggml_vec_soft_max_f32`` (ggml-cpu/vec.cpp@ggml 0.15.3,
line ~531). ``ggml_compute_forward_flash_attn_ext_f16`` takes this path when q is f32, K and V are both f16 or
both f32, there are at least ``GGML_FA_TILE_Q = 64`` queries (``neq1``), the KV split path does not apply, and
(in a SIMD build) ``DV % GGML_F32_EPR == 0``.

Upstream walks the rows ``ir = iq1 + n_q*(iq2 + n_head*iq3)`` in tiles of up to 64 query rows of one head
(a tile also ends at the thread's chunk end), padded to 64 rows with Q = 0, and for every KV tile of 64 rows
(``KV_TILE``; the last one padded) runs the steps below. Each row's numbers depend only on that row: the GEMMs
compute every output element as its own serial chain, so which rows share a tile, and so the thread count,
change nothing (see "Rows are independent" below). Per query row, with ``Q`` in f32 and K, V widened exactly
to f32:

    KQ[k]   = 0;  KQ[k] = fma(Q[d], K[ic+k][d], KQ[k])  for d = 0 .. Dk-1 in order     (simd_gemm, C += A*B)
    KQ[k]  *= scale                                                                    (ggml_vec_scale_f32)
    KQ[k]   = -inf for the padding k >= kv_tile
    softcap: KQ[k] = tanhf(KQ[k]);  KQ[k] *= softcap                                    (padding: -softcap!)
    mask:    KQ[k] += mask[ic+k]    (f16 widened; padding -inf)                          (ggml_vec_add_f32)
    tile_max = max_k KQ[k];  if tile_max == -inf: p[k] = 0 for all k, and go to the V step
    Mnew = fmaxf(M, tile_max);  if Mnew > M: ms = expf(M - Mnew) (libm); VKQ *= ms; S *= ms
    M = Mnew
    p[k] = v_expf(KQ[k] - M)   in chunks of W lanes (the build's ggml_v_expf, :mod:`.vexp`)
    S = f32(f64(S) + sum)      sum: a double, adding each chunk's float horizontal sum in order
    VKQ[d] = fma(p[k], V32[k][d], VKQ[d])  for k = 0 .. 63 in order                    (simd_gemm)

and at the end ``out = VKQ * (S == 0 ? 0 : 1/S)``. ``V32`` is the KV tile's V rows; its padding rows keep the
rows of the previous tile packed (zeros before the first), which only matters where ``p`` is not 0 there.

What depends on the build is read from the plan's f32 pair (``plan.for_pair("f32.f32")``): ``fma`` says whether
the GEMMs fuse (``GGML_F32_VEC_FMA`` is ``_mm256_fmadd_ps`` with FMA and a rounded multiply then add without;
the scalar ``simd_gemm`` of a non-SIMD build is ``sum += a*b``, which GCC contracts only with FMA), and ``lanes``
(``GGML_F32_EPR``) with ``fma`` name the soft_max variant (``vexp.SIMD``): 16 lanes ``avx512``; 8 lanes with FMA
``avx2``, without ``sse2_avx`` (an AVX build compiles soft_max's SSE2 code with ``__AVX__``); 1 lane (no
GGML_SIMD) ``sse2_fma`` / ``sse2``. The vector width of the GEMM does not change a bit: each output element is
one chain over the reduction axis in every build. ``plan.exp`` is not used: the exp is the build's.

Rows are independent: a padded Q row or padded KV column never feeds a valid element (padded KQ entries are -inf,
so their ``p`` is 0, except with softcap and no mask, which this model follows: ``p = v_expf(-softcap - M)``
weighs the stale ``V32`` rows, an upstream oddity). A KV tile that upstream skips because every row of the Q tile
is fully masked there is the same as each row's own skip (``p = 0``, so ``fma(0, V, VKQ) = VKQ``). That identity
needs finite V and ``VKQ != -0.0``; outside that (an inf in V, an accumulator that underflowed to -0.0) the result
of a row may depend on its tile mates and so on the thread count. Both are outside the domain modelled here.

The scalar column tail of ``simd_gemm`` (``N % GGML_F32_EPR != 0``) indexes ``A[i + kk]`` instead of
``A[i*K + kk]``; upstream never reaches it (KV_TILE = 64 and the ``DV % EPR`` gate), and this model refuses a
Dv that would.

Tested bit for bit (tests/reference/test_fa_tiled.py) against ggml-python 0.0.45 built natively on AMD Zen 3
(``ggml_x86_avx2_znver3``) and at the levels generic, avx and avx2: f16 K/V with Dk 192 / Dv 128 and Dk 576 /
Dv 512 (V a view of K), f32 K/V, 64 to 300 queries, partial KV tiles, masks with fully masked rows and tiles,
softcap, 1 to 4 threads. The avx512 variant is inferred (no such CPU here).
"""

from __future__ import annotations

import numpy as np

from mlaref.reference import libm as libm
from mlaref.reference import fp
from mlaref.reference.ops import vexp
from mlaref.reference.plan import ReductionPlan
from mlaref.reference.tensor import Tensor

__all__ = ["flash_attn_tiled", "tiled_build", "Q_TILE", "KV_TILE"]

Q_TILE = 64  # GGML_FA_TILE_Q (ggml-cpu/common.h): upstream takes the tiled path from this many queries
KV_TILE = 64  # GGML_FA_TILE_KV

_F = np.float32
_NEG_INF = _F(-np.inf)


def tiled_build(plan: ReductionPlan) -> tuple[bool, str, int]:
    """``(fma, simd, epr)`` of the build a plan names: GEMM fusion, soft_max's ``vexp.SIMD`` variant, and
    ``GGML_F32_EPR`` (1 for a build without GGML_SIMD). Read from the plan's f32 pair."""
    p = plan.for_pair("f32.f32")
    if p.lanes == 16:
        simd = "avx512"
    elif p.lanes == 8:
        simd = "avx2" if p.fma else "sse2_avx"
    elif p.lanes == 1:
        simd = "sse2_fma" if p.fma else "sse2"
    else:
        raise ValueError(f"flash_attn_ext: the tiled path has no build with {p.lanes} f32 lanes (plan {plan.name})")
    return p.fma, simd, p.lanes


def _madd(fma: bool):
    """``C += A*B`` of one simd_gemm step: one rounding with FMA, else a rounded product then a rounded sum."""
    if fma:
        return fp.fmaf
    return lambda a, b, c: (np.asarray(c, _F) + (np.asarray(a, _F) * np.asarray(b, _F)).astype(_F)).astype(_F)


def _check(q, k, v, epr):
    if k.type != v.type or k.type not in ("f16", "f32"):
        raise ValueError(f"flash_attn_ext: the tiled path needs K and V both f16 or both f32, got {k.type}/{v.type}")
    if v.ne[0] % epr:
        raise ValueError(f"flash_attn_ext: the tiled path needs Dv % GGML_F32_EPR == 0 (Dv {v.ne[0]}, EPR {epr}); "
                         f"upstream runs its one-chunk path there")


def _scores(q: Tensor, k: Tensor, madd) -> np.ndarray:
    """KQ before scaling, (ne3, nh, nq, n_kv): per element the serial chain over Dk, from +0."""
    Dk, nq, nh, ne3 = q.ne
    rk2, rk3 = nh // k.ne[2], ne3 // k.ne[3]
    qv = q.to_numpy()  # (ne3, nh, nq, Dk), f32
    kv = k.to_numpy()[np.arange(ne3)[:, None] // rk3, np.arange(nh)[None, :] // rk2]  # (ne3, nh, n_kv, Dk)
    kt = np.ascontiguousarray(np.moveaxis(kv, -1, 0))[:, :, :, None, :]  # (Dk, ne3, nh, 1, n_kv)
    qt = np.ascontiguousarray(np.moveaxis(qv, -1, 0))[..., None]  # (Dk, ne3, nh, nq, 1)
    acc = np.zeros((ne3, nh, nq, k.ne[1]), _F)
    for d in range(Dk):
        acc = madd(qt[d], kt[d], acc)
    return acc


def _mask(q: Tensor, mask: Tensor | None, n_kv: int) -> np.ndarray | None:
    """The f16 mask widened to f32, per row: (ne3, nh, nq, n_kv) (head i2 reads mask plane i2 % mask.ne2)."""
    if mask is None:
        return None
    Dk, nq, nh, ne3 = q.ne
    mv = mask.to_numpy()  # (m3, m2, m1, m0)
    i3 = np.arange(ne3)[:, None] % mask.ne[3]
    i2 = np.arange(nh)[None, :] % mask.ne[2]
    return mv[i3, i2, :nq, :n_kv]


def _soft_max_tile(x: np.ndarray, M: np.ndarray, simd: str):
    """``ggml_vec_soft_max_f32(KV_TILE, p, x, M)`` per row: ``p`` and the double sum."""
    with np.errstate(invalid="ignore", over="ignore"):
        p = vexp.v_expf((x - M[..., None]).astype(_F), simd)
    w = vexp.WIDTH[simd]  # KV_TILE is a multiple of every width: no scalar tail
    total = np.zeros(M.shape, np.float64)
    for c in range(0, KV_TILE, w):
        total = total + vexp.chunk_sum(p[..., c:c + w], simd).astype(np.float64)
    return p, total


def flash_attn_tiled(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale, softcap, plan) -> np.ndarray:
    """The tiled order (module docstring) for checked operands and the effective ``scale`` (already divided by
    ``softcap``). Returns f32 ``(ne3 * n_q * n_head, Dv)``, rows in flash_attn_ext's output order (i3, i1, i2)."""
    fma, simd, epr = tiled_build(plan)
    _check(q, k, v, epr)
    madd = _madd(fma)
    Dk, nq, nh, ne3 = q.ne
    n_kv, Dv = k.ne[1], v.ne[0]
    rk2, rk3 = nh // v.ne[2], ne3 // v.ne[3]
    V = v.to_numpy()[np.arange(ne3)[:, None] // rk3, np.arange(nh)[None, :] // rk2]  # (ne3, nh, n_kv, Dv)
    V = V[:, :, None]  # broadcast over the queries of a head
    kq_all = _scores(q, k, madd)
    mk_all = _mask(q, mask, n_kv)
    scale, softcap = _F(scale), _F(softcap)

    shape = (ne3, nh, nq)
    M = np.full(shape, _NEG_INF, _F)
    S = np.zeros(shape, _F)
    VKQ = np.zeros(shape + (Dv,), _F)
    V32 = np.zeros((ne3, nh, 1, KV_TILE, Dv), _F)
    for ic in range(0, n_kv, KV_TILE):
        kv_tile = min(KV_TILE, n_kv - ic)
        V32[..., :kv_tile, :] = V[..., ic:ic + kv_tile, :]  # the padding rows keep the previous tile's rows
        kq = np.full(shape + (KV_TILE,), _NEG_INF, _F)
        kq[..., :kv_tile] = (kq_all[..., ic:ic + kv_tile] * scale).astype(_F)
        if softcap != 0:
            kq = (libm.tanhf(kq) * softcap).astype(_F)
        if mk_all is not None:
            m32 = np.full(shape + (KV_TILE,), _NEG_INF, _F)
            m32[..., :kv_tile] = mk_all[..., ic:ic + kv_tile]
            kq = (kq + m32).astype(_F)
        tile_max = np.max(kq, axis=-1)  # exact; ggml's serial MAX differs only in the sign of a zero
        live = tile_max != _NEG_INF
        Mnew = np.fmax(M, tile_max)
        grow = live & (Mnew > M)
        with np.errstate(invalid="ignore"):
            ms = libm.expf(np.where(grow, M - Mnew, 0).astype(_F))
        VKQ = np.where(grow[..., None], (VKQ * ms[..., None]).astype(_F), VKQ)
        S = np.where(grow, (S * ms).astype(_F), S)
        M = np.where(live, Mnew, M).astype(_F)
        p, total = _soft_max_tile(kq, M, simd)
        S = np.where(live, (S.astype(np.float64) + total).astype(_F), S)
        p = np.where(live[..., None], p, _F(0))
        for j in range(KV_TILE):
            VKQ = madd(p[..., j, None], V32[..., j, :], VKQ)
    with np.errstate(divide="ignore"):
        inv = np.where(S == 0, _F(0), (_F(1) / S).astype(_F)).astype(_F)
    out = (VKQ * inv[..., None]).astype(_F)  # (ne3, nh, nq, Dv)
    return np.ascontiguousarray(out.transpose(0, 2, 1, 3)).reshape(ne3 * nq * nh, Dv)
