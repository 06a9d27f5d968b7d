"""Q4_K: 256 values as 8 sub-blocks of 32 four-bit values with 6-bit scales and mins; a common weight type.

Block layout (144 bytes, ``block_q4_K`` in ggml-common.h):

======  =======  ===================================================================
offset  bytes    field
======  =======  ===================================================================
0       2        ``d``: f16 super-scale of the sub-block scales
2       2        ``dmin``: f16 super-scale of the sub-block mins
4       12       ``scales[12]``: eight 6-bit scales ``sc_j`` and eight 6-bit mins ``m_j``
16      128      ``qs[128]``: nibbles; byte ``32c + l`` holds element ``64c + l`` (low nibble)
                 and element ``64c + 32 + l`` (high nibble), c = 0..3
======  =======  ===================================================================

Scale packing (``get_scale_min_k4``): for j < 4, ``sc_j = scales[j] & 63``, ``m_j = scales[j+4] & 63``; for
j >= 4, ``sc_j = (scales[j+4] & 15) | (scales[j-4] >> 6) << 4`` and ``m_j = (scales[j+4] >> 4) | (scales[j] >> 6)
<< 4``.

Dequantization (``dequantize_row_q4_K``), element l of sub-block j, in float32, each step rounded once::

    y = (f32(d) * sc_j) * q - (f32(dmin) * m_j)

The product ``(f32(d) * sc_j) * q`` is exact (an 11-bit f16 significand times 6 bits times 4 bits fits in 24
bits), so a build that contracts ``d1*q - m1`` into an FMA gives the same floats.

Quantization:

* ``ref`` (``quantize_row_q4_K_ref``): per sub-block, weights ``av + |x_l|`` with ``av = sqrt(sum x**2 / 32)``,
  (scale_j, min_j) from ``make_qkx2_quants(32, 15, rmin = -1, rdelta = 0.1, nstep = 20)``; the 6-bit codes are
  ``min(63, (uint8) nearest_int(63/max_scale * scale_j))`` (likewise for mins; 0 if the max is 0);
  ``d = f16(max_scale/63)``, ``dmin = f16(max_min/63)``; then every sub-block whose ``f32(d)*sc_j`` is nonzero is
  re-quantized with the stored values, ``L = clamp(nearest_int((x + f32(dmin)*m_j) / (f32(d)*sc_j)), 0, 15)``;
  other sub-blocks keep the L of ``make_qkx2_quants``.
* ``x86``: upstream ggml's CPU ``from_float`` (``quantize_row_q4_K`` in ggml-cpu/quants.c) calls ``ref``.
* ``model`` (``quantize_q4_K``, what ``ggml_quantize_chunk`` runs): ``ref`` without an imatrix; with one,
  ``quantize_row_q4_K_impl``: ``sigma2 = 2 * sum_{256} x**2 / 256``, weights ``qw_l * sqrt(sigma2 + x_l**2)``,
  ``make_qkx3_quants(32, 15, rmin = -0.9, rdelta = 0.05, nstep = 36)`` per sub-block, then the 6-bit codes
  and the super-scales from ``make_qp_quants(8, 63, ·, weights = per-sub-block sums of the weights)`` for the
  scales and for the mins (no ``min(63, ·)`` here: the codes are stored as the solver returns them), then the
  same re-quantization.
* ``ik2026_model`` with an imatrix (the 2026 snapshot's ``quantize_row_q4_K_impl``, ggml-quants.c:2823-2902):
  the same steps with the snapshot's float64 ``make_qkx3_quants`` and its ``make_qp_quants`` as built, and the
  weights' inner sum fused (``Q4_K._ik2026_impl``).

Reproduces ggml-quants.c of the upstream ggml that ggml-python 0.0.45 vendors; ik_llama.cpp@676f0e71b has the
same ``quantize_row_q4_K_ref``, ``quantize_row_q4_K_impl`` and dequantizer, and differs only in
``make_qp_quants`` for sub-block scales all below 1e-15 (see :mod:`._quant_math`). No step is fused into an FMA
(the peer's ggml-base holds no FMA instruction); a real ik_llama.cpp build compiles ggml-quants.c with
``-march=native`` in GNU C mode and may contract some of these expressions (upstream facts §4, unverified).

Valid domain: ``d`` and ``dmin`` finite f16 (ggml writes them >= 0); every scale and nibble byte pattern.
Dequantize is defined for every byte pattern.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types import _ik2026 as ik
from mlaref.reference.types import _quant_math as qm
from mlaref.reference.types._base import BlockFormat
from mlaref.reference.types.q4_0 import block_words_rows

F32 = np.float32


def unpack_scales(scales: np.ndarray):
    """``get_scale_min_k4`` for all 8 sub-blocks: uint8 ``(n, 12)`` -> (sc, m), each uint8 ``(8, n)`` (sub-block major).

    Works on the transposed bytes so that every operation runs along the blocks.
    """
    s = np.empty((12, scales.shape[0]), dtype=np.uint8)
    np.copyto(s, scales.T, casting="unsafe")
    lo, hi, mix = s[0:4], s[4:8], s[8:12]
    sc = np.empty((8, s.shape[1]), dtype=np.uint8)
    m = np.empty_like(sc)
    np.bitwise_and(lo, np.uint8(63), out=sc[:4])
    np.bitwise_and(hi, np.uint8(63), out=m[:4])
    np.right_shift(lo, np.uint8(6), out=sc[4:])
    sc[4:] <<= np.uint8(4)
    sc[4:] |= mix & np.uint8(15)
    np.right_shift(hi, np.uint8(6), out=m[4:])
    m[4:] <<= np.uint8(4)
    m[4:] |= mix >> np.uint8(4)
    return sc, m


def pack_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The packing loop of ``quantize_row_q4_K_ref``: 8 scale codes and 8 min codes -> ``scales[12]``.

    Codes are uint8 as in C; bits beyond the 6 the format holds spill exactly as the C shifts make them
    (only ``quantize_row_q4_K_impl`` can hand over codes above 63).
    """
    ls = ls.astype(np.int64)
    lm = lm.astype(np.int64)
    out = np.zeros((ls.shape[0], 12), dtype=np.int64)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return (out & 0xFF).astype(np.uint8)


