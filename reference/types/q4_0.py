"""Q4_0: 32 four-bit values with an offset of 8 and one f16 scale.

Block layout (18 bytes, ``block_q4_0`` in ggml-common.h):

======  =======  =====================================================================
offset  bytes    field
======  =======  =====================================================================
0       2        ``d``: f16 scale
2       16       ``qs[16]``: byte j holds element j in its low nibble, element j+16 in its high
======  =======  =====================================================================

Dequantization (``dequantize_row_q4_0``): ``y = (nibble - 8) * f32(d)``, exact in float32.

Quantization:

* ``ref`` (``quantize_row_q4_0_ref``, ggml-quants.c@676f0e71b; also the CPU ``from_float``, so ``x86`` is the
  same code): ``max`` = the signed x of largest ``|x|`` (the first one on ties; +0 for an all-zero block);
  ``d = max / -8``; ``id = 1/d`` (0 if ``d == 0``); ``q = min(15, (int8_t)(x*id + 8.5f))`` with both float
  operations rounded (no FMA: upstream's ggml-base is built without it) and the cast truncating; store ``f16(d)``.
* ``model`` (``quantize_q4_0``): without an imatrix, ``ref`` on the whole chunk. With one,
  ``quantize_row_q4_0_impl`` per row: ``sigma2 = (sum_j x_j^2) / n`` over the row (a float sum in column
  order), weights ``w_j = qw_j * sqrtf(sigma2 + x_j^2)``, and ``d = make_qx_quants(32, nmax=8, rmse_type=1, w)``
  (:func:`._quant_math.make_qx_quants`); store ``f16(d)`` and the nibbles ``L = l + 8``.

Inputs where ``x * id`` is not finite (an infinite value, or a block maximum so small that ``1/d`` overflows,
``|max| < 8 / FLT_MAX``) convert a non-finite float to ``int8_t``: undefined behaviour in C, outside the domain.

Valid domain: ``d`` a finite f16; every nibble is a value.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types import _ik2026 as ik
from mlaref.reference.types import _quant_math as qm
from mlaref.reference.types._base import BlockFormat



def to_lanes(x: np.ndarray) -> np.ndarray:
    """A transposed copy of blocks ``(n_blocks, 32)`` as ``(8, n_blocks, 4)``: element 4k + i of block b at [k, b, i].

    NumPy reduces a short contiguous axis several times slower than it combines rows, and transposes 16-byte
    items several times faster than 4-byte ones; so the reductions over a block run across the 8 groups of 4
    (fast) and then over the 4 lanes (three elementwise ops).
    """
    nb = x.shape[0]
    # .copy(), not ascontiguousarray: for one block the transpose is already contiguous, and the callers work on
    # the lanes in place, which must never write into x.
    return np.ascontiguousarray(x).view(np.complex128).T.copy().view(np.float32).reshape(8, nb, 4)


def lane_reduce(op, lanes: np.ndarray) -> np.ndarray:
    """``op`` (``np.maximum`` / ``np.minimum``) over a block: over the 8 groups, then the 4 lanes."""
    r = op.reduce(lanes, axis=0)
    return op(op(r[:, 0], r[:, 1]), op(r[:, 2], r[:, 3]))


def signed_absmax(x: np.ndarray, lanes: np.ndarray | None = None):
    """``(amax, max)`` per block: ``max`` the signed x of largest ``|x|``, the first on ties, +0 if all are 0.

    Reproduces ggml's loop ``if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`` from ``amax = max = 0``.
    The largest magnitude is that of the block's maximum or of its minimum; only when the two have equal
    magnitude and opposite signs does the position decide, and those (rare) blocks take the first index of the
    largest magnitude. Adding +0 turns the -0 of an all-zero block into ggml's +0 and changes nothing else.
    ``lanes`` is ``to_lanes(x)`` when the caller has it.

    The same C loop as :func:`._quant_math.first_absmax` on valid input, kept separate on purpose: that one
    scans transposed groups and follows C on NaN (a NaN never wins), this one reduces row-major blocks through
    lanes (several times faster) and lets a NaN through; NaN inputs are outside the domain of its callers (the
    ``ref`` quantizers of q4_0, q5_0 and iq4_nl), whose bytes for them are kept as they were.
    """
    if lanes is None:
        lanes = to_lanes(x)
    hi = lane_reduce(np.maximum, lanes)
    lo = lane_reduce(np.minimum, lanes)
    ahi = np.abs(hi)
    alo = np.abs(lo)
    mx = np.where(alo > ahi, lo, hi)
    tie = np.flatnonzero((alo == ahi) & (hi != lo))
    if tie.size:
        sub = x[tie]
        first = (sub.view(np.int32) & np.int32(0x7FFFFFFF)).argmax(axis=1)  # integer argmax: the first maximum
        mx[tie] = sub[np.arange(tie.size), first]
    mx += np.float32(0)
    return np.abs(mx), mx


def clamp_u8(q: np.ndarray, top: int) -> None:
    """``q = min(q, top)`` in place on uint8 lanes ``(8, n_blocks, 4)``.

    NumPy's uint8 ``minimum`` against a scalar runs an unvectorised loop, ten times slower than against an array,
    so the bound is a row of ``top`` broadcast over the 8 lanes.
    """
    rows = q.reshape(q.shape[0], -1)
    np.minimum(rows, np.full(rows.shape[1], top, dtype=np.uint8), out=rows)


def pack_lanes(q: np.ndarray) -> np.ndarray:
    """uint8 lanes ``(8, n_blocks, 4)`` -> ``qs (n_blocks, 16)``: element j in the low nibble of byte j, element
    j + 16 in its high nibble.

    The four lanes of a group are one little-endian uint32, so groups 0..3 (elements 0..15) and 4..7 combine
    with 32-bit masks and shifts; only the nibbles are kept, so the same code packs q5 values.
    """
    q32 = q.view(np.uint32).reshape(8, -1)  # (8, n_blocks): bytes = elements 4k .. 4k+3
    packed = (q32[:4] & np.uint32(0x0F0F0F0F)) | ((q32[4:] & np.uint32(0x0F0F0F0F)) << np.uint32(4))
    return np.ascontiguousarray(packed.T).view(np.uint8)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """uint8 ``(n_blocks, 32)`` values < 16 -> ``qs[16]``: low nibble element j, high nibble element j + 16."""
    return q[:, :16] | (q[:, 16:] << 4)


# -- dequantization in lanes ------------------------------------------------------------------------------
# A dequantizer multiplies every value by its block's scale. On rows of 32 ((n_blocks, 32) * (n_blocks, 1)) NumPy
# runs one short inner loop per block; in the lane layout of ``to_lanes`` (element 4k + i of block b at
# [k, b, i]) every operation is one long loop over a row of lanes, and the way back to rows is a transpose of
# 16-byte items, which NumPy does fast. Little-endian uint32 words of the block bytes are lanes of 4 bytes.

def block_words(blocks: np.ndarray, offset: int, n: int) -> np.ndarray:
    """Bytes ``offset .. offset + 4n`` of every block as little-endian uint32 words: ``(n, n_blocks)``."""
    nb = blocks.shape[0]
    raw = np.ascontiguousarray(blocks).view(np.uint8).reshape(nb, blocks.dtype.itemsize)
    w = np.empty((n, nb), dtype=np.uint32)
    np.copyto(w, raw[:, offset : offset + 4 * n].view("<u4").T)
    return w


def block_words_rows(blocks: np.ndarray, offset: int, n: int) -> np.ndarray:
    """Bytes ``offset .. offset + 4n`` of every block as little-endian uint32 words, block-major: ``(n_blocks, n)``
    (for dequantizers that build their values in element order and write rows without a transpose)."""
    nb = blocks.shape[0]
    raw = np.ascontiguousarray(blocks).view(np.uint8).reshape(nb, blocks.dtype.itemsize)
    return np.ascontiguousarray(raw[:, offset : offset + 4 * n]).view("<u4")


def nibble_lanes(words: np.ndarray) -> np.ndarray:
    """The 4 uint32 words of ``qs[16]`` ``(4, n_blocks)`` -> uint32 lanes ``(8, n_blocks)`` of 4 nibble bytes.

    Lane k < 4 holds elements 4k .. 4k+3 (low nibbles of bytes 4k .. 4k+3), lane k >= 4 elements 4k .. 4k+3
    (their high nibbles), one element per byte.
    """
    lanes = np.empty((8, words.shape[1]), dtype=np.uint32)
    np.bitwise_and(words, np.uint32(0x0F0F0F0F), out=lanes[:4])
    np.right_shift(words, np.uint32(4), out=lanes[4:])
    lanes[4:] &= np.uint32(0x0F0F0F0F)
    return lanes


def scaled_lanes_into(values: np.ndarray, d: np.ndarray, out: np.ndarray, m: np.ndarray | None = None) -> None:
    """``out = values * d (+ m)`` per block, each operation rounded once, written as rows.

    ``values``: int8 / uint8 lanes ``(8, 4 n_blocks)``, lane k holding elements 4k .. 4k+3 of every block (the
    bytes of ``nibble_lanes`` words); ``d``, ``m``: float32 ``(n_blocks,)``; ``out``: C-contiguous float32
    ``(n_blocks, 32)``.
    """
    nb = d.shape[0]
    f = np.empty((8, 4 * nb), dtype=np.float32)
    np.copyto(f, values.reshape(8, 4 * nb))
    f *= np.repeat(d, 4)
    if m is not None:
        f += np.repeat(m, 4)
    np.copyto(out.view(np.complex128), f.view(np.complex128).T)  # (8, n_blocks) of 4 floats -> rows


def row_sigma2_weights(x: np.ndarray, imatrix: np.ndarray, block_size: int) -> np.ndarray:
    """The weights of the legacy ``quantize_row_q*_impl``: ``qw_j * sqrtf(sigma2 + x_j*x_j)``, per block.

    ``sigma2 = sum_x2 / n_per_row`` with ``sum_x2 += x[j]*x[j]`` over the whole row, in column order (one float
    rounding per step, looped over the columns and vectorised over rows). Returns float32
    ``(n_rows * n / block_size, block_size)``.
    """
    n_rows, n = x.shape
    sum_x2 = np.zeros(n_rows, dtype=np.float32)
    for j in range(n):
        sum_x2 += x[:, j] * x[:, j]
    sigma2 = sum_x2 / np.float32(n)
    w = imatrix.astype(np.float32)[None, :] * np.sqrt(sigma2[:, None] + x * x)
    return w.astype(np.float32).reshape(-1, block_size)


def offset_quantize(x: np.ndarray, half: int):
    """The reference step of q4_0 (``half = 8``) and q5_0 (16): ``d = max/-half``, ``id = 1/d`` (0 if d is 0),
    ``q = min(2*half - 1, (int8_t)(x*id + (half + 0.5f)))``.

    Returns float32 ``d (n_blocks,)`` and uint8 ``q`` as lanes ``(8, n_blocks, 4)`` (``to_lanes``).
    """
    lanes = to_lanes(x)
    _, mx = signed_absmax(x, lanes)
    d = mx / np.float32(-half)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscale = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        flat = lanes.reshape(8, -1)  # (8, 4 n_blocks): long contiguous rows for NumPy's inner loops
        flat *= np.repeat(iscale, 4)
        flat += np.float32(half + 0.5)
        q = lanes.astype(np.uint8)  # truncation toward zero: x*id + half + 0.5 is in [0, 2*half + 1) if finite
    clamp_u8(q, 2 * half - 1)
    return d, q


def qx_blocks(x: np.ndarray, nmax: int, w: np.ndarray):
    """``make_qx_quants(32, nmax, x, L, 1, w)`` of ``quantize_row_q4_0_impl`` / ``quantize_row_q5_0_impl`` on blocks
    ``(n_blocks, 32)`` -> (scale, L uint8 ``(n_blocks, 32)`` = ``l + nmax``).

    The solver is :func:`._quant_math.make_qx_quants`, which works on transposed groups.
    """
    scale, L = qm.make_qx_quants(np.ascontiguousarray(x.T), nmax, np.ascontiguousarray(w.T))
    return scale, np.ascontiguousarray(L.T).view(np.uint8)


class LegacyFormat(BlockFormat):
    """q4_0, q4_1, q5_0, q5_1: ``ref`` is also the x86 ``from_float``; the model quantizer
    (``quantize_row_q*_impl``) weighs the imatrix with the row statistic of ``row_sigma2_weights`` (the ik2026
    model quantizer with that of ``_ik2026.legacy_row_weights``)."""

    variants = {"ref": "ref", "model": "model", "x86": "ref"}
    # The snapshot's _ref functions, from_float (but q4_0's) and imatrix-free quantize_* are upstream's code and
    # agree with ``ref`` byte for byte as built; ik2026_model without an imatrix is ``ref`` too.
    ik2026_variants = {"ik2026_ref": "ref", "ik2026_x86": "ref", "ik2026_model": "ik2026_model"}
    ik2026_imatrix_modelled: bool = False  # is the snapshot's quantize_row_<t>_impl reproduced? (set by each format that is)
    takes_imatrix = True

    def block_weights(self, x, imatrix):
        return None if imatrix is None else row_sigma2_weights(x, imatrix, self.block_size)

    def variant_block_weights(self, x, imatrix, variant):
        if variant == "ik2026_model" and imatrix is not None:
            if not self.ik2026_imatrix_modelled:
                raise NotImplementedError(f"{self.name} ik2026_model with an imatrix is not modelled")
            return ik.legacy_row_weights(x, imatrix, self.block_size)
        return self.block_weights(x, imatrix)


def hsum_float_8(v: np.ndarray) -> np.ndarray:
    """IQK's ``hsum_float_8`` over the last axis of 8 lanes (iqk/iqk_common.h:224-231): lanes i and i + 4 added,
    then ``(s0 + s2) + (s1 + s3)``."""
    s = v[..., :4] + v[..., 4:]
    return (s[..., 0] + s[..., 2]) + (s[..., 1] + s[..., 3])


def iqk_q4_0_blocks(x: np.ndarray):
    """``iqk_quantize_q4_0``, the AVX2 branch (iqk/iqk_quantize.cpp:716-771): the snapshot's q4_0 ``from_float``.

    Per block of 32 (8 lanes x 4 vectors, element ``8k + i`` in lane i of vector k):

    1. ``max``, ``min`` of the block; if ``|max| > |min|`` then ``d = max/-8`` and ``id = |max| > 1e-13 ? 1/d : 0``,
       else the same with ``min`` (iqk_quantize.cpp:735-746): ties of magnitude take the negative value. In an
       all-zero block ``min`` is the zero of element 27 (the second operand wins every ``vminps`` of
       ``hmin_float_8``, iqk/iqk_common.h:251-256), so +0 inputs give ``d = -0`` (stored 0x8000).
    2. ``r = min(rint(id*x), 7)`` (round half to even, ``_mm256_round_ps``), stored as ``r + 8`` (no lower clamp:
       ``id*x >= -8`` up to rounding, which ``rint`` absorbs).
    3. Per lane, over the 4 vectors: ``wr = (x*x)*r``, ``sumqx = fmaf(wr, x, sumqx)``, ``sumq2 = fmaf(wr, r,
       sumq2)``; both reduced by :func:`hsum_float_8`. If ``sumq2 > 0``, ``d = sumqx/sumq2``.
    4. Store ``f16(d)`` (F16C) and the nibbles ``L_j | L_{j+16} << 4``.

    Returns float32 ``d (n_blocks,)`` and uint8 ``L (n_blocks, 32)``.
    """
    nb = x.shape[0]
    hi = x.max(axis=1)
    lo = x.min(axis=1)
    use_max = np.abs(hi) > np.abs(lo)
    lo = np.where((hi == 0) & (lo == 0), x[:, 27], lo)
    m = np.where(use_max, hi, lo)
    d = (m / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = np.where(np.abs(m) > np.float32(1e-13), np.float32(1) / d, np.float32(0)).astype(np.float32)
        r = np.minimum(np.rint(iscale[:, None] * x), np.float32(7)).astype(np.float32)
        wr = (x * x) * r
        lanes_x, lanes_r, lanes_wr = (a.reshape(nb, 4, 8) for a in (x, r, wr))
        sumqx = np.zeros((nb, 8), dtype=np.float32)
        sumq2 = np.zeros((nb, 8), dtype=np.float32)
        for k in range(4):
            sumqx = fp.fmaf(lanes_wr[:, k], lanes_x[:, k], sumqx)
            sumq2 = fp.fmaf(lanes_wr[:, k], lanes_r[:, k], sumq2)
        sumq2 = hsum_float_8(sumq2)
        d = np.where(sumq2 > 0, hsum_float_8(sumqx) / sumq2, d).astype(np.float32)
    L = (r.astype(np.int32) + 8).astype(np.uint8)
    return d, L


class Q4_0(LegacyFormat):
    name = "q4_0"
    ggml_type = 2
    block_size = 32
    type_size = 18
    dtype = np.dtype([("d", "<u2"), ("qs", "u1", (16,))])
    vec_dot_type = "q8_0"
    domain = "d a finite f16; qs any"
    # ik2026_ref / model without imatrix: the snapshot's quantize_row_q4_0_ref is upstream's (ggml-quants.c:673-708),
    # and its compiled code agrees with ``ref`` byte for byte.
    ik2026_variants = {"ik2026_ref": "ref", "ik2026_x86": "ik2026_x86", "ik2026_model": "ik2026_model"}
    ik2026_imatrix_modelled = True

    def quantize_blocks(self, x, variant, weights):
        out = np.empty(x.shape[0], dtype=self.dtype)
        if variant == "ik2026_x86":
            d, L = iqk_q4_0_blocks(x)
            out["d"] = fp.f32_to_f16(d)
            out["qs"] = pack_nibbles(L)
            return out
        if variant == "ik2026_model" and weights is not None:
            d, L = ik.make_qx_quants(np.ascontiguousarray(x.T), 8, np.ascontiguousarray(weights.T))
            out["d"] = fp.f32_to_f16_soft(d)
            out["qs"] = pack_nibbles(np.ascontiguousarray(L.T).view(np.uint8))
            return out
        if variant == "model" and weights is not None:
            d, L = qx_blocks(x, 8, weights)
            out["d"] = fp.f32_to_f16_soft(d)
            out["qs"] = pack_nibbles(L)
            return out
        d, q = offset_quantize(x, 8)
        out["d"] = fp.f32_to_f16_soft(d)
        out["qs"] = pack_lanes(q)
        return out

    def dequantize_into(self, blocks, out):
        lanes = nibble_lanes(block_words(blocks, 2, 4))
        lanes += np.uint32(0x78787878)  # (b + 0x78) ^ 0x80 is b - 8 as an int8 byte for b in 0..15; no carries
        lanes ^= np.uint32(0x80808080)
        scaled_lanes_into(lanes.view(np.int8), fp.f16_to_f32(blocks["d"]), out)

    def random_blocks(self, rng, n_blocks):
        out = np.empty(n_blocks, dtype=self.dtype)
        out["d"] = fp.f32_to_f16_soft(rng.standard_normal(n_blocks).astype(np.float32) * np.float32(0.01))
        out["qs"] = rng.integers(0, 256, size=(n_blocks, 16), dtype=np.uint8)
        return out
