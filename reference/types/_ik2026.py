"""The quantizers of the April 2026 ik_llama.cpp snapshot (ik-llama-cpp-python 0.1.5) as built: shared solvers.

Variant names (one per lineage, beside upstream's ``ref`` / ``model`` / ``x86`` of :mod:`._base`):

===============  ==============================================================================================
variant          what it reproduces in the snapshot
===============  ==============================================================================================
``ik2026_ref``   ``type_traits[t].from_float_ref`` (``quantize_row_<t>_ref``)
``ik2026_x86``   ``type_traits[t].from_float``: what ``ggml_cpy`` f32 -> t writes on the AVX2 build
``ik2026_model`` ``ggml_quantize_chunk`` (``quantize_<t>``), with or without an ``imatrix``
===============  ==============================================================================================

A format lists them in ``ik2026_variants`` (name -> implementation, as ``variants`` does);
``mlaref.reference.quantize`` is their entry point. They are kept out of ``variants`` so that the upstream variants, their tests and the public
``mlaref.reference.quantize`` stay exactly as they were.

Two things separate the snapshot's bytes from upstream's, and both are reproduced here:

1. **New code.** ``make_qx_quants`` (ggml-quants.c:1727-1851) tries a second family of scales
   ``(nmax - 1 + 0.1 is)/max`` beside ``-(nmax + 0.1 is)/max`` (ggml-quants.c:1791) and then improves ``L`` by
   a greedy coordinate search (ggml-quants.c:1811-1849); ``make_qkx2_quants`` treats a group as flat when
   ``max - min < 1e-10`` (ggml-quants.c:1975; upstream: ``max == min``); ``quantize_row_iq4_nl_impl`` gains the
   ``values[15]`` tries (ggml-quants.c:14782) and a greedy search (ggml-quants.c:14802-14831); q4_0's CPU
   ``from_float`` is IQK's ``iqk_quantize_q4_0`` (ggml-quants.c:710-712, iqk/iqk_quantize.cpp:716).
2. **FMA contraction.** The native build compiles ggml-quants.c with ``-march=native`` (ggml/src/CMakeLists.txt:1379,
   GGML_NATIVE=ON, gcc 12.2 in GNU C mode: ``-ffp-contract=fast``), so GCC fuses some ``a*b + c`` into one
   rounding. Which ones is a property of the compiled code, not of the source: the choices below were read from
   ``objdump -d`` of the snapshot's ``libggml.so`` (``make_qx_quants.constprop.0/1``, ``quantize_row_q4_K_ref``,
   ``quantize_q4_0``) and confirmed byte for byte against it. The rule that explains most of them: a loop that GCC
   vectorises (the 16/32-wide product loops) rounds every product and sums in index order; a scalar loop with a
   loop-carried accumulator fuses ``acc += a*b``; and ``nearest_int(a*b)`` (``a*b + 1.5*2**23``,
   ggml-quants.c:1720-1725) is fused wherever its argument is a product, so it rounds the *exact* product to
   the nearest integer (:func:`nearest_int_fma`).

Arrays are group-major transposed as in :mod:`._quant_math`: ``m`` groups of ``n`` values are ``(n, m)``.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types._quant_math import GROUP_MAX_EPS, first_absmax, seq_sum, weighted_range

F32 = np.float32
IK2026_VARIANTS = ("ik2026_ref", "ik2026_x86", "ik2026_model")
MAGIC = F32(12582912.0)  # 1.5 * 2**23, ggml-quants.c:1722


def nearest_int_fma(a, b) -> np.ndarray:
    """``nearest_int(a*b)`` with the add fused into the product: ``bits(fmaf(a, b, 1.5*2**23))`` as ggml decodes them.

    Inside ``|a*b| < 2**22`` this is the exact product rounded half to even; outside it is the same bit
    arithmetic as the C code (ggml-quants.c:1720-1725). Returns int64.
    """
    v = fp.fmaf(a, b, MAGIC)
    return ((np.asarray(v, dtype=F32).view(np.int32) & 0x007FFFFF) - 0x00400000).astype(np.int64)


def legacy_row_weights(x: np.ndarray, imatrix: np.ndarray, block_size: int) -> np.ndarray:
    """``qw_j * sqrtf(sigma2 + x_j*x_j)`` of the legacy ``quantize_row_q*_impl`` as built (ggml-quants.c:3371-3380).

    ``sum_x2`` over the row: GCC vectorises the loop 8 wide, so every square is rounded and the squares are added
    one by one in column order (a scalar fused tail exists only for rows that are not a multiple of 8, and rows
    here are whole 32-blocks). ``sigma2 = sum_x2 / n``; inside the square root ``sigma2 + x*x`` is fused
    (``fmaf(x, x, sigma2)``). Returns float32 ``(n_rows * n / block_size, block_size)``.
    """
    n_rows, n = x.shape
    sum_x2 = np.zeros(n_rows, dtype=F32)
    for j in range(n):
        sum_x2 += x[:, j] * x[:, j]
    sigma2 = sum_x2 / F32(n)
    w = imatrix.astype(F32)[None, :] * np.sqrt(fp.fmaf(x, x, sigma2[:, None]))
    return w.astype(F32).reshape(-1, block_size)


def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None = None):
    """The snapshot's ``make_qx_quants(n, nmax, x, L, rmse_type = 1, qw)`` on ``(n, m)`` groups -> (scale, L int8).

    ``L = l + nmax`` with ``l`` in [-nmax, nmax - 1]; weights ``w = qw`` or ``x*x`` (ggml-quants.c:1727-1851):

    1. ``max`` = the signed value of largest ``|x|`` (first on ties); ``max|x| < 1e-15``: scale 0, L = 0.
    2. ``iscale = -nmax/max``; ``l = clamp(nearest_int_fma(iscale, x))``; fused sums
       ``sumlx = fmaf(w*x, l, sumlx)``, ``suml2 = fmaf(w*l, l, suml2)``; ``scale = suml2 ? sumlx/suml2 : 0``,
       ``best = scale*sumlx``.
    3. For ``is`` = -9..9 (0 included), first ``iscale = -(nmax + 0.1f*is)/max``, then ``(nmax - 1 + 0.1f*is)/max``
       (``0.1f*is`` rounded, then the add): the same ``l``, but the sums are vectorised: products ``(w*x)*l`` and
       ``(w*l)*l`` rounded, then added in index order from 0. A try is taken when ``suml2 > 0`` and
       ``sumlx**2 > best*suml2`` (its ``L``, ``scale = sumlx/suml2``, ``best = scale*sumlx``, and its sums).
    4. Greedy search, at most ``n*(2 nmax - 1)`` steps from the best sums: ``g_j = (scale*w_j) *
       fmaf(-scale, l_j, x_j)``; among the j with ``g > 0, l < nmax - 1`` or ``g < 0, l > -nmax`` take the first
       of largest ``|g|``; move ``l_j`` one step toward the sign of g: ``sumlx +- w*x`` (product rounded, not
       fused) and ``suml2 = fmaf(+-w, 2l +- 1, suml2)``; keep it if ``suml2 > 0`` and ``sumlx**2 > best*suml2``
       (then ``scale = sumlx/suml2``, ``best = scale*sumlx``), else stop.
    """
    n, m = x.shape
    xmax = first_absmax(x)
    zero = np.abs(xmax) < GROUP_MAX_EPS
    w = (x * x).astype(F32) if qw is None else qw.astype(F32, copy=False)
    wx = (w * x).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):

        def levels(iscale):
            return np.clip(nearest_int_fma(iscale[None, :], x), -nmax, nmax - 1)

        def vector_sums(l):
            lf = l.astype(F32)
            return seq_sum(wx * lf), seq_sum((w * lf) * lf)

        L = levels(F32(-nmax) / xmax)
        lf = L.astype(F32)
        sumlx = np.zeros(m, dtype=F32)
        suml2 = np.zeros(m, dtype=F32)
        for i in range(n):
            sumlx = fp.fmaf(wx[i], lf[i], sumlx)
            suml2 = fp.fmaf(w[i] * lf[i], lf[i], suml2)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
        best = (scale * sumlx).astype(F32)
        best_x, best_2 = sumlx, suml2
        for step in range(-9, 10):
            tenth = F32(0.1) * F32(step)
            for iscale in (-(F32(nmax) + tenth) / xmax, (F32(nmax - 1) + tenth) / xmax):
                l = levels(iscale.astype(F32))
                slx, sl2 = vector_sums(l)
                take = (sl2 > 0) & ((slx * slx) > (best * sl2))
                L = np.where(take[None, :], l, L)
                scale = np.where(take, slx / sl2, scale).astype(F32)
                best = np.where(take, scale * slx, best).astype(F32)
                best_x = np.where(take, slx, best_x).astype(F32)
                best_2 = np.where(take, sl2, best_2).astype(F32)
        sumlx, suml2 = best_x.copy(), best_2.copy()
        L = L.astype(np.int64)
        active = ~zero
        for _ in range(n * (2 * nmax - 1)):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            xa, wa, la, sa = x[:, idx], w[:, idx], L[:, idx], scale[idx]
            g = (sa[None, :] * wa) * fp.fmaf(-sa[None, :], la.astype(F32), xa)
            movable = ((g > 0) & (la < nmax - 1)) | ((g < 0) & (la > -nmax))
            ag = np.where(movable, np.abs(g), F32(0))
            j = np.argmax(ag, axis=0)  # the first of the largest, as the strict '>' scan
            r = np.arange(idx.size)
            found = ag[j, r] > 0
            up = g[j, r] > 0
            wj, xj, lj = wa[j, r], xa[j, r], la[j, r]
            wxj = (wj * xj).astype(F32)
            k = np.where(up, 2 * lj + 1, 2 * lj - 1).astype(F32)
            new_x = np.where(up, sumlx[idx] + wxj, sumlx[idx] - wxj).astype(F32)
            new_2 = fp.fmaf(np.where(up, wj, -wj), k, suml2[idx])
            keep = found & (new_2 > 0) & (new_x * new_x > best[idx] * new_2)
            kept = idx[keep]
            sumlx[kept] = new_x[keep]
            suml2[kept] = new_2[keep]
            scale[kept] = new_x[keep] / new_2[keep]
            best[kept] = scale[kept] * new_x[keep]
            L[j[keep], kept] = (lj + np.where(up, 1, -1))[keep]
            active[idx[~keep]] = False
    scale = np.where(zero, F32(0), scale).astype(F32)
    L = np.where(zero[None, :], 0, L + nmax).astype(np.int8)
    return scale, L


def make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """The snapshot's ``make_qkx2_quants`` (``use_mad = false``) as built, on ``(n, m)`` groups.

    Returns ``(scale, the_min, L uint8)`` like :func:`._quant_math.make_qkx_quants`; the same algorithm
    (ggml-quants.c:1955-2040) with these differences, read from ``quantize_row_q4_K_ref``'s code:

    * flat groups: ``max - min < 1e-10`` (ggml-quants.c:1975), with ``min`` already clamped to <= 0;
    * ``sum_x += w*x`` not fused (rounded product); ``sum_w`` plain;
    * ``l = nearest_int_fma(iscale, x - min)``;
    * squared error: ``diff = fmaf(scale, l, min) - x``, ``err = fmaf(w, diff*diff, err)``;
    * ``iscale = (fmaf(rdelta, is, rmin) + nmax) / (max - min)`` (ggml-quants.c:1996);
    * per try: ``sum_l += w*l`` (rounded ``w*l``), ``sum_l2 = fmaf(w*l, l, sum_l2)``,
      ``sum_xl = fmaf(w*l, x, sum_xl)``;
    * ``D = fmaf(sum_w, sum_l2, -(sum_l*sum_l))``; ``this_min = fmaf(sum_l2, sum_x, -(sum_l*sum_xl)) / D``;
      ``this_scale = fmaf(-sum_x, sum_l, sum_w*sum_xl) / D`` (here the *second* product is the fused one).
    """
    n = x.shape[0]
    lo, hi, sum_w, sum_x = weighted_range(x, w)
    lo = np.where(lo > 0, F32(0), lo).astype(F32)
    flat = (hi - lo) < F32(1e-10)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):

        def weighted_error(scale, lf, mn):
            diff = fp.fmaf(scale[None, :], lf, mn[None, :]) - x
            err = np.zeros(x.shape[1], dtype=F32)
            for i in range(n):
                err = fp.fmaf(w[i], diff[i] * diff[i], err)
            return err

        iscale = F32(nmax) / (hi - lo)
        scale = F32(1) / iscale
        L = np.clip(nearest_int_fma(iscale[None, :], x - lo[None, :]), 0, nmax)
        best_error = weighted_error(scale, L.astype(F32), lo)
        cur_min = lo
        for step in range(nstep + 1):
            iscale = (fp.fmaf(F32(rdelta), F32(step), F32(rmin)) + F32(nmax)) / (hi - cur_min)
            laux = np.clip(nearest_int_fma(iscale[None, :], x - cur_min[None, :]), 0, nmax)
            lf = laux.astype(F32)
            sum_l = np.zeros_like(lo)
            sum_l2 = np.zeros_like(lo)
            sum_xl = np.zeros_like(lo)
            for i in range(n):
                wl = w[i] * lf[i]
                sum_l = sum_l + wl
                sum_l2 = fp.fmaf(wl, lf[i], sum_l2)
                sum_xl = fp.fmaf(wl, x[i], sum_xl)
            D = fp.fmaf(sum_w, sum_l2, -(sum_l * sum_l))
            this_min = fp.fmaf(sum_l2, sum_x, -(sum_l * sum_xl)) / D
            this_scale = fp.fmaf(-sum_x, sum_l, sum_w * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F32(0), this_min).astype(F32)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale).astype(F32)
            cur_error = weighted_error(this_scale, lf, this_min)
            take = (D > 0) & (cur_error < best_error)
            L = np.where(take[None, :], laux, L)
            best_error = np.where(take, cur_error, best_error).astype(F32)
            scale = np.where(take, this_scale, scale).astype(F32)
            cur_min = np.where(take, this_min, cur_min).astype(F32)
    scale = np.where(flat, F32(0), scale).astype(F32)
    the_min = np.where(flat, -lo, -cur_min).astype(F32)
    L = np.where(flat[None, :], 0, L).astype(np.uint8)
    return scale, the_min, L