class Q4_K(BlockFormat):
    name = "q4_K"
    ggml_type = 12
    block_size = 256
    type_size = 144
    dtype = np.dtype([("d", "<u2"), ("dmin", "<u2"), ("scales", "u1", (12,)), ("qs", "u1", (128,))])
    vec_dot_type = "q8_K"
    domain = "d and dmin finite f16; any scales and qs bytes"
    variants = {"ref": "ref", "model": "model", "x86": "ref"}
    # from_float (quantize_row_q4_K, ggml-quants.c:2817-2821) and ggml_quantize_chunk without an imatrix
    # (ggml-quants.c:2904-2908) both run quantize_row_q4_K_ref; with an imatrix (quantize_row_q4_K_impl,
    # make_qkx3_quants + make_qp_quants as built, ggml-quants.c:2823-2902) runs _ik2026_impl: the imatrix selects it.
    ik2026_variants = {"ik2026_ref": "ik2026_ref", "ik2026_x86": "ik2026_ref", "ik2026_model": "ik2026_ref"}
    takes_imatrix = True
    chunk_blocks = 256  # keeps the solvers' (value, sub-block) work arrays in L2 cache: ~1.7x over 4096
    dequantize_chunk_blocks = 512

    def quantize_blocks(self, x, variant, weights):
        nb = x.shape[0]
        # Sub-blocks become columns: (32, nb*8), element l of sub-block (block i, j) at [l, 8i + j].
        xs = np.ascontiguousarray(x.reshape(nb * 8, 32).T)
        if variant == "ik2026_ref" and weights is not None:  # ik2026_model with an imatrix
            L, d, dmin, ls, lm = self._ik2026_impl(x, xs, weights)
        elif variant == "ik2026_ref":
            L, d, dmin, ls, lm = self._ik2026_ref(xs, nb)
        elif variant == "model" and weights is not None:
            L, d, dmin, ls, lm = self._impl(x, xs, weights)
        else:
            L, d, dmin, ls, lm = self._ref(xs, nb)
        out = np.empty(nb, dtype=self.dtype)
        out["d"] = d
        out["dmin"] = dmin
        out["scales"] = pack_scales(ls, lm)
        # Re-quantize with the stored scales and mins.
        sc, m = unpack_scales(out["scales"])
        D = (fp.f16_to_f32(d)[:, None] * sc.T.astype(F32)).reshape(-1)
        Dm = (fp.f16_to_f32(dmin)[:, None] * m.T.astype(F32)).reshape(-1)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            Lr = np.clip(fp.nearest_int((xs + Dm[None, :]) / D[None, :]), 0, 15)
        L = np.where((D != 0)[None, :], Lr, L).astype(np.uint8)
        # Back to (nb, 256) element order, then nibble pairs (element 64c + l, 64c + 32 + l).
        Lb = L.T.reshape(nb, 4, 2, 32)
        out["qs"] = (Lb[:, :, 0, :] | (Lb[:, :, 1, :] << 4)).reshape(nb, 128)
        return out

    @staticmethod
    def _ref(xs, nb):
        """``quantize_row_q4_K_ref`` up to the re-quantization: (L, d, dmin, scale codes, min codes)."""
        L, max_scale, max_min, ls, lm = Q4_K._codes(xs, nb, qm.make_qkx_quants,
                                                    lambda inv, v: fp.nearest_int(inv * v))
        d = fp.f32_to_f16_soft(max_scale / F32(63))
        dmin = fp.f32_to_f16_soft(max_min / F32(63))
        return L, d, dmin, ls, lm

    @staticmethod
    def _codes(xs, nb, solver, to_int):
        """The shared part of both ``_ref``s: weights ``av_x + |x|``, the (scale, min) solver per 32 values, and
        the 6-bit codes ``min(63, to_int(63/max, v))`` of the scales and mins, with the two maxima."""
        sum_x2 = qm.seq_sum(xs * xs)
        av_x = np.sqrt(sum_x2 / F32(32)).astype(F32)
        w = av_x[None, :] + np.abs(xs)
        scales, mins, L = solver(xs, w, 15, -1.0, 0.1, 20)
        scales = scales.reshape(nb, 8)
        mins = mins.reshape(nb, 8)
        max_scale = np.zeros(nb, dtype=F32)
        max_min = np.zeros(nb, dtype=F32)
        for j in range(8):
            max_scale = np.where(scales[:, j] > max_scale, scales[:, j], max_scale)
            max_min = np.where(mins[:, j] > max_min, mins[:, j], max_min)
        with np.errstate(divide="ignore"):
            inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(F32)
            inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(F32)
        ls = np.minimum(63, to_int(inv_scale[:, None], scales) & 0xFF)
        lm = np.minimum(63, to_int(inv_min[:, None], mins) & 0xFF)
        return L, max_scale, max_min, ls, lm

    @staticmethod
    def _ik2026_ref(xs, nb):
        """The snapshot's ``quantize_row_q4_K_ref`` as built (ggml-quants.c:2717-2789), up to the re-quantization.

        As ``_ref``, except: ``sum_x2`` is a plain sum of rounded squares (GCC vectorises the squares); the solver
        is :func:`._ik2026.make_qkx2_quants`; the 6-bit codes are ``nearest_int_fma(63/max, scale_j)``
        (ggml-quants.c:2754-2755, the add fused). The re-quantization divides first, so nothing there fuses.
        """
        L, max_scale, max_min, ls, lm = Q4_K._codes(xs, nb, ik.make_qkx2_quants, ik.nearest_int_fma)
        return L, fp.f32_to_f16(max_scale / F32(63)), fp.f32_to_f16(max_min / F32(63)), ls, lm

    @staticmethod
    def _impl(x, xs, qw):
        """``quantize_row_q4_K_impl`` with importance weights ``qw`` ``(nb, 256)``, up to the re-quantization."""
        nb = x.shape[0]
        xt = np.ascontiguousarray(x.T)
        sigma2 = (F32(2) * qm.seq_sum(xt * xt)) / F32(256)
        sig = np.repeat(sigma2, 8)[None, :]
        qws = np.ascontiguousarray(qw.reshape(nb * 8, 32).T)
        w = qws * np.sqrt(sig + xs * xs).astype(F32)
        sw = qm.seq_sum(w).reshape(nb, 8)
        scales, mins, L = qm.make_qkx_quants(xs, w, 15, -0.9, 0.05, 36)
        scales = scales.reshape(nb, 8)
        mins = mins.reshape(nb, 8)
        swt = np.ascontiguousarray(sw.T)
        d_block, ls = qm.make_qp_quants(np.ascontiguousarray(scales.T), 63, swt)
        m_block, lm = qm.make_qp_quants(np.ascontiguousarray(mins.T), 63, swt)
        return L, fp.f32_to_f16_soft(d_block), fp.f32_to_f16_soft(m_block), ls.T, lm.T

    @staticmethod
    def _ik2026_impl(x, xs, qw):
        """The snapshot's ``quantize_row_q4_K_impl`` as built (ggml-quants.c:2823-2902), up to the re-quantization.

        As ``_impl``, except: the weights are ``qw * sqrtf(fmaf(x, x, sigma2))`` (the add fused); the solvers are the
        snapshot's :func:`._ik2026.make_qkx3_quants` (float64, greedy search) and :func:`._ik2026.make_qp_quants`;
        the super-scales go through F16C (``fp.f32_to_f16``). ``sum_x2`` (rounded squares added in order) and
        ``sw`` (plain in-order sums) are as upstream's.
        """
        nb = x.shape[0]
        xt = np.ascontiguousarray(x.T)
        sigma2 = (F32(2) * qm.seq_sum(xt * xt)) / F32(256)
        sig = np.repeat(sigma2, 8)[None, :]
        qws = np.ascontiguousarray(qw.reshape(nb * 8, 32).T)
        w = (qws * np.sqrt(fp.fmaf(xs, xs, sig))).astype(F32)
        sw = qm.seq_sum(w).reshape(nb, 8)
        scales, mins, L = ik.make_qkx3_quants(xs, w, 15, -0.9, 0.05, 36)
        swt = np.ascontiguousarray(sw.T)
        d_block, ls = ik.make_qp_quants(np.ascontiguousarray(scales.reshape(nb, 8).T), 63, swt)
        m_block, lm = ik.make_qp_quants(np.ascontiguousarray(mins.reshape(nb, 8).T), 63, swt)
        return L, fp.f32_to_f16(d_block), fp.f32_to_f16(m_block), ls.T, lm.T

    def dequantize_into(self, blocks, out):
        """In element order: the 32 words of ``qs`` are ``[c, k]`` = bytes ``32c + 4k .. 32c + 4k + 3``; their low
        nibbles are elements ``64c + 4k ..`` (sub-block ``2c``), their high nibbles elements ``64c + 32 + 4k ..``
        (sub-block ``2c + 1``). The nibbles are built as uint32 words ``[block, c, h, k]``, whose bytes are the
        elements in row order: one uint8 -> f32 pass into ``out``, then ``* d*sc`` and ``- dmin*m`` per
        sub-block, broadcast over its 32 values."""
        nb = blocks.shape[0]
        w = block_words_rows(blocks, 16, 32).reshape(nb, 4, 8)  # [block, c, k]
        lanes = np.empty((nb, 4, 2, 8), dtype=np.uint32)  # [block, c, h, k]: sub-block 2c + h
        np.bitwise_and(w, np.uint32(0x0F0F0F0F), out=lanes[:, :, 0])
        np.right_shift(w, np.uint32(4), out=lanes[:, :, 1])
        lanes[:, :, 1] &= np.uint32(0x0F0F0F0F)
        sc, m = unpack_scales(blocks["scales"])
        d1 = fp.f16_to_f32(blocks["d"]) * sc.astype(F32)  # (8 sub-blocks, nb): d * sc, rounded once
        m1 = fp.f16_to_f32(blocks["dmin"]) * m.astype(F32)
        rows = out.reshape(nb, 8, 32)  # [block, sub-block, value]
        np.copyto(rows, lanes.view(np.uint8).reshape(nb, 8, 32))
        rows *= d1.T[:, :, None]  # exact: an 11-bit d times a 6-bit sc times a 4-bit q fits in 24 bits
        rows -= m1.T[:, :, None]

    def random_blocks(self, rng, n_blocks):
        out = np.empty(n_blocks, dtype=self.dtype)
        # Both signs: ggml's quantizers write d, dmin >= 0, but dequantization is defined for any finite f16.
        out["d"] = fp.f32_to_f16(rng.standard_normal(n_blocks).astype(F32) * F32(0.01))
        out["dmin"] = fp.f32_to_f16(rng.standard_normal(n_blocks).astype(F32) * F32(0.01))
        out["scales"] = rng.integers(0, 256, size=(n_blocks, 12), dtype=np.uint8)
        out["qs"] = rng.integers(0, 256, size=(n_blocks, 128), dtype=np.uint8)
        return out
