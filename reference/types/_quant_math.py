"""The quantization solvers of ggml-quants.c vectorised over groups: make_qx, make_qkx2/3 and make_qp_quants.

One implementation serves every format that calls a solver: the k-quants (q4_K, q6_K) on their sub-blocks and
the legacy ``quantize_row_q{4,5}_{0,1}_impl`` (model quantization with an imatrix) on their 32-blocks.

Each function reproduces one ``static`` helper of upstream ggml's ``ggml-quants.c`` (the copy ggml-python
0.0.45 vendors; ik_llama.cpp@676f0e71b has the same code except where noted) on many independent groups at
once. Arrays are **group-major transposed**: a batch of ``m`` groups of ``n`` values is an ``(n, m)``
float32 array, so the loop over the ``n`` values of a group (the reduction axis) walks contiguous rows and
every step is one element-wise float32 operation over all ``m`` groups, rounded once, as in the C loop.

Float order is the C order exactly: every sum starts from the C initial value and adds terms in index order;
products associate left to right (``w*x[i]*l`` is ``(w*x)*l``); integer ``l`` is converted to float before it
meets a float. No expression is fused into an FMA: the peer's ``libggml-base.so`` (where ggml-quants.c is
compiled) holds no FMA or VEX instruction at all (``objdump -d | grep vfmadd`` finds none; it is built for
baseline x86-64 with SSE2), and the tests compare bytes with it. Contraction would show: fusing just the two
accumulations of ``make_qx_quants`` (``sumlx = fmaf(w*x, l, sumlx)``, ``suml2 = fmaf(w*l, l, suml2)``) changes
32 of 2048 q6_K blocks of N(0, 1) data, and the peer agrees with the unfused model on all of them. A real
ik_llama.cpp build compiles ggml-quants.c with ``-march=native`` in GNU C mode, where GCC may contract these
expressions (upstream facts §4): its bytes may differ from these in that way (not checked).

``nearest_int`` is ggml's ``1.5*2**23`` trick (:func:`mlaref.reference.fp.nearest_int`), reproduced bit for bit
also outside its asserted range (asserts are compiled out), so inf and NaN map the way the C code maps them.
The legacy formats' callers transpose their ``(n_blocks, 32)`` blocks into this layout (``q4_1.qkx3_blocks``).

Differences in ik_llama.cpp@676f0e71b (``ggml/src/ggml-quants.c``): ``make_qp_quants`` treats a group as zero
only when ``max == 0`` (upstream: ``max < 1e-15``) and returns ``sumlx/suml2`` without the ``suml2 > 0``
guard. Only ``quantize_row_q4_K_impl`` (model quantization with an imatrix) calls it among the formats here, so
ik's q4_K-with-imatrix bytes differ from upstream's only for blocks whose 8 sub-block scales (or mins) are
all below 1e-15 but not all 0, or whose weighted ``suml2`` ends at 0 (e.g. an imatrix that is zero over the
whole block: upstream stores 0, ik ``0/0``). Everything else read here (``make_qx_quants``,
``make_qkx2_quants``, ``make_qkx3_quants``, the q4_K / q6_K / q8_K row quantizers and dequantizers) is the
same code.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference import fp

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)  # ggml-quants.c: #define GROUP_MAX_EPS 1e-15f


def seq_sum(terms: np.ndarray, start=None) -> np.ndarray:
    """Sum ``(n, m)`` float32 terms over axis 0 in index order, from ``start`` (float32 0 by default)."""
    acc = np.zeros(terms.shape[1:], dtype=F32) if start is None else start
    for t in terms:
        acc = acc + t
    return acc


def first_absmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """The signed value with the largest ``|x|`` along ``axis``, as C's scan ``if (ax > amax) { amax = ax; max = x; }``.

    The scan starts from ``amax = max = 0`` and compares strictly, so the first maximum wins, a NaN never
    wins, and a group without a positive ``|x|`` gives +0.
    """
    a = np.abs(x)
    a = np.where(np.isnan(a), F32(-1), a)
    idx = np.expand_dims(np.argmax(a, axis=axis), axis)  # argmax returns the first maximum
    best = np.take_along_axis(x, idx, axis=axis).squeeze(axis)
    return np.where(np.take_along_axis(a, idx, axis=axis).squeeze(axis) > 0, best, F32(0)).astype(F32, copy=False)


def _seq_min_max(x: np.ndarray):
    """C's ``min = max = x[0]; if (x[i] < min) ...; if (x[i] > max) ...`` (keeps the first of equal zeros)."""
    lo = x[0].copy()
    hi = x[0].copy()
    for t in x[1:]:
        lo = np.where(t < lo, t, lo)
        hi = np.where(t > hi, t, hi)
    return lo, hi



