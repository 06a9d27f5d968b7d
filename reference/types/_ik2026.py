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
   ``from_float`` is IQK's ``iqk_quantize_q4_0`` (ggml-quants.c:710-712, iqk/iqk_quantize.cpp:716);
   ``make_qkx3_quants`` (ggml-quants.c:2198-2337; q4_1, q5_1, q4_K with an imatrix) works in float64 with a
   closed-form error and ends with a greedy search; ``make_qp_quants`` (ggml-quants.c:2339-2410) has a 1e-16
   zero test.
2. **FMA contraction.** The native build compiles ggml-quants.c with ``-march=native`` (ggml/src/CMakeLists.txt:1379,
   GGML_NATIVE=ON, gcc 12.2 in GNU C mode: ``-ffp-contract=fast``), so GCC fuses some ``a*b + c`` into one
   rounding. Which ones is a property of the compiled code, not of the source: the choices below were read from
   ``objdump -d`` of the snapshot's ``libggml.so`` (``make_qx_quants.constprop.0/1``, ``quantize_row_q4_K_ref``,
   ``quantize_q4_0``, ``make_qkx3_quants.constprop.0``, ``make_qp_quants.constprop.1``, ``quantize_row_q4_K_impl``)
   and confirmed byte for byte against it. The rule that explains most of them: a loop that GCC
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



F64 = np.float64


def _two_sum(a, b):
    """Knuth's TwoSum: ``s = a + b`` rounded and its exact error ``e`` (``a + b = s + e``)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _two_prod(a, b):
    """Dekker's TwoProduct: ``p = a*b`` rounded and its exact error (Veltkamp splitting; no overflow near 1e300)."""
    p = a * b

    def split(v):
        c = F64(134217729.0) * v  # 2**27 + 1
        hi = c - (c - v)
        return hi, v - hi

    ah, al = split(a)
    bh, bl = split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def fma(a, b, c) -> np.ndarray:
    """Correctly rounded float64 fused multiply-add ``a*b + c`` (C ``fma``; ``vfmadd...sd``) for finite operands.

    Boldo and Melquiond's emulation: ``a*b = uh + ul`` exactly, ``c + uh = th + tl`` exactly, ``v`` = ``tl + ul``
    rounded to odd, result ``th + v`` rounded to nearest. Non-finite results take the plain path.
    """
    a, b, c = (np.asarray(v, dtype=F64) for v in (a, b, c))
    with np.errstate(invalid="ignore", over="ignore"):
        uh, ul = _two_prod(a, b)
        th, tl = _two_sum(c, uh)
        v, e = _two_sum(tl, ul)
        odd_fix = (e != 0) & ((np.asarray(v).view(np.uint64) & 1) == 0) & np.isfinite(v)
        v = np.where(odd_fix, np.nextafter(v, np.where(e > 0, np.inf, -np.inf)), v)
        r = th + v
        plain = a * b + c
        return np.where(np.isfinite(r) & np.isfinite(uh), r, plain)


def _quadratic_error(s, m, sum_x2, sum_x, sum_l, sum_l2, sum_xl, sum_w):
    """``sum_x2 - 2 s sum_xl - 2 m sum_x + 2 s m sum_l + s*s sum_l2 + m*m sum_w`` as built: one chain of
    fused multiply-adds from ``sum_x2`` in source order, each product's first factor rounded
    (``2s``, ``2m``, ``(2s)*m``, ``s*s``, ``m*m``)."""
    acc = fma(-sum_xl, 2 * s, sum_x2)
    acc = fma(-sum_x, 2 * m, acc)
    acc = fma(sum_l, (2 * s) * m, acc)
    acc = fma(sum_l2, s * s, acc)
    return fma(sum_w, m * m, acc)


def _quadratic_score(s, m, sum_x, sum_l, sum_l2, sum_xl, sum_w):
    """``2 s sum_xl + 2 m sum_x - 2 s m sum_l - s*s sum_l2 - m*m sum_w`` as built: ``(2m)*sum_x`` rounded, then
    fused multiply-adds in source order."""
    acc = fma(2 * s, sum_xl, (2 * m) * sum_x)
    acc = fma(-((2 * s) * m), sum_l, acc)
    acc = fma(-(s * s), sum_l2, acc)
    return fma(-(m * m), sum_w, acc)


