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

from mlaref.reference.types import f16
from mlaref.reference.types._base import BlockFormat
from mlaref.reference.types.q4_0 import (
    make_qx_quants,
    offset_quantize,
    pack_lanes,
    pack_nibbles,
    row_sigma2_weights,
    unpack_nibbles,
)


def pack_qh(q: np.ndarray) -> np.ndarray:
    """uint8 ``(n_blocks, 32)`` 5-bit values -> ``qh[4]``: bit 4 of element j at bit j of a little-endian uint32."""
    return np.packbits((q >> 4) & 1, axis=1, bitorder="little")


def pack_qh_lanes(q: np.ndarray) -> np.ndarray:
    """``pack_qh`` of uint8 lanes ``(8, n_blocks, 4)`` (``q4_0.to_lanes``).

    Per group of four lanes (one little-endian uint32), bit 4 of each byte is moved to bits 0..3 of a nibble;
    nibble k of the block's uint32 ``qh`` is group k (elements 4k .. 4k+3).
    """
    hb = (q.view(np.uint32).reshape(8, -1) >> np.uint32(4)) & np.uint32(0x01010101)  # lane i's bit at 8i
    nib = (hb | (hb >> np.uint32(7)) | (hb >> np.uint32(14)) | (hb >> np.uint32(21))) & np.uint32(0xF)
    qh = nib[0].copy()
    for k in range(1, 8):
        qh |= nib[k] << np.uint32(4 * k)
    return qh.view(np.uint8).reshape(-1, 4)


def unpack_qh(qh: np.ndarray) -> np.ndarray:
    """``qh[4]`` -> uint8 ``(n_blocks, 32)`` holding 16 where bit j is set, else 0."""
    return np.unpackbits(qh, axis=1, bitorder="little") << 4


class Q5_0(BlockFormat):
    name = "q5_0"
    ggml_type = 6
    block_size = 32
    type_size = 22
    dtype = np.dtype([("d", "<u2"), ("qh", "u1", (4,)), ("qs", "u1", (16,))])
    vec_dot_type = "q8_0"
    domain = "d a finite f16; qh, qs any"
    variants = {"ref": "ref", "model": "model", "x86": "ref"}
    takes_imatrix = True

    def block_weights(self, x, imatrix):
        return None if imatrix is None else row_sigma2_weights(x, imatrix, self.block_size)

    def quantize_blocks(self, x, variant, weights):
        out = np.empty(x.shape[0], dtype=self.dtype)
        if variant == "model" and weights is not None:
            d, q = make_qx_quants(x, 16, weights)
            out["d"] = f16.encode(d, f16c=False)
            out["qh"] = pack_qh(q)
            out["qs"] = pack_nibbles(q & 0x0F)
            return out
        d, q = offset_quantize(x, 16)
        out["d"] = f16.encode(d, f16c=False)
        out["qh"] = pack_qh_lanes(q)
        out["qs"] = pack_lanes(q)
        return out

    def dequantize_blocks(self, blocks):
        d = f16.decode(blocks["d"])
        q = (unpack_nibbles(blocks["qs"]) | unpack_qh(blocks["qh"])).view(np.int8) - np.int8(16)
        return q * d[:, None]

    def random_blocks(self, rng, n_blocks):
        out = np.empty(n_blocks, dtype=self.dtype)
        out["d"] = f16.encode(rng.standard_normal(n_blocks).astype(np.float32) * np.float32(0.01), f16c=False)
        out["qh"] = rng.integers(0, 256, size=(n_blocks, 4), dtype=np.uint8)
        out["qs"] = rng.integers(0, 256, size=(n_blocks, 16), dtype=np.uint8)
        return out
