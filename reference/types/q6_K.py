"""Q6_K: 256 values as 16 sub-blocks of 16 six-bit values with int8 scales and one f16 super-scale.

Block layout (210 bytes, ``block_q6_K`` in ggml-common.h):

======  =======  ===================================================================
offset  bytes    field
======  =======  ===================================================================
0       128      ``ql[128]``: low 4 bits of the 6-bit codes
128     64       ``qh[64]``: high 2 bits of the 6-bit codes
192     16       ``scales[16]``: int8 sub-block scales ``sc_b``
208     2        ``d``: f16 super-scale
======  =======  ===================================================================

Code of element ``128h + 32k + l`` (half h = 0..1, quarter k = 0..3, l = 0..31), with ``ql``/``qh`` offset by
``64h`` / ``32h``: low nibble = ``ql[l + 32(k & 1)]`` shifted right by ``4(k >> 1)``; high two bits =
``qh[l] >> 2k``; its scale is ``scales[8h + 2k + l/16]``.

Dequantization (``dequantize_row_q6_K``), in float32, each product rounded once, left to right::

    y = (f32(d) * sc_b) * (code - 32)

Quantization:

* ``ref`` (``quantize_row_q6_K_ref``): per 16-sub-block, ``scale_b`` and codes from ``make_qx_quants(16, nmax =
  32, rmse_type = 1)`` (weights ``x**2``); ``max_scale`` = the signed scale of largest magnitude (first on ties);
  if ``|max_scale| < 1e-15`` the block is all zero bytes. Otherwise ``iscale = -128/max_scale``, ``d =
  f16(1/iscale)``, ``sc_b = min(127, nearest_int(iscale*scale_b))``, and every sub-block with ``f32(d)*sc_b !=
  0`` is re-quantized as ``clamp(nearest_int(x / (f32(d)*sc_b)), -32, 31) + 32``; the others keep the codes of
  ``make_qx_quants`` (0 for an all-zero sub-block, so those dequantize to ``-32 * 0``).
* ``x86``: upstream ggml's CPU ``from_float`` (``quantize_row_q6_K``, ggml-cpu/quants.c) calls ``ref``.
* ``model`` (``quantize_q6_K``): ``ref`` without an imatrix; with one, ``quantize_row_q6_K_impl``, which is
  ``ref`` with the imatrix values themselves as the ``make_qx_quants`` weights.

Reproduces ggml-quants.c of the upstream ggml that ggml-python 0.0.45 vendors; ik_llama.cpp@676f0e71b has the
same code. No step is fused into an FMA (see :mod:`._quant_math`).

Valid domain: ``d`` a finite f16; every ``ql``/``qh``/``scales`` byte pattern (ggml's quantizer writes scales in
[-128, 127] and ``d`` of either sign). Dequantize is defined for every byte pattern.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types import _ik2026 as ik
from mlaref.reference.types import _quant_math as qm
from mlaref.reference.types._base import BlockFormat
from mlaref.reference.types.q4_0 import block_words_rows

F32 = np.float32


class Q6_K(BlockFormat):
    name = "q6_K"
    ggml_type = 14
    block_size = 256
    type_size = 210
    dtype = np.dtype([("ql", "u1", (128,)), ("qh", "u1", (64,)), ("scales", "i1", (16,)), ("d", "<u2")])
    vec_dot_type = "q8_K"
    domain = "d a finite f16; any ql, qh and scales bytes"
    variants = {"ref": "ref", "model": "model", "x86": "ref"}
    # from_float = quantize_row_q6_K_ref (ggml-quants.c:3254-3258); ggml_quantize_chunk = quantize_row_q6_K_impl
    # (ggml-quants.c:3260-3342), the same steps with qw passed straight to make_qx_quants (ggml-quants.c:3284).
    ik2026_variants = {"ik2026_ref": "ik2026_ref", "ik2026_x86": "ik2026_ref", "ik2026_model": "ik2026_model"}
    takes_imatrix = True
    chunk_blocks = 256  # keeps the solvers' (value, sub-block) work arrays in L2 cache: ~1.7x over 4096
    dequantize_chunk_blocks = 512

    def quantize_blocks(self, x, variant, weights):
        nb = x.shape[0]
        xs = np.ascontiguousarray(x.reshape(nb * 16, 16).T)  # (16, nb*16): sub-block 16i + b in column 16i + b
        qw = None
        if variant in ("model", "ik2026_model") and weights is not None:
            qw = np.ascontiguousarray(weights.reshape(nb * 16, 16).T)
        ik2026 = variant.startswith("ik2026")
        scales, L = (ik.make_qx_quants if ik2026 else qm.make_qx_quants)(xs, 32, qw)
        scales = scales.reshape(nb, 16)
        max_scale = qm.first_absmax(np.ascontiguousarray(scales.T))
        zero = np.abs(max_scale) < qm.GROUP_MAX_EPS
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            iscale = F32(-128) / max_scale
            d = fp.f32_to_f16_soft(F32(1) / iscale)
            if ik2026:  # nearest_int(iscale*scales[ib]) with the add fused (ggml-quants.c:3188)
                sc = np.minimum(127, ik.nearest_int_fma(iscale[:, None], scales)).astype(np.int8)
            else:
                sc = np.minimum(127, fp.nearest_int(iscale[:, None] * scales)).astype(np.int8)
            D = (fp.f16_to_f32(d)[:, None] * sc.astype(F32)).reshape(-1)
            Lr = np.clip(fp.nearest_int(xs / D[None, :]), -32, 31) + 32
        L = np.where((D != 0)[None, :], Lr, L).astype(np.uint8)
        # (nb, 2 halves, 4 quarters, 32): element 128h + 32k + l.
        Lb = L.T.reshape(nb, 2, 4, 32)
        ql = np.empty((nb, 2, 2, 32), dtype=np.uint8)
        ql[:, :, 0] = (Lb[:, :, 0] & 0xF) | ((Lb[:, :, 2] & 0xF) << 4)
        ql[:, :, 1] = (Lb[:, :, 1] & 0xF) | ((Lb[:, :, 3] & 0xF) << 4)
        qh = (Lb[:, :, 0] >> 4) | ((Lb[:, :, 1] >> 4) << 2) | ((Lb[:, :, 2] >> 4) << 4) | ((Lb[:, :, 3] >> 4) << 6)
        out = np.zeros(nb, dtype=self.dtype)
        keep = ~zero
        out["ql"][keep] = ql.reshape(nb, 128)[keep]
        out["qh"][keep] = qh.reshape(nb, 64)[keep]
        out["scales"][keep] = sc[keep]
        out["d"] = np.where(zero, fp.f32_to_f16_soft(F32(0)), d)
        return out

    def dequantize_into(self, blocks, out):
        """In element order: byte ``4g + j`` of quarter k of half h holds element ``128h + 32k + 4g + j``, whose low
        nibble is in word ``16h + 8(k & 1) + g`` of ``ql`` (shifted by ``4(k >> 1)``) and whose high bits are in
        word ``8h + g`` of ``qh`` (shifted by ``2k``). The codes are built as uint32 words ``[block, h, k, g]``, so
        their bytes are the elements in row order: one int8 -> f32 pass into ``out``, then one multiply by the 16
        sub-block scales of each block broadcast over 16 values."""
        nb = blocks.shape[0]
        ql = block_words_rows(blocks, 0, 32).reshape(nb, 2, 2, 8)  # [block, h, k & 1, g]
        qh = block_words_rows(blocks, 128, 16).reshape(nb, 2, 1, 8)  # [block, h, 1, g]
        codes = np.empty((nb, 2, 4, 8), dtype=np.uint32)  # [block, h, k, g]
        by_k = codes.reshape(nb, 2, 2, 2, 8)  # [block, h, k >> 1, k & 1, g]
        np.bitwise_and(ql, np.uint32(0x0F0F0F0F), out=by_k[:, :, 0])
        np.right_shift(ql, np.uint32(4), out=by_k[:, :, 1])
        by_k[:, :, 1] &= np.uint32(0x0F0F0F0F)
        hb = np.right_shift(qh, np.arange(0, 8, 2, dtype=np.uint32)[:, None])  # [block, h, k, g]
        hb &= np.uint32(0x03030303)
        hb <<= np.uint32(4)
        codes |= hb
        codes += np.uint32(0x60606060)  # (b + 0x60) ^ 0x80 is b - 32 as an int8 byte for b in 0..63; no carries
        codes ^= np.uint32(0x80808080)
        ds = fp.f16_to_f32(blocks["d"])[:, None] * blocks["scales"].astype(F32)  # (nb, 16): d * sc_b, exact
        rows = out.reshape(nb, 16, 16)  # [block, sub-block, value]
        np.copyto(rows, codes.view(np.int8).reshape(nb, 16, 16))
        rows *= ds[:, :, None]

    def random_blocks(self, rng, n_blocks):
        out = np.empty(n_blocks, dtype=self.dtype)
        out["ql"] = rng.integers(0, 256, size=(n_blocks, 128), dtype=np.uint8)
        out["qh"] = rng.integers(0, 256, size=(n_blocks, 64), dtype=np.uint8)
        out["scales"] = rng.integers(-128, 128, size=(n_blocks, 16), dtype=np.int8)
        out["d"] = fp.f32_to_f16(rng.standard_normal(n_blocks).astype(F32) * F32(0.01))
        return out