def weighted_range(x: np.ndarray, w: np.ndarray):
    """Per column of ``x`` ``(n, groups)``: (min, max) in order, and ``sum_w``, ``sum_x = Σ w·x`` summed in
    order, each product rounded (the prologue of the make_qkx solvers)."""
    lo, hi = _seq_min_max(x)
    sum_w = w[0].copy()
    sum_x = sum_w * x[0]
    for i in range(1, x.shape[0]):
        sum_w = sum_w + w[i]
        sum_x = sum_x + w[i] * x[i]
    return lo, hi, sum_w, sum_x

def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None = None):
    """``make_qx_quants(n, nmax, x, L, rmse_type = 1, qw)`` on ``(n, m)`` groups -> (scale ``(m,)``, L ``(n, m)``).

    Symmetric quantization to ``l`` in [-nmax, nmax - 1] (stored as ``L = l + nmax``) with weights
    ``w = qw`` or ``x**2``: start from ``iscale = -nmax/max`` (``max`` = the signed value of largest
    magnitude), take the weighted least-squares scale ``sumlx/suml2``, then try ``iscale = -(nmax +
    0.1*is)/max`` for ``is`` in -9..9 (not 0) and keep a try when ``sumlx**2 > best*suml2``. Groups with
    ``max|x| < 1e-15`` return scale 0 and L = 0.
    """
    xmax = first_absmax(x)
    zero = np.abs(xmax) < GROUP_MAX_EPS
    w = x * x if qw is None else qw
    wx = w * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-nmax) / xmax

        def try_scale(isc):
            l = np.clip(fp.nearest_int(isc[None, :] * x), -nmax, nmax - 1)
            lf = l.astype(F32, copy=False)
            return l, seq_sum(wx * lf), seq_sum((w * lf) * lf)

        l, sumlx, suml2 = try_scale(iscale)
        best_l = l
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32, copy=False)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            numer = -(F32(nmax) + F32(0.1) * F32(step))
            iscale = numer / xmax
            l, sumlx, suml2 = try_scale(iscale)
            take = (suml2 > 0) & ((sumlx * sumlx) > (best * suml2))
            best_l = np.where(take[None, :], l, best_l)
            scale = np.where(take, sumlx / suml2, scale).astype(F32, copy=False)
            best = np.where(take, scale * sumlx, best).astype(F32, copy=False)
    scale = np.where(zero, F32(0), scale).astype(F32, copy=False)
    L = np.where(zero[None, :], 0, best_l + nmax).astype(np.int8)
    return scale, L


