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
  rdelta=0.05, nstep=36, use_mad=false)`` (``qkx3_blocks``); store ``f16(scale)`` and ``f16(-the_min)``.
* ``ik2026_model`` with an imatrix (the 2026 snapshot's ``quantize_row_q4_1_impl``, ggml-quants.c:3407-3435): the
  same, with the weights of ``_ik2026.legacy_row_weights`` and the snapshot's float64 ``make_qkx3_quants``
  (closed-form error, then a greedy search; :func:`._ik2026.make_qkx3_quants`).

Valid domain: ``d`` and ``m`` finite f16; every nibble is a value. Blocks whose ``max - min`` overflows, or
infinite inputs, convert a non-finite float to an integer in ggml (C undefined behaviour): outside the domain.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types import _ik2026 as ik
from mlaref.reference.types import _quant_math as qm
from mlaref.reference.types.q4_0 import (
    block_words,
    clamp_u8,
    lane_reduce,
    nibble_lanes,
    pack_lanes,
    LegacyFormat,
    pack_nibbles,
    scaled_lanes_into,
    to_lanes,
)


def first_min_max(x: np.ndarray, lanes: np.ndarray | None = None):
    """``(min, max)`` per block as ggml's ``if (v < min) min = v; if (v > max) max = v;`` loop.

    Numerically the plain minimum and maximum; the loop keeps the first of equal values, so a zero extreme
    takes the sign of the first element equal to it. NumPy's reductions may return either zero, so blocks
    whose extreme is 0 get the sign of their first zero-valued element. The reductions run on
    ``lanes = q4_0.to_lanes(x)`` (passed in when the caller has it).

    Not ``_quant_math``'s min/max scan: the reference quantizers start from ``FLT_MAX`` / ``-FLT_MAX``, the
    solvers from ``x[0]`` (they differ when ``x[0]`` is NaN).
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


def qkx3_blocks(x: np.ndarray, nmax: int, w: np.ndarray, ik2026: bool = False):
    """``make_qkx3_quants(32, nmax, x, w, L, &the_min, Laux, -0.9f, 0.05f, 36, false)`` of ``quantize_row_q4_1_impl`` /
    ``quantize_row_q5_1_impl`` on blocks ``(n_blocks, 32)`` -> (scale, the_min, L uint8 ``(n_blocks, 32)``).

    The solver is :func:`._quant_math.make_qkx_quants` (upstream), or with ``ik2026`` the snapshot's
    :func:`._ik2026.make_qkx3_quants`; both work on transposed groups.
    """
    solver = ik.make_qkx3_quants if ik2026 else qm.make_qkx_quants
    scale, the_min, L = solver(np.ascontiguousarray(x.T), np.ascontiguousarray(w.T), nmax, -0.9, 0.05, 36)
    return scale, the_min, np.ascontiguousarray(L.T)


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
        clamp_u8(q, 15)
    return mn, d, q


class Q4_1(LegacyFormat):
    name = "q4_1"
    ggml_type = 3
    block_size = 32
    type_size = 20
    dtype = np.dtype([("d", "<u2"), ("m", "<u2"), ("qs", "u1", (16,))])
    vec_dot_type = "q8_1"
    domain = "d and m finite f16; qs any"

    # The snapshot's imatrix path (quantize_row_q4_1_impl, ggml-quants.c:3407-3435) runs its own make_qkx3_quants.
    ik2026_imatrix_modelled = True

    def quantize_blocks(self, x, variant, weights):
        out = np.empty(x.shape[0], dtype=self.dtype)
        if variant in ("model", "ik2026_model") and weights is not None:
            d, the_min, L = qkx3_blocks(x, 15, weights, ik2026=variant == "ik2026_model")
            out["d"] = fp.f32_to_f16_soft(d)
            out["m"] = fp.f32_to_f16_soft(-the_min)
            out["qs"] = pack_nibbles(L)
            return out
        mn, d, q = min_quantize(x, 15)
        out["d"] = fp.f32_to_f16_soft(d)
        out["m"] = fp.f32_to_f16_soft(mn)
        out["qs"] = pack_lanes(q)
        return out

    def dequantize_into(self, blocks, out):
        lanes = nibble_lanes(block_words(blocks, 4, 4))
        scaled_lanes_into(lanes.view(np.uint8), fp.f16_to_f32(blocks["d"]), out, fp.f16_to_f32(blocks["m"]))

    def random_blocks(self, rng, n_blocks):
        out = np.empty(n_blocks, dtype=self.dtype)
        out["d"] = fp.f32_to_f16_soft(np.abs(rng.standard_normal(n_blocks)).astype(np.float32) * np.float32(0.01))
        out["m"] = fp.f32_to_f16_soft(rng.standard_normal(n_blocks).astype(np.float32) * np.float32(-0.1))
        out["qs"] = rng.integers(0, 256, size=(n_blocks, 16), dtype=np.uint8)
        return out
