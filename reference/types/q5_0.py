"""Q5_0: 32 five-bit values with an offset of 16 and one f16 scale.

Block layout (22 bytes, ``block_q5_0`` in ggml-common.h):

======  =======  =====================================================================
offset  bytes    field
======  =======  =====================================================================
0       2        ``d``: f16 scale
2       4        ``qh[4]``: a little-endian uint32 whose bit j is bit 4 of element j
6       16       ``qs[16]``: low 4 bits; byte j holds element j (low nibble) and j+16 (high)
======  =======  =====================================================================

Dequantization (``dequantize_row_q5_0``): ``y = ((nibble | bit4 << 4) - 16) * f32(d)``, exact in float32.

Quantization:

* ``ref`` (``quantize_row_q5_0_ref``, ggml-quants.c@676f0e71b; also the CPU ``from_float``): ``max`` = the signed
  x of largest ``|x|`` (first on ties, +0 for an all-zero block); ``d = max / -16``; ``id = 1/d`` (0 if
  ``d == 0``); ``q = min(31, (int8_t)(x*id + 16.5f))``; store ``f16(d)``.
* ``model`` (``quantize_q5_0``): ``ref`` without an imatrix; with one, ``quantize_row_q5_0_impl``: the weights of
  ``q4_0.row_sigma2_weights`` and ``d = make_qx_quants(32, nmax=16, rmse_type=1, w)``, ``L = l + 16``.

Valid domain: ``d`` a finite f16; every 5-bit value is a value. Non-finite ``x*id`` (infinite inputs, or
``|max| < 16 / FLT_MAX``) is C undefined behaviour in ggml: outside the domain.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types import _ik2026 as ik
from mlaref.reference.types.q4_0 import (
    LegacyFormat,
    block_words,
    nibble_lanes,
    offset_quantize,
    pack_lanes,
    pack_nibbles,
    qx_blocks,
    scaled_lanes_into,
)


def pack_qh(q: np.ndarray) -> np.ndarray:
    """uint8 ``(n_blocks, 32)`` 5-bit values -> ``qh[4]``: bit 4 of element j at bit j of a little-endian uint32."""
    return np.packbits((q >> 4) & 1, axis=1, bitorder="little")


def pack_qh_lanes(q: np.ndarray) -> np.ndarray:
    """``pack_qh`` of uint8 lanes ``(8, n_blocks, 4)`` (``q4_0.to_lanes``).

    Per group of four lanes (one little-endian uint32), bit 4 of each byte is moved to bits 0..3 of a nibble;
    nibble k of the block's uint32 ``qh`` is group k (elements 4k .. 4k+3). The bits, at 8i after the first
    shift, are gathered by one multiplication (the inverse of ``q5_lanes``' spread): in ``hb * 0x01020408`` bit
    8i meets the factor ``2**(24 - 7i)`` at bit 24 + i, and every other product lands below bit 24 or above bit 31.
    """
    hb = q.view(np.uint32).reshape(8, -1) >> np.uint32(4)
    hb &= np.uint32(0x01010101)  # bit 4 of byte i at bit 8i
    hb *= np.uint32(0x01020408)
    hb >>= np.uint32(24)
    hb <<= np.arange(0, 32, 4, dtype=np.uint32)[:, None]
    return np.bitwise_or.reduce(hb, axis=0).view(np.uint8).reshape(-1, 4)


def q5_lanes(blocks: np.ndarray, qh_offset: int) -> np.ndarray:
    """The 5-bit values of q5 blocks (``qh[4]`` at ``qh_offset``, ``qs[16]`` next) as uint32 lanes ``(8, n_blocks)``.

    Lane k holds elements 4k .. 4k+3, one per byte (``q4_0.nibble_lanes``); their bit 4 is nibble k of the
    little-endian ``qh``. The nibble ``n`` is spread to one bit per byte by ``n * 0x00204081 = n + (n << 7) +
    (n << 14) + (n << 21)``: the four copies do not overlap, and bit i of the copy shifted by 7i sits at bit 8i.
    """
    w = block_words(blocks, qh_offset, 5)  # qh, then the 4 words of qs
    lanes = nibble_lanes(w[1:])
    qh = w[0]
    hb = np.empty_like(qh)
    for k in range(8):
        np.right_shift(qh, np.uint32(4 * k), out=hb)
        hb &= np.uint32(0xF)
        hb *= np.uint32(0x00204081)
        hb &= np.uint32(0x01010101)
        hb <<= np.uint32(4)
        lanes[k] |= hb
    return lanes


class Q5_0(LegacyFormat):
    name = "q5_0"
    ggml_type = 6
    block_size = 32
    type_size = 22
    dtype = np.dtype([("d", "<u2"), ("qh", "u1", (4,)), ("qs", "u1", (16,))])
    vec_dot_type = "q8_0"
    domain = "d a finite f16; qh, qs any"
    # The snapshot's quantize_row_q5_0_ref is upstream's and is also its from_float; only the imatrix path
    # (quantize_row_q5_0_impl, ggml-quants.c:3452-3489) runs the new make_qx_quants (_ik2026).
    ik2026_imatrix_modelled = True

    def quantize_blocks(self, x, variant, weights):
        out = np.empty(x.shape[0], dtype=self.dtype)
        if variant == "ik2026_model" and weights is not None:
            d, L = ik.make_qx_quants(np.ascontiguousarray(x.T), 16, np.ascontiguousarray(weights.T))
            q = np.ascontiguousarray(L.T).view(np.uint8)
            out["d"] = fp.f32_to_f16_soft(d)
            out["qh"] = pack_qh(q)
            out["qs"] = pack_nibbles(q & 0x0F)
            return out
        if variant == "model" and weights is not None:
            d, q = qx_blocks(x, 16, weights)
            out["d"] = fp.f32_to_f16_soft(d)
            out["qh"] = pack_qh(q)
            out["qs"] = pack_nibbles(q & 0x0F)
            return out
        d, q = offset_quantize(x, 16)
        out["d"] = fp.f32_to_f16_soft(d)
        out["qh"] = pack_qh_lanes(q)
        out["qs"] = pack_lanes(q)
        return out

    def dequantize_into(self, blocks, out):
        lanes = q5_lanes(blocks, 2)
        lanes += np.uint32(0x70707070)  # (b + 0x70) ^ 0x80 is b - 16 as an int8 byte for b in 0..31; no carries
        lanes ^= np.uint32(0x80808080)
        scaled_lanes_into(lanes.view(np.int8), fp.f16_to_f32(blocks["d"]), out)

    def random_blocks(self, rng, n_blocks):
        out = np.empty(n_blocks, dtype=self.dtype)
        out["d"] = fp.f32_to_f16_soft(rng.standard_normal(n_blocks).astype(np.float32) * np.float32(0.01))
        out["qh"] = rng.integers(0, 256, size=(n_blocks, 4), dtype=np.uint8)
        out["qs"] = rng.integers(0, 256, size=(n_blocks, 16), dtype=np.uint8)
        return out
