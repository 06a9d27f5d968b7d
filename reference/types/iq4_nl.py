"""IQ4_NL: 32 four-bit indices into a fixed non-linear table, and one f16 scale.

Block layout (18 bytes, ``block_iq4_nl`` in ggml-common.h):

======  =======  =====================================================================
offset  bytes    field
======  =======  =====================================================================
0       2        ``d``: f16 scale
2       16       ``qs[16]``: byte j holds index j in its low nibble, index j+16 in its high
======  =======  =====================================================================

Dequantization (``dequantize_row_iq4_nl``): ``y = f32(d) * kvalues_iq4nl[idx]``, exact in float32, with
``kvalues_iq4nl = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}``.

Quantization, ``quantize_row_iq4_nl_impl(super_block_size=32, block_size=32, ..., ntry)`` (ggml-quants.c
@676f0e71b and upstream ggml), per block, all sums in float and element order:

1. ``sigma2 = (sum x^2) * (2/32)``; weights ``w = x^2`` without an imatrix, ``qw * sqrtf(sigma2 + x^2)`` with one.
2. ``max`` = the signed x of largest ``|x|`` (first on ties). If ``amax < 1e-15``: scale 0 (``d = 0``), see
   step 5 for the indices.
3. ``d = (ntry > 0 ? -max : max) / -127``, ``id = 1/d``, ``L = best_index(id*x)``, ``q = kvalues[L]``,
   ``sumqx = sum (w*q)*x``, ``sumq2 = sum (w*q)*q``, ``d = sumq2 > 0 ? sumqx/sumq2 : 0``, ``best = d*sumqx``.
4. For ``itry = -ntry..ntry``: ``id = (itry - 127)/max``, the same sums; taken when ``sumq2 > 0`` and
   ``sumqx*sumqx > best*sumq2`` (``d = sumqx/sumq2``, ``best = d*sumqx``).
5. Store ``f16(d)``. With ``ntry > 0`` the indices are recomputed as ``best_index(id*x)`` with ``id = 1/d``
   (0 if ``d == 0``). With ``ntry = -1`` the indices of step 3 are kept, and a block that took the
   ``amax < 1e-15`` exit in step 2 gets no indices at all: ggml packs whatever its ``L`` scratch array holds,
   the previous block's indices or, for the first block of a call, uninitialised stack memory.

``best_index`` (``best_index_int8`` upstream, ``best_index_iq4nl`` in ik_llama.cpp) is the index of the nearest
table value, ties to the higher index: below ``kvalues[0]`` 0, above ``kvalues[15]`` 15, otherwise with ``lo``,
``hi`` the neighbours ``x - kvalues[lo] < kvalues[hi] - x ? lo : hi`` in float arithmetic.

Variants:

* ``ref`` = ``quantize_row_iq4_nl_ref`` (also the CPU ``from_float``, so ``x86`` is the same): ``ntry = -1``, no
  weights. **Documented choice for the unspecified bytes**: for an ``amax < 1e-15`` block the reference writes
  index 8 (``kvalues[8] = 1``, the table value nearest 0) into all 32 nibbles, i.e. ``qs = 0x88``, which is
  what the ``model`` path computes for such a block (``best_index(0 * x) = 8``). Its ``d`` is 0, so it
  dequantizes to zeros either way; tests compare those nibbles as "don't care".
* ``model`` = ``quantize_iq4_nl`` (``ggml_quantize_chunk``): ``ntry = 7`` with the optional imatrix.

ik_llama.cpp@676f0e71b differs from upstream ggml in one place: its step 3 divides ``sumqx/sumq2`` without
the ``sumq2 > 0`` guard, so a block whose imatrix weights are all zero gets a NaN scale there and 0 here
(without an imatrix ``sumq2 > 0`` always holds, so ``ref`` is unaffected).

Valid domain: ``d`` a finite f16; every index is a value.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types._base import BlockFormat
from mlaref.reference.types._quant_math import GROUP_MAX_EPS
from mlaref.reference.types.q4_0 import block_words, pack_nibbles, scaled_lanes_into, signed_absmax

KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
_KV = KVALUES.astype(np.float32)
# For every byte b: kvalues[b & 15] in the low byte and kvalues[b >> 4] in the high byte of a little-endian uint16.
KVALUE_PAIRS = KVALUES.view(np.uint8)[np.arange(256) & 15].astype(np.uint16) | (
    KVALUES.view(np.uint8)[np.arange(256) >> 4].astype(np.uint16) << 8
)
ZERO_BLOCK_INDEX = 8  # the index the reference writes into blocks with amax < 1e-15 (module doc, ref)


def best_index(x: np.ndarray) -> np.ndarray:
    """``best_index_int8(16, kvalues_iq4nl, x)`` elementwise: the nearest table index, ties to the higher.

    ``hi`` = 15 - the number of ``kvalues[1..14]`` that are ``> x``: the binary search's ``mu`` for x inside the
    table's range (14 comparisons, faster in NumPy than ``searchsorted``). Then ``x - kv[hi-1] < kv[hi] - x ?
    hi-1 : hi`` in float32, and the two clamps. A NaN fails every comparison, here as in ggml's binary search,
    and gets 15 (it reaches the table only through a NaN scale, e.g. from infinite weights ``x*x``).
    Returns uint8 of ``x``'s shape.
    """
    hi = np.full(x.shape, 15, dtype=np.uint8)
    for k in range(1, 15):
        hi -= x < _KV[k]
    lo = hi - np.uint8(1)
    idx = np.where(x - _KV.take(lo) < _KV.take(hi) - x, lo, hi)
    idx[x <= _KV[0]] = 0
    idx[x >= _KV[15]] = 15
    return idx


def _sums(x: np.ndarray, w: np.ndarray, L: np.ndarray):
    """``sumqx = sum (w*q)*x`` and ``sumq2 = sum (w*q)*q`` over the last axis, in element order.

    ``x``, ``w``: ``(nb, 32)``; ``L``: ``(nb, ..., 32)`` indices; sums have ``L``'s shape without the last axis.
    """
    q = _KV[L]
    extra = (slice(None),) + (None,) * (L.ndim - 2)
    sumqx = np.zeros(L.shape[:-1], dtype=np.float32)
    sumq2 = np.zeros(L.shape[:-1], dtype=np.float32)
    for j in range(L.shape[-1]):
        wq = w[:, j][extra] * q[..., j]
        sumqx += wq * x[:, j][extra]
        sumq2 += wq * q[..., j]
    return sumqx, sumq2


def quantize_iq4_nl_blocks(x: np.ndarray, ntry: int, qw: np.ndarray | None):
    """``quantize_row_iq4_nl_impl`` with one 32-block per super-block, on every block: ``(d, L)``.

    ``d`` float32 ``(n_blocks,)`` (before the f16 store), ``L`` uint8 indices ``(n_blocks, 32)``; blocks with
    ``amax < 1e-15`` get ``d = 0`` and, for ``ntry <= 0``, ``ZERO_BLOCK_INDEX`` (see the module doc).
    """
    nb = x.shape[0]
    if qw is None:
        w = x * x
    else:
        sigma2 = np.zeros(nb, dtype=np.float32)
        for j in range(x.shape[1]):
            sigma2 += x[:, j] * x[:, j]
        sigma2 *= np.float32(2.0 / 32)
        w = (qw * np.sqrt(sigma2[:, None] + x * x)).astype(np.float32)
    amax, mx = signed_absmax(x)
    tiny = amax < GROUP_MAX_EPS
    mx = np.where(tiny, np.float32(1), mx).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = (-mx if ntry > 0 else mx) / np.float32(KVALUES[0])
        iscale = np.float32(1) / d
        L = best_index(iscale[:, None] * x)
        sumqx, sumq2 = _sums(x, w, L)
        d = np.where(sumq2 > 0, sumqx / sumq2, np.float32(0)).astype(np.float32)
        if ntry > 0:
            best = d * sumqx
            tries = np.arange(-ntry, ntry + 1)
            ids = (tries + int(KVALUES[0])).astype(np.float32)[None, :] / mx[:, None]  # (nb, 2 ntry + 1)
            Lt = best_index(ids[:, :, None] * x[:, None, :])
            sqx, sq2 = _sums(x, w, Lt)
            for t in range(tries.size):
                take = (sq2[:, t] > 0) & (sqx[:, t] * sqx[:, t] > best * sq2[:, t])
                d = np.where(take, sqx[:, t] / sq2[:, t], d).astype(np.float32)
                best = np.where(take, d * sqx[:, t], best).astype(np.float32)
            d = np.where(tiny, np.float32(0), d).astype(np.float32)
            iscale = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
            L = best_index(iscale[:, None] * x)
        else:
            d = np.where(tiny, np.float32(0), d).astype(np.float32)
            L[tiny] = ZERO_BLOCK_INDEX
    return d, L


def ik2026_blocks(x: np.ndarray, ntry: int, qw: np.ndarray | None):
    """The snapshot's ``quantize_row_iq4_nl_impl`` (one 32-block per super-block), as built: ``(d, L)``.

    ggml-quants.c:14713-14881. Steps 1-3 of the module doc, with ``sigma2 = fmaf(x, x, sigma2)`` summed, the
    weights ``qw * sqrtf(fmaf(x, x, sigma2))``, the sums ``sumqx = fmaf(w*q, x, sumqx)``, ``sumq2 = fmaf(w*q,
    q, sumq2)`` and no ``sumq2 > 0`` guard on the first ``d = sumqx/sumq2`` (ggml-quants.c:14760). Then:

    * for ``itry = -ntry..ntry`` two tries, ``id = (itry - 127)/max`` and ``id = (itry + 113)/max``
      (ggml-quants.c:14765-14800), each taken when ``sumq2 > 0`` and ``sumqx**2 > best*sumq2``;
    * a greedy search of at most 1024 steps (ggml-quants.c:14802-14831): ``g_j = (d*w_j) * fmaf(-d, q_j, x_j)``;
      over the j with ``g > 0, L < 15`` (step ``(kv[L+1] - kv[L])/g``) or ``g < 0, L > 0`` (step ``(kv[L-1] -
      kv[L])/g``) take the first smallest step; ``sumqx = fmaf(w*x, dq, sumqx)``, ``sumq2 = fmaf(w, dq2,
      sumq2)`` with the integer differences ``dq``, ``dq2`` of the values and their squares; keep it when
      ``sumq2 > 0`` and ``sumqx**2 > best*sumq2`` (``d = sumqx/sumq2``, ``best = d*sumqx``), else stop.
    * With ``ntry > 0`` the indices are recomputed from ``id = d ? 1/d : 0`` (ggml-quants.c:14868-14874); with
      ``ntry = -1`` (``from_float`` and ``from_float_ref``) the searched ones are stored, and an ``amax < 1e-15``
      block keeps stale indices (written here as ``ZERO_BLOCK_INDEX``, as in ``ref``).

    ``best_index_iq4nl`` (ggml-quants.c:14706-14711) looks up ``(int)x + 127`` in a 241-entry table and then
    compares the two neighbours; for every finite x it gives :func:`best_index` (checked over all table cells and
    their boundaries), so that function serves.
    """
    nb = x.shape[0]
    F = np.float32
    if qw is None:
        w = x * x
    else:
        sigma2 = np.zeros(nb, dtype=F)
        for j in range(x.shape[1]):
            sigma2 = fp.fmaf(x[:, j], x[:, j], sigma2)
        sigma2 = sigma2 * F(2.0 / 32)
        w = (qw * np.sqrt(fp.fmaf(x, x, sigma2[:, None]))).astype(F)
    amax, mx = signed_absmax(x)
    tiny = amax < GROUP_MAX_EPS
    mx = np.where(tiny, F(1), mx).astype(F)

    def fused_sums(L):
        q = _KV[L]
        sqx = np.zeros(L.shape[:-1], dtype=F)
        sq2 = np.zeros(L.shape[:-1], dtype=F)
        for j in range(L.shape[-1]):
            wq = w[:, j] * q[:, j]
            sqx = fp.fmaf(wq, x[:, j], sqx)
            sq2 = fp.fmaf(wq, q[:, j], sq2)
        return sqx, sq2

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = ((-mx if ntry > 0 else mx) / F(KVALUES[0])).astype(F)
        L = best_index((F(1) / d)[:, None] * x)
        sumqx, sumq2 = fused_sums(L)
        d = (sumqx / sumq2).astype(F)
        best = (d * sumqx).astype(F)
        for itry in range(-ntry, ntry + 1):
            for top in (int(KVALUES[0]), int(KVALUES[15])):
                Lt = best_index((F(itry + top) / mx)[:, None] * x)
                tqx, tq2 = fused_sums(Lt)
                take = (tq2 > 0) & (tqx * tqx > best * tq2)
                d = np.where(take, tqx / tq2, d).astype(F)
                best = np.where(take, d * tqx, best).astype(F)
                sumqx = np.where(take, tqx, sumqx).astype(F)
                sumq2 = np.where(take, tq2, sumq2).astype(F)
                L = np.where(take[:, None], Lt, L)
        L = L.astype(np.int64)
        kv = KVALUES.astype(np.int64)
        active = ~tiny
        for _ in range(32 * 32):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            xa, wa, la, da = x[idx], w[idx], L[idx], d[idx]
            q = _KV[la]
            g = (da[:, None] * wa) * fp.fmaf(-da[:, None], q, xa)
            up = (g > 0) & (la < 15)
            down = (g < 0) & (la > 0)
            step = np.full(g.shape, np.inf, dtype=F)
            step[up] = (_KV[la[up] + 1] - q[up]) / g[up]
            step[down] = (_KV[la[down] - 1] - q[down]) / g[down]
            j = np.argmin(step, axis=1)  # the first smallest, as the strict '<' scan
            r = np.arange(idx.size)
            found = step[r, j] < np.inf
            lj = la[r, j]
            lnew = np.clip(lj + np.where(up[r, j], 1, -1), 0, 15)
            wj, xj = wa[r, j], xa[r, j]
            new_x = fp.fmaf(wj * xj, (kv[lnew] - kv[lj]).astype(F), sumqx[idx])
            new_2 = fp.fmaf(wj, (kv[lnew] * kv[lnew] - kv[lj] * kv[lj]).astype(F), sumq2[idx])
            keep = found & (new_2 > 0) & (new_x * new_x > best[idx] * new_2)
            kept = idx[keep]
            sumqx[kept] = new_x[keep]
            sumq2[kept] = new_2[keep]
            d[kept] = new_x[keep] / new_2[keep]
            best[kept] = d[kept] * new_x[keep]
            L[kept, j[keep]] = lnew[keep]
            active[idx[~keep]] = False
        d = np.where(tiny, F(0), d).astype(F)
        if ntry > 0:
            iscale = np.where(d != 0, F(1) / d, F(0)).astype(F)
            L = best_index(iscale[:, None] * x)
        else:
            L[tiny] = ZERO_BLOCK_INDEX
    return d, L.astype(np.uint8)


class IQ4_NL(BlockFormat):
    name = "iq4_nl"
    ggml_type = 20
    block_size = 32
    type_size = 18
    dtype = np.dtype([("d", "<u2"), ("qs", "u1", (16,))])
    vec_dot_type = "q8_0"
    domain = "d a finite f16; qs any"
    variants = {"ref": "ref", "model": "model", "x86": "ref"}
    # from_float_ref calls from_float (ggml-quants.c:14921-14924), which runs the impl with ntry = -1
    # (ggml-quants.c:14906-14919); ggml_quantize_chunk runs it with ntry = 7 (ggml-quants.c:14884-14904).
    ik2026_variants = {"ik2026_ref": "ik2026_x86", "ik2026_x86": "ik2026_x86", "ik2026_model": "ik2026_model"}
    takes_imatrix = True

    def quantize_blocks(self, x, variant, weights):
        out = np.empty(x.shape[0], dtype=self.dtype)
        if variant in ("ik2026_x86", "ik2026_model"):
            ntry = 7 if variant == "ik2026_model" else -1
            for i in range(0, x.shape[0], 512):
                w = None if weights is None or ntry < 0 else weights[i : i + 512]
                d, L = ik2026_blocks(x[i : i + 512], ntry, w)
                out["d"][i : i + 512] = fp.f32_to_f16(d)
                out["qs"][i : i + 512] = pack_nibbles(L)
            return out
        if variant == "model":
            # the 15 tries make 15x larger temporaries: work in pieces that stay in cache
            for i in range(0, x.shape[0], 512):
                w = None if weights is None else weights[i : i + 512]
                out[i : i + 512] = self.quantize_blocks_once(x[i : i + 512], 7, w)
            return out
        return self.quantize_blocks_once(x, -1, None)

    def quantize_blocks_once(self, x, ntry, weights):
        """One ``quantize_iq4_nl_blocks`` call packed into blocks."""
        d, L = quantize_iq4_nl_blocks(x, ntry, weights)
        out = np.empty(x.shape[0], dtype=self.dtype)
        out["d"] = fp.f32_to_f16_soft(d)
        out["qs"] = pack_nibbles(L)
        return out

    def dequantize_into(self, blocks, out):
        """In lanes (``q4_0.scaled_lanes_into``): byte j of ``qs`` looks up both of its table values at once
        (``KVALUE_PAIRS``); the low ones are lanes 0..3 (elements 0..15), the high ones lanes 4..7."""
        nb = blocks.shape[0]
        pairs = KVALUE_PAIRS.take(block_words(blocks, 2, 4).view(np.uint8)).view(np.int8).reshape(4, 4 * nb, 2)
        values = np.empty((8, 4 * nb), dtype=np.int8)
        np.copyto(values[:4], pairs[..., 0])
        np.copyto(values[4:], pairs[..., 1])
        scaled_lanes_into(values, fp.f16_to_f32(blocks["d"]), out)

    def random_blocks(self, rng, n_blocks):
        out = np.empty(n_blocks, dtype=self.dtype)
        out["d"] = fp.f32_to_f16_soft(rng.standard_normal(n_blocks).astype(np.float32) * np.float32(0.01))
        out["qs"] = rng.integers(0, 256, size=(n_blocks, 16), dtype=np.uint8)
        return out