def make_qkx_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """``make_qkx2_quants`` / ``make_qkx3_quants`` (``use_mad = false``) on ``(n, m)`` groups.

    Returns ``(scale (m,), the_min (m,), L (n, m) uint8)``. Asymmetric quantization ``x ~ scale*L + min`` with
    ``min = min(0, min x)`` and L in [0, nmax]: start from ``iscale = nmax/(max - min)`` and its weighted
    squared error, then for ``is`` in 0..nstep try ``iscale = (rmin + rdelta*is + nmax)/(max - min)``, solve the
    2x2 weighted least squares for (scale, min) (clamping ``min`` to 0 and refitting the scale when it comes
    out positive) and keep the try whose weighted squared error is strictly smaller. Note that an accepted
    try replaces ``min``, and later tries use the new ``min`` in ``max - min`` and ``x - min``: the C code does.
    ``the_min = -min`` (>= 0).

    The two C functions differ only in their degenerate test (``max == min`` vs ``max <= min``), which
    cannot differ once ``min`` is clamped to <= 0 and ``max >= min``, and in qkx3's default weights (the
    caller passes the weights here).
    """
    lo, hi, sum_w, sum_x = weighted_range(x, w)
    lo = np.where(lo > 0, F32(0), lo).astype(F32, copy=False)
    flat = hi == lo
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(nmax) / (hi - lo)
        scale = F32(1) / iscale
        L = np.clip(fp.nearest_int(iscale[None, :] * (x - lo[None, :])), 0, nmax)
        diff = (scale[None, :] * L.astype(F32) + lo[None, :]) - x
        best_error = seq_sum(w * (diff * diff))
        cur_min = lo
        for step in range(nstep + 1):
            numer = (F32(rmin) + F32(rdelta) * F32(step)) + F32(nmax)
            iscale = numer / (hi - cur_min)
            laux = np.clip(fp.nearest_int(iscale[None, :] * (x - cur_min[None, :])), 0, nmax)
            lf = laux.astype(F32, copy=False)
            wl = w * lf
            sum_l = seq_sum(wl)
            sum_l2 = seq_sum(wl * lf)
            sum_xl = seq_sum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F32(0), this_min).astype(F32, copy=False)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale).astype(F32, copy=False)
            diff = (this_scale[None, :] * lf + this_min[None, :]) - x
            cur_error = seq_sum(w * (diff * diff))
            take = (D > 0) & (cur_error < best_error)
            L = np.where(take[None, :], laux, L)
            best_error = np.where(take, cur_error, best_error).astype(F32, copy=False)
            scale = np.where(take, this_scale, scale).astype(F32, copy=False)
            cur_min = np.where(take, this_min, cur_min).astype(F32, copy=False)
    scale = np.where(flat, F32(0), scale).astype(F32, copy=False)
    the_min = np.where(flat, -lo, -cur_min).astype(F32, copy=False)
    L = np.where(flat[None, :], 0, L).astype(np.uint8)
    return scale, the_min, L


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray):
    """``make_qp_quants(n, nmax, x, L, quant_weights)`` (upstream) on ``(n, m)`` groups -> (scale, L uint8).

    Non-negative quantization ``x ~ scale*L``: pick the ``iscale`` among ``nmax/max`` and ``(nmax +
    0.1*is)/max``, ``is`` in -4..4, with the smallest weighted squared error, then improve L one element at
    a time (up to 5 sweeps, sequential in the element index, each change accepted only if it raises
    ``sumlx**2/suml2``); return ``sumlx/suml2``. ``L`` is ``uint8`` in C: a negative ``nearest_int`` wraps
    modulo 256 when stored and the stored value is what later steps read, which this reproduces.
    """
    n, m = x.shape
    xmax = np.zeros(m, dtype=F32)
    for t in x:
        xmax = np.where(xmax > t, xmax, t)  # MAX(a, b) = a > b ? a : b
    zero = xmax < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(nmax) / xmax
        Lw = fp.nearest_int(iscale[None, :] * x) & 0xFF
        scale = F32(1) / iscale
        diff = x - scale[None, :] * Lw.astype(F32, copy=False)
        best_mse = seq_sum((qw * diff) * diff)
        for step in range(-4, 5):
            if step == 0:
                continue
            iscale_is = (F32(0.1) * F32(step) + F32(nmax)) / xmax
            scale_is = F32(1) / iscale_is
            l = np.minimum(nmax, fp.nearest_int(iscale_is[None, :] * x))
            diff = x - scale_is[None, :] * l.astype(F32, copy=False)
            mse = seq_sum((qw * diff) * diff)
            take = mse < best_mse
            best_mse = np.where(take, mse, best_mse).astype(F32, copy=False)
            iscale = np.where(take, iscale_is, iscale).astype(F32, copy=False)
        l = np.minimum(nmax, fp.nearest_int(iscale[None, :] * x))
        L = (l & 0xFF).astype(np.int64)  # the stored uint8
        lf = l.astype(F32, copy=False)
        wx = qw * x
        sumlx = seq_sum(wx * lf)
        suml2 = seq_sum((qw * lf) * lf)
        for _ in range(5):
            changed = np.zeros(m, dtype=bool)
            for i in range(n):
                w, xi, Li = qw[i], x[i], L[i].astype(F32, copy=False)
                slx = sumlx - (w * xi) * Li
                sl2 = suml2 - (w * Li) * Li
                ok = (slx > 0) & (sl2 > 0)
                new_l = np.minimum(nmax, fp.nearest_int((xi * sl2) / slx)).astype(np.int64)
                ok &= new_l != L[i]
                nf = new_l.astype(F32, copy=False)
                slx = slx + (w * xi) * nf
                sl2 = sl2 + (w * nf) * nf
                ok &= ((slx * slx) * suml2) > ((sumlx * sumlx) * sl2)
                L[i] = np.where(ok, new_l & 0xFF, L[i])
                sumlx = np.where(ok, slx, sumlx).astype(F32, copy=False)
                suml2 = np.where(ok, sl2, suml2).astype(F32, copy=False)
                changed |= ok
            # A group with no change is at a fixed point: another sweep would change nothing, so running
            # the remaining sweeps for every group equals C's per-group early exit.
            if not changed.any():
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32, copy=False)
    scale = np.where(zero, F32(0), scale).astype(F32, copy=False)
    L = np.where(zero[None, :], 0, L).astype(np.uint8)
    return scale, L
