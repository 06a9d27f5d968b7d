"""Q4_1: 32 four-bit values with an f16 scale and an f16 minimum.

Block layout (20 bytes, ``block_q4_1`` in ggml-common.h):

======  =======  =====================================================================
offset  bytes    field
======  =======  =====================================================================
0       2        ``d``: f16 scale
2       2        ``m``: f16 minimum (the value of nibble 0)
4       16       ``qs[16]``: byte j holds element j in its low nibble, element j+16 in its high
======  =======  =====================================================================

Dequantization (``dequantize_row_q4_1``): ``y = nibble * f32(d) + f32(m)``. The product is exact (4 x 11
significant bits), so only the addition rounds, and a fused multiply-add would give the same float.

Quantization:

* ``ref`` (``quantize_row_q4_1_ref``, ggml-quants.c@676f0e71b; also the CPU ``from_float``): ``min``, ``max`` of
  the block (ggml's loop from ``FLT_MAX`` / ``-FLT_MAX`` with strict comparisons keeps the first of equal
  values, which matters only for the sign of a zero); ``d = (max - min) / 15``; ``id = 1/d`` (0 if ``d == 0``);
  ``q = min(15, (int8_t)((x - min)*id + 0.5f))``; store ``f16(d)``, ``f16(min)``.
* ``model`` (``quantize_q4_1``): ``ref`` without an imatrix. With one, ``quantize_row_q4_1_impl``: the weights
  ``qw_j * sqrtf(sigma2 + x_j^2)`` of ``q4_0.row_sigma2_weights`` and ``make_qkx3_quants(32, nmax=15, rmin=-0.9,
  rdelta=0.05, nstep=36, use_mad=false)`` (below); store ``f16(scale)`` and ``f16(-the_min)``.

Valid domain: ``d`` and ``m`` finite f16; every nibble is a value. Blocks whose ``max - min`` overflows, or
infinite inputs, convert a non-finite float to an integer in ggml (C undefined behaviour): outside the domain.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types import f16
from mlaref.reference.types._base import BlockFormat
from mlaref.reference.types.q4_0 import (
    lane_reduce,
    pack_lanes,
    pack_nibbles,
    row_sigma2_weights,
    to_lanes,
    unpack_nibbles,
)


def first_min_max(x: np.ndarray, lanes: np.ndarray | None = None):
    """``(min, max)`` per block as ggml's ``if (v < min) min = v; if (v > max) max = v;`` loop.

    Numerically the plain minimum and maximum; the loop keeps the first of equal values, so a zero extreme
    takes the sign of the first element equal to it. NumPy's reductions may return either zero, so blocks
    whose extreme is 0 get the sign of their first zero-valued element. The reductions run on
    ``lanes = q4_0.to_lanes(x)`` (passed in when the caller has it).
    """
    if lanes is None:
        lanes = to_lanes(x)
    mn = lane_reduce(np.minimum, lanes)
    mx = lane_reduce(np.maximum, lanes)
    for ext in (mn, mx):
        z = np.flatnonzero(ext == 0)
        if z.size:
            first = (x[z] == 0).argmax(axis=1)
            ext[z] = x[z, first]
    return mn, mx


def make_qkx3_quants(x: np.ndarray, nmax: int, w: np.ndarray, rmin=-0.9, rdelta=0.05, nstep=36):
    """ggml's ``make_qkx3_quants(n=32, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad=false)``.

    Per block, all sums in float, element order:

    1. ``min``, ``max`` by the strict-comparison loop from ``x[0]``; ``sum_w = sum w``, ``sum_x = sum w*x``.
       ``min = 0`` if ``min > 0``. If ``max <= min``: ``L = 0``, scale 0, ``the_min = -min``.
    2. ``iscale = nmax/(max - min)``, ``scale = 1/iscale``, ``L = clamp(nearest_int(iscale*(x - min)), 0, nmax)``,
       ``best_mad = sum w*((scale*L + min) - x)^2``.
    3. For ``is = 0..nstep``: ``iscale = (rmin + rdelta*is + nmax)/(max - min)``, ``Laux`` likewise from
       ``x - min``; ``sum_l``, ``sum_l2``, ``sum_xl`` of ``w*l``, ``w*l*l``, ``w*l*x``;
       ``D = sum_w*sum_l2 - sum_l*sum_l``; if ``D > 0``: ``this_scale = (sum_w*sum_xl - sum_x*sum_l)/D``,
       ``this_min = (sum_l2*sum_x - sum_l*sum_xl)/D``, and if ``this_min > 0`` then ``this_min = 0``,
       ``this_scale = sum_xl/sum_l2``; ``mad = sum w*((this_scale*l + this_min) - x)^2``; taken when
       ``mad < best_mad``, and then ``min = this_min``.

    Note the last point: ggml updates ``min`` when a try is taken, and later tries use the new ``min`` both in
    ``max - min`` and in ``x - min``. The tries therefore run one after the other (each vectorised over the
    blocks), not all at once. Returns float32 ``scale``, float32 ``the_min`` (= ``-min``) and uint8 ``L``.
    """
    nb, n = x.shape
    mn = x[:, 0].copy()
    mx = x[:, 0].copy()
    sum_w = w[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        xi = x[:, i]
        mn = np.where(xi < mn, xi, mn)
        mx = np.where(xi > mx, xi, mx)
        sum_w += w[:, i]
        sum_x += w[:, i] * xi
    mn = np.where(mn > 0, np.float32(0), mn).astype(np.float32)
    flat = mx <= mn  # all elements equal and <= 0: ggml returns scale 0, L = 0, the_min = -min
    mn_flat = mn
    mn = np.where(flat, mx - np.float32(1), mn).astype(np.float32)  # keeps the arithmetic finite; reset below

    def levels(iscale, mn):
        lv = fp.nearest_int(iscale[:, None] * (x - mn[:, None]))
        return np.clip(lv, 0, nmax, out=lv).astype(np.float32)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = np.float32(nmax) / (mx - mn)
        scale = (np.float32(1) / iscale).astype(np.float32)
        L = levels(iscale, mn)
        best_mad = np.zeros(nb, dtype=np.float32)
        for i in range(n):
            diff = (scale * L[:, i] + mn) - x[:, i]
            best_mad += w[:, i] * (diff * diff)
        for step in range(nstep + 1):
            num = (np.float32(rmin) + np.float32(rdelta) * np.float32(step)) + np.float32(nmax)
            laux = levels(num / (mx - mn), mn)
            sum_l = np.zeros(nb, dtype=np.float32)
            sum_l2 = np.zeros(nb, dtype=np.float32)
            sum_xl = np.zeros(nb, dtype=np.float32)
            for i in range(n):
                wl = w[:, i] * laux[:, i]
                sum_l += wl
                sum_l2 += wl * laux[:, i]
                sum_xl += wl * x[:, i]
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, np.float32(0), this_min).astype(np.float32)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale).astype(np.float32)
            mad = np.zeros(nb, dtype=np.float32)
            for i in range(n):
                diff = (this_scale * laux[:, i] + this_min) - x[:, i]
                mad += w[:, i] * (diff * diff)
            take = (D > 0) & (mad < best_mad) & ~flat
            best_mad = np.where(take, mad, best_mad)
            scale = np.where(take, this_scale, scale)
            mn = np.where(take, this_min, mn)
            L = np.where(take[:, None], laux, L)
    L = L.astype(np.uint8)
    L[flat] = 0
    scale = np.where(flat, np.float32(0), scale).astype(np.float32)
    mn = np.where(flat, mn_flat, mn)
    return scale, (-mn).astype(np.float32), L


def min_quantize(x: np.ndarray, levels: int):
    """The reference step of q4_1 (``levels = 15``) and q5_1 (31): ``(min, d, q)``.

    ``d = (max - min)/levels``, ``id = 1/d`` (0 if d is 0), ``q = (uint8_t)((x - min)*id + 0.5f)``, clamped to 15
    for q4_1 only (as in ggml). ``q`` comes back as uint8 lanes ``(8, n_blocks, 4)`` (``q4_0.to_lanes``).
    """
    lanes = to_lanes(x)
    mn, mx = first_min_max(x, lanes)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        d = (mx - mn) / np.float32(levels)
        iscale = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        flat = lanes.reshape(8, -1)  # (8, 4 n_blocks): long contiguous rows for NumPy's inner loops
        flat -= np.repeat(mn, 4)
        flat *= np.repeat(iscale, 4)
        flat += np.float32(0.5)
        q = lanes.astype(np.uint8)  # truncation: (x - min)*id + 0.5 is in [0.5, levels + 1) when finite
    if levels == 15:
        np.minimum(q, np.uint8(15), out=q)
    return mn, d, q


class Q4_1(BlockFormat):
    name = "q4_1"
    ggml_type = 3
    block_size = 32
    type_size = 20
    dtype = np.dtype([("d", "<u2"), ("m", "<u2"), ("qs", "u1", (16,))])
    vec_dot_type = "q8_1"
    domain = "d and m finite f16; qs any"
    variants = {"ref": "ref", "model": "model", "x86": "ref"}
    takes_imatrix = True

    def block_weights(self, x, imatrix):
        return None if imatrix is None else row_sigma2_weights(x, imatrix, self.block_size)

    def quantize_blocks(self, x, variant, weights):
        out = np.empty(x.shape[0], dtype=self.dtype)
        if variant == "model" and weights is not None:
            d, the_min, L = make_qkx3_quants(x, 15, weights)
            out["d"] = f16.encode(d, f16c=False)
            out["m"] = f16.encode(-the_min, f16c=False)
            out["qs"] = pack_nibbles(L)
            return out
        mn, d, q = min_quantize(x, 15)
        out["d"] = f16.encode(d, f16c=False)
        out["m"] = f16.encode(mn, f16c=False)
        out["qs"] = pack_lanes(q)
        return out

    def dequantize_blocks(self, blocks):
        out = np.empty((blocks.shape[0], 32), dtype=np.float32)
        self.dequantize_into(blocks, out)
        return out

    def dequantize_into(self, blocks, out):
        np.multiply(unpack_nibbles(blocks["qs"]), f16.decode(blocks["d"])[:, None], out=out)
        out += f16.decode(blocks["m"])[:, None]

    def random_blocks(self, rng, n_blocks):
        out = np.empty(n_blocks, dtype=self.dtype)
        out["d"] = f16.encode(np.abs(rng.standard_normal(n_blocks)).astype(np.float32) * np.float32(0.01), False)
        out["m"] = f16.encode(rng.standard_normal(n_blocks).astype(np.float32) * np.float32(-0.1), False)
        out["qs"] = rng.integers(0, 256, size=(n_blocks, 16), dtype=np.uint8)
        return out