def _solve_scale_min(sum_w, sum_x, sum_l, sum_l2, sum_xl, D):
    """The 2x2 least squares of make_qkx3_quants in float64 as built: ``this_min = fma(sum_l2, sum_x,
    -(sum_l*sum_xl))/D``; if it is > 0, ``(sum_xl/sum_l2, 0)``, else ``this_scale = fma(-sum_l, sum_x,
    sum_w*sum_xl)/D`` (the first product rounded, the second fused)."""
    this_min = fma(sum_l2, sum_x, -(sum_l * sum_xl)) / D
    pos = this_min > 0
    this_scale = np.where(pos, sum_xl / sum_l2, fma(-sum_l, sum_x, sum_xl * sum_w) / D)
    return this_scale, np.where(pos, F64(0), this_min)


def make_qkx3_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float = -0.9, rdelta: float = 0.05,
                     nstep: int = 36):
    """The snapshot's ``make_qkx3_quants(n, nmax, x, w, L, &the_min, Laux, rmin, rdelta, nstep, false)`` as built
    (ggml-quants.c:2198-2337, ``make_qkx3_quants.constprop.0`` of libggml.so), on ``(n, m)`` groups.

    Returns ``(scale, the_min, L uint8)``. Unlike upstream's (and :func:`._quant_math.make_qkx_quants`), the sums
    are float64 and the error of a try is the closed-form quadratic, and a greedy search follows:

    1. Prologue in float64, no fusion: ``sum_w``, ``sum_x = Σ w x``, ``sum_x2 = Σ (w x) x`` in index order;
       ``min``/``max`` float, ``min`` clamped to <= 0. ``max - min < 1e-10f``: scale 0, L = 0, ``the_min = -min``.
    2. ``iscale = nmax/(max - min)``, ``scale = 1/iscale`` (float); ``L = clamp(nearest_int_fma(iscale, x - min))``;
       ``best_mad = Σ fma(diff*diff, w, ·)`` with ``diff = (scale*L + min) - x`` in float64.
    3. For ``is`` = 0..nstep: ``iscale = (fmaf(rdelta, is, rmin) + nmax)/(max - min)`` with the current float
       ``min``; Laux likewise; float64 ``sum_l, sum_l2, sum_xl`` (exact products); ``D = fma(sum_l2, sum_w,
       -(sum_l*sum_l))``; if ``D > 0``, (this_scale, this_min) by :func:`_solve_scale_min`, ``mad`` by
       :func:`_quadratic_error`; taken when ``mad < best_mad`` (``scale``, ``min`` become floats).
    4. The sums of the best L; ``best`` by :func:`_quadratic_score` from the float scale and min. Then at most
       ``nmax*n`` greedy steps: ``g_j = fmaf(-scale, L_j, x_j) - min`` (float); the first j of largest ``|g|``
       with ``g > 0, L < nmax`` or ``g < 0, L > 0`` moves one step toward the sign of g (``dir``); stop when none,
       or when it undoes the previous step; update the sums, stop unless ``D > 0``, solve, stop if
       ``this_scale < 0`` or ``score <= best``, else accept (``scale``, ``min`` rounded to float).
    """
    n, m = x.shape
    x = x.astype(F32, copy=False)
    w = w.astype(F32, copy=False)
    xd, wd = x.astype(F64), w.astype(F64)
    lo, hi = x[0].copy(), x[0].copy()
    sum_w = wd[0].copy()
    sum_x = sum_w * xd[0]
    sum_x2 = sum_x * xd[0]
    for i in range(1, n):
        lo = np.where(x[i] < lo, x[i], lo)
        hi = np.where(x[i] > hi, x[i], hi)
        sum_w = sum_w + wd[i]
        wx = xd[i] * wd[i]
        sum_x = sum_x + wx
        sum_x2 = sum_x2 + wx * xd[i]
    lo = np.where(lo > 0, F32(0), lo).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        flat = ~((hi - lo) >= F32(1e-10))
        iscale = F32(nmax) / (hi - lo)
        scale = (F32(1) / iscale).astype(F32)
        L = np.clip(nearest_int_fma(iscale[None, :], x - lo[None, :]), 0, nmax)
        diff = (scale.astype(F64)[None, :] * L + lo.astype(F64)[None, :]) - xd
        best_mad = np.zeros(m, dtype=F64)
        for i in range(n):
            best_mad = fma(diff[i] * diff[i], wd[i], best_mad)
        cur_min = lo
        for step in range(nstep + 1):
            iscale = (fp.fmaf(F32(rdelta), F32(step), F32(rmin)) + F32(nmax)) / (hi - cur_min)
            laux = np.clip(nearest_int_fma(iscale[None, :], x - cur_min[None, :]), 0, nmax)
            wl = wd * laux
            sum_l = seq_sum(wl, np.zeros(m, dtype=F64))
            sum_l2 = seq_sum(wl * laux, np.zeros(m, dtype=F64))
            sum_xl = seq_sum(wl * xd, np.zeros(m, dtype=F64))
            D = fma(sum_l2, sum_w, -(sum_l * sum_l))
            s, mn = _solve_scale_min(sum_w, sum_x, sum_l, sum_l2, sum_xl, D)
            mad = _quadratic_error(s, mn, sum_x2, sum_x, sum_l, sum_l2, sum_xl, sum_w)
            take = (D > 0) & (mad < best_mad)
            L = np.where(take[None, :], laux, L)
            best_mad = np.where(take, mad, best_mad)
            scale = np.where(take, s.astype(F32), scale).astype(F32)
            cur_min = np.where(take, mn.astype(F32), cur_min).astype(F32)
        L = L.astype(np.int64)
        wl = wd * L
        sum_l = seq_sum(wl, np.zeros(m, dtype=F64))
        sum_l2 = seq_sum(wl * L, np.zeros(m, dtype=F64))
        sum_xl = seq_sum(wl * xd, np.zeros(m, dtype=F64))
        best = _quadratic_score(scale.astype(F64), cur_min.astype(F64), sum_x, sum_l, sum_l2, sum_xl, sum_w)
        last_j = np.full(m, -1)
        last_dir = np.zeros(m, dtype=np.int64)
        active = ~flat
        for _ in range(nmax * n):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            la = L[:, idx]
            g = fp.fmaf(-scale[idx][None, :], la.astype(F32), x[:, idx]) - cur_min[idx][None, :]
            movable = ((g > 0) & (la < nmax)) | ((g < 0) & (la > 0))
            ag = np.where(movable, np.abs(g), F32(0))
            j = np.argmax(ag, axis=0)
            r = np.arange(idx.size)
            direction = np.where(g[j, r] > 0, 1, -1)
            ok = (ag[j, r] > 0) & ~((j == last_j[idx]) & (direction == -last_dir[idx]))
            wj, xj, lj = wd[j, idx], xd[j, idx], la[j, r]
            sl = sum_l[idx] + wj * direction
            sl2 = sum_l2[idx] + wj * (2 * lj * direction + 1)
            sxl = sum_xl[idx] + (xj * wj) * direction
            D = fma(sl2, sum_w[idx], -(sl * sl))
            ok &= D > 0
            s, mn = _solve_scale_min(sum_w[idx], sum_x[idx], sl, sl2, sxl, D)
            ok &= ~(s < 0)
            score = _quadratic_score(s, mn, sum_x[idx], sl, sl2, sxl, sum_w[idx])
            ok &= ~(score <= best[idx])
            k = idx[ok]
            sum_l[k], sum_l2[k], sum_xl[k], best[k] = sl[ok], sl2[ok], sxl[ok], score[ok]
            scale[k] = s[ok].astype(F32)
            cur_min[k] = mn[ok].astype(F32)
            L[j[ok], k] = lj[ok] + direction[ok]
            last_j[k], last_dir[k] = j[ok], direction[ok]
            active[idx[~ok]] = False
    scale = np.where(flat, F32(0), scale).astype(F32)
    the_min = (-np.where(flat, lo, cur_min)).astype(F32)
    L = np.where(flat[None, :], 0, L).astype(np.uint8)
    return scale, the_min, L


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray):
    """The snapshot's ``make_qp_quants(n, nmax, x, L, qw)`` as built (ggml-quants.c:2339-2410,
    ``make_qp_quants.constprop.1`` of libggml.so: n = 8, nmax = 63, fully unrolled), on ``(n, m)`` groups ->
    (scale, L uint8).

    Upstream's algorithm (:func:`._quant_math.make_qp_quants`) with these differences:

    * all zero when ``max < 1e-16f`` (upstream ``GROUP_MAX_EPS`` = 1e-15), ``max = MAX(0, x_0, x_1, ...)``;
    * every ``nearest_int(iscale*x)`` is :func:`nearest_int_fma`; the tries use ``iscale = fmaf(is, 0.1f, nmax)/max``;
    * squared errors: ``diff = fmaf(-scale, l, x)``, ``mse = fmaf(w*diff, diff, mse)`` (the first uses the stored
      uint8 L, the tries ``min(nmax, l)``);
    * ``sumlx = fmaf(w*x, l, ·)``, ``suml2 = fmaf(w*l, l, ·)``; in the sweeps ``slx = fmaf(-(w*x), L, sumlx)``,
      ``sl2 = fmaf(-(w*L), L, suml2)``, ``new_l = min(nmax, nearest_int((x*sl2)/slx))`` (divided first: not fused),
      then ``fmaf(w*x, new_l, slx)``, ``fmaf(w*new_l, new_l, sl2)``; the test ``(slx*slx)*suml2 >
      (sumlx*sumlx)*sl2`` is not fused;
    * the result is ``sumlx/suml2`` with no guard (``quantize_row_q4_K_impl`` aborts on a NaN).
    """
    n, m = x.shape
    x = x.astype(F32, copy=False)
    qw = qw.astype(F32, copy=False)
    xmax = np.zeros(m, dtype=F32)
    for t in x:
        xmax = np.where(xmax > t, xmax, t)
    zero = xmax < F32(1e-16)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):

        def mse_of(scale, lf):
            diff = fp.fmaf(-scale[None, :], lf, x)
            acc = np.zeros(m, dtype=F32)
            for i in range(n):
                acc = fp.fmaf(qw[i] * diff[i], diff[i], acc)
            return acc

        iscale = (F32(nmax) / xmax).astype(F32)
        L0 = nearest_int_fma(iscale[None, :], x) & 0xFF
        best_mse = mse_of((F32(1) / iscale).astype(F32), L0.astype(F32))
        for step in range(-4, 5):
            if step == 0:
                continue
            iscale_is = (fp.fmaf(F32(step), F32(0.1), F32(nmax)) / xmax).astype(F32)
            l = np.minimum(nmax, nearest_int_fma(iscale_is[None, :], x))
            mse = mse_of((F32(1) / iscale_is).astype(F32), l.astype(F32))
            take = mse < best_mse
            best_mse = np.where(take, mse, best_mse).astype(F32)
            iscale = np.where(take, iscale_is, iscale).astype(F32)
        l = np.minimum(nmax, nearest_int_fma(iscale[None, :], x))
        L = (l & 0xFF).astype(np.int64)
        lf = l.astype(F32)
        wx = (qw * x).astype(F32)
        sumlx = np.zeros(m, dtype=F32)
        suml2 = np.zeros(m, dtype=F32)
        for i in range(n):
            sumlx = fp.fmaf(wx[i], lf[i], sumlx)
            suml2 = fp.fmaf(qw[i] * lf[i], lf[i], suml2)
        for _ in range(5):
            changed = np.zeros(m, dtype=bool)
            for i in range(n):
                w, xi, Li = qw[i], x[i], L[i].astype(F32)
                slx = fp.fmaf(-wx[i], Li, sumlx)
                sl2 = fp.fmaf(-(w * Li), Li, suml2)
                ok = (slx > 0) & (sl2 > 0)
                new_l = np.minimum(nmax, fp.nearest_int((xi * sl2) / slx)).astype(np.int64)
                ok &= new_l != L[i]
                nf = new_l.astype(F32)
                slx = fp.fmaf(wx[i], nf, slx)
                sl2 = fp.fmaf(w * nf, nf, sl2)
                ok &= ((slx * slx) * suml2) > ((sumlx * sumlx) * sl2)
                L[i] = np.where(ok, new_l & 0xFF, L[i])
                sumlx = np.where(ok, slx, sumlx).astype(F32)
                suml2 = np.where(ok, sl2, suml2).astype(F32)
                changed |= ok
            if not changed.any():  # a group with no change is at a fixed point (C's per-group early exit)
                break
        scale = (sumlx / suml2).astype(F32)
    scale = np.where(zero, F32(0), scale).astype(F32)
    L = np.where(zero[None, :], 0, L).astype(np.uint8)
    return scale, L
