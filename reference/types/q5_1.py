"""Q5_1: 32 five-bit values with an f16 scale and an f16 minimum.

Block layout (24 bytes, ``block_q5_1`` in ggml-common.h):

======  =======  =====================================================================
offset  bytes    field
======  =======  =====================================================================
0       2        ``d``: f16 scale
2       2        ``m``: f16 minimum
4       4        ``qh[4]``: a little-endian uint32 whose bit j is bit 4 of element j
8       16       ``qs[16]``: low 4 bits; byte j holds element j (low nibble) and j+16 (high)
======  =======  =====================================================================

Dequantization (``dequantize_row_q5_1``): ``y = (nibble | bit4 << 4) * f32(d) + f32(m)``; the product is exact,
only the addition rounds (so FMA or not gives the same float).

Quantization:

* ``ref`` (``quantize_row_q5_1_ref``, ggml-quants.c@676f0e71b; also the CPU ``from_float``): ``min``, ``max`` as
  in q4_1; ``d = (max - min) / 31``; ``id = 1/d`` (0 if ``d == 0``); ``q = (uint8_t)((x - min)*id + 0.5f)``
  with no clamp (the product stays below 31.5 for finite inputs); store ``f16(d)``, ``f16(min)``.
* ``model`` (``quantize_q5_1``): ``ref`` without an imatrix; with one, ``quantize_row_q5_1_impl``:
  ``make_qkx3_quants(32, nmax=31, rmin=-0.9, rdelta=0.05, nstep=36)`` with the weights of
  ``q4_0.row_sigma2_weights``; store ``f16(scale)``, ``f16(-the_min)``.
* ``ik2026_model`` with an imatrix (the 2026 snapshot's ``quantize_row_q5_1_impl``, ggml-quants.c:3506-3542): the
  same with ``nmax = 31``, the weights of ``_ik2026.legacy_row_weights`` and :func:`._ik2026.make_qkx3_quants`.

Valid domain: ``d``, ``m`` finite f16; every 5-bit value is a value.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types.q4_0 import LegacyFormat, pack_lanes, scaled_lanes_into
from mlaref.reference.types.q4_1 import min_quantize, qkx3_blocks
from mlaref.reference.types.q5_0 import pack_qh_lanes, q5_lanes


class Q5_1(LegacyFormat):
    name = "q5_1"
    ggml_type = 7
    block_size = 32
    type_size = 24
    dtype = np.dtype([("d", "<u2"), ("m", "<u2"), ("qh", "u1", (4,)), ("qs", "u1", (16,))])
    vec_dot_type = "q8_1"
    domain = "d and m finite f16; qh, qs any"

    # The snapshot's imatrix path (quantize_row_q5_1_impl, ggml-quants.c:3506-3542) runs its own make_qkx3_quants.
    ik2026_imatrix_modelled = True

    def quantize_blocks(self, x, variant, weights):
        out = np.empty(x.shape[0], dtype=self.dtype)
        if variant in ("model", "ik2026_model") and weights is not None:
            d, the_min, q = qkx3_blocks(x, 31, weights, ik2026=variant == "ik2026_model")
            mn = -the_min
            q = q.reshape(-1, 8, 4).transpose(1, 0, 2)  # as lanes (8, n_blocks, 4)
        else:
            mn, d, q = min_quantize(x, 31)
        out["d"] = fp.f32_to_f16_soft(d)
        out["m"] = fp.f32_to_f16_soft(mn)
        out["qh"] = pack_qh_lanes(q)
        out["qs"] = pack_lanes(q)
        return out

    def dequantize_into(self, blocks, out):
        lanes = q5_lanes(blocks, 4)
        scaled_lanes_into(lanes.view(np.uint8), fp.f16_to_f32(blocks["d"]), out, fp.f16_to_f32(blocks["m"]))

    def random_blocks(self, rng, n_blocks):
        out = np.empty(n_blocks, dtype=self.dtype)
        out["d"] = fp.f32_to_f16_soft(np.abs(rng.standard_normal(n_blocks)).astype(np.float32) * np.float32(0.01))
        out["m"] = fp.f32_to_f16_soft(rng.standard_normal(n_blocks).astype(np.float32) * np.float32(-0.1))
        out["qh"] = rng.integers(0, 256, size=(n_blocks, 4), dtype=np.uint8)
        out["qs"] = rng.integers(0, 256, size=(n_blocks, 16), dtype=np.uint8)
        return out
