"""mul_mat as the 2026 ik_llama.cpp snapshot computes it on AVX2: src1 -> q8_2_x4, kernels chosen by type and N.

Models ``ggml_compute_forward_mul_mat`` of the ik_llama.cpp snapshot vendored in the **ik-llama-cpp-python 0.1.5**
sdist (``vendor/ik_llama.cpp``), **built for x86-64 with AVX2 + FMA + F16C and without AVX-512 / AVX512-VNNI /
AVX-VNNI** (so ``HAVE_FANCY_SIMD`` and ``HAVE_VNNI256`` are undefined; the build checked is the sdist's native
build on AMD Zen 3). Paths below are relative to ``vendor/ik_llama.cpp``; docs/facts/ik-snapshot.md collects the
facts with their lines. This is *not* ik_llama.cpp@676f0e71b (:class:`~mlaref.reference.ops.mul_mat.MulMat_253`):
there the quantized weights met q8_0_x4 / q8_1_x4 / q8_K, here they all meet ``q8_2_x4`` and the kernel depends on
the number N of src1 rows.

Dispatch (ggml/src/ggml.c:16924-17031): ``iqk_mul_mat_4d`` is tried on src1 as given, which only f16 weights with
f32 / f16 src1 pass; otherwise src1 rows become the weight's vec_dot type (``q8_2_x4`` for every quantized weight
here, ``f16`` for an f16 weight: f32 rows directly, other types through ``to_float`` first;
iqk_quantize.cpp:244-268) and ``iqk_mul_mat_4d`` runs on the converted rows. ``iqk_mul_mat``
(ggml/src/iqk/iqk_mul_mat.cpp:501-620) then **repacks the weight** when ``MulMat::is_dequant_better``
(iqk_mul_mat.cpp:237-285) asks for it (N >= 32 for q4_0, q8_0, iq4_nl, q4_K; N >= 64 for q6_K), the rows per
thread ``ceil(M/nth) >= 16``, ``M/nth >= 32`` (else the tiled branch, iqk_mul_mat.cpp:515-532, which never
repacks) and M is a multiple of 8. Threads only split rows of the weight (or N in halves, iqk_mul_mat.cpp:590-606);
no dot product is split, so only the choice of path depends on ``n_threads``.

The paths, each a named model (``PATHS``; :func:`ik2026_path` picks one). Every float step below is one IEEE
operation rounded once, FMA fused; ``S`` are exact integer sums; ``dy`` is the bf16 scale of a q8_2 block, ``s``
its int16 quant sum; ``fold8`` is ``hsum_float_8`` = ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)) (iqk_common.h:224-231).

``ik2026_f16_l8``  f16 weight (iqk_gemm_floats.cpp:184-214, AVX2 ``QFBase`` k_step 8, floats.cpp:59-99):
    one 8-lane accumulator; element e in lane e % 8; ``acc = x*y`` for elements 0..7 (a product, not an FMA),
    then ``acc = fma(y, x, acc)`` per 8 elements; a last group of 4 fills lanes 0..3 (lanes 4..7 get
    ``fma(0, 0, acc)``); ``fold8``. x is the f16 weight widened (exact); y the f32 or f16 row.
``ik2026_f32_l8`` / ``ik2026_bf16_l8``  f32 / bf16 weight: the same kernel as ``ik2026_f16_l8``
    (``set_mul_mat_f<float|ggml_bf16_t, ...>``, iqk_gemm_floats.cpp:608-663), the weight widened exactly. An f32
    weight takes f32 / f16 src1 as given (K % 4 == 0); with bf16 / q8_0 src1 the snapshot converts src1 to the
    vec_dot type f32, whose type_traits have no ``from_float`` (ggml.c:680-689): it calls a null pointer and
    crashes, so those raise here. A bf16 weight (K % 8 == 0) takes f32 / bf16 src1 as given; f16 / q8_0 src1
    become bf16 first (``to_float``, then ``ggml_fp32_to_bf16_row``: round to nearest even, ggml.c:502-516).
``ik2026_q8_0_h16`` / ``ik2026_iq4_nl_h16``  N < 32 (``mul_mat_qX_0_q8_0_T<..., block_q8_2>``,
    iqk_gemm_legacy_quants.cpp:398-421, ``AccumT`` 297-366, ``Sum4<..., SignedDot, false>`` 47-66): per group of 4
    blocks, lane k = block 4g+k elements 0..15, lane 4+k = its elements 16..31 (each an exact sum of 16
    products); ``d = f32(dx) * dy`` (ScaleHelperQ8_2S, 123-134); ``acc = fma(d, float(S), acc)``; a block after
    the last full group puts its 8 four-product sums in lanes 0..7 with the same d; ``fold8``.
``ik2026_q4_0_h16m``  N < 32 (``mul_mat_qX_1_q8_2_T``, 502-515): as above with unsigned nibbles and the -8
    offset as a separate term: ``m = (dx * -8) * (dy * float(s))`` (ScaleHelperQ_0_1<8> 151-171 times
    convert_scales 84-88), ``accm[k] += m`` (4 float lanes from 0; a tail block adds ``m * 0.25`` to all four);
    result ``t_k = (acc_k + acc_{4+k}) + accm_k``, ``(t0 + t2) + (t1 + t3)`` (MinusType1, 275-296).
``ik2026_q5_0_h16m``  q5_0, N < 32 (``Q5_0_1_Unpacker``, 794-798): as ``ik2026_q4_0_h16m`` with the unsigned
    5-bit values and ``m = (dx * -16) * (dy * float(s))`` (ScaleHelperQ_0_1<16>).
``ik2026_q4_1_h16m`` / ``ik2026_q5_1_h16m``  q4_1 / q5_1, N < 32 (``Q4_1_Unpacker`` / ``Q5_1_Unpacker``,
    799-808, ScaleHelperQ_1 238-266): as ``ik2026_q4_0_h16m`` with the unsigned stored values and the block's own
    min: ``m = f32(mx) * (dy * float(s))``.
``ik2026_q8_0_r8``  q8_0 / iq4_nl / q4_0 / q5_0 with N >= 32: the weight becomes q8_0_r8 without loss (d copied,
    values q, kvalues[nib], nib - 8 or q - 16; 1941-2009); ``mul_mat_q8_0_r8_q8_2`` (1669-1753): one float per row,
    per block in order ``acc = fma(f32(dx) * dy, float(S_block), acc)``; no fold.
``ik2026_q8_1_r8``  q4_1 / q5_1 with N >= 32: the weight becomes q8_1_r8 without loss (d, m and the unsigned
    values copied, ``iqk_convert_qX_1_q8_1_r8`` 2011-2042); ``mul_mat_q8_1_r8_q8_2`` (1869-1937) as in
    ``ik2026_q4_K_r8`` with d' = d, m' = m. Its loop runs ``nb / 4`` groups of 4 blocks only (1897): **blocks after the
    last full group (K % 128) are dropped** from the result (checked against the library with K = 160, 576).
``ik2026_q4_K_h16``  q4_K, N < 32 (``mul_mat_qX_K_q8_2_X4_T``, iqk_gemm_kquants.cpp:782-864): per super-block,
    first ``acc_l = fma(dy_l * float(s_l), -(f32(dmin) * float(m_l)), acc_l)`` for the 8 sub-blocks l; then for
    each half j of 128: lane k / 4+k = sub-block 4j+k elements 0..15 / 16..31,
    ``acc = fma((f32(d) * float(sc)) * dy, float(S), acc)``; ``fold8``.
``ik2026_q4_K_r8``  q4_K, N >= 32: weight -> q8_1_r8 (``iqk_convert_q4_k_q8_1_r8``, kquants.cpp:2192-2255),
    per 32-block ``d' = f16(f32(d) * sc)``, ``m' = f16(-f32(dmin) * m)`` (RNE, ``_mm256_cvtps_ph``), values the
    nibbles; ``mul_mat_q8_1_r8_q8_2`` (legacy_quants.cpp:1869-1933): per group of 4 blocks first
    ``acc = fma(m'_b, float(s_b) * dy_b, acc)`` for the 4 blocks, then per block ``e = d'_b * dy_b``,
    ``acc = fma(e, float(S_lo), acc)``, ``acc = fma(e, float(S_hi), acc)`` (halves of 16); no fold.
``ik2026_q6_K_h16``  q6_K, N < 64 (``mul_mat_qY_K_q8_2_X4_T``, kquants.cpp:938-1029): per half j of 128,
    lane k / 4+k = 16-element sub-block 8j+2k / 8j+2k+1 (y block k's two halves), ``q - 32`` signed,
    ``acc = fma((f32(d) * float(sc)) * dy, float(S), acc)``; ``fold8``.
``ik2026_q6_K_r8``  q6_K, N >= 64: the weight is **re-quantized with loss** to q8_0_r8
    (``iqk_convert_q6_k_q8_0_r8``, kquants.cpp:2326-2410): per 32-block ``v = (q - 32) * sc`` (int16),
    ``mx = float(max|v|) / 127``, ``d' = f16(f32(d) * mx)``, values ``sat8(rint(float(v) * (1 / mx)))`` (0 if
    ``mx <= 1e-9``); then ``ik2026_q8_0_r8``.

``ik2026_vec_dot_avx2``  f16 / f32 / bf16 weight with K not a multiple of the iqk float kernels' step (4; bf16
    8) and src1 already of the weight's type: iqk declines and ggml's chunked vec_dot runs (ggml.c:17021-,
    ``ggml_vec_dot_f32`` 2871-2912, ``ggml_vec_dot_bf16`` 2914-2976, ``ggml_vec_dot_f16`` 2978-): mlaref's
    ``ggml_x86_avx2`` plan (:func:`~mlaref.reference.ops.vec_dot.vec_dot`) gives its bytes. With another src1
    type the snapshot converts src1, iqk declines again and ``ggml_compute_forward_mul_mat`` **returns without
    writing dst** (the ``return`` at ggml.c:17018 follows the second ``iqk_mul_mat_4d`` whatever it answered),
    or, for an f32 weight, crashes on the missing ``from_float``: both raise here.

Not modelled: the N == 1 batched special cases of ``iqk_mul_mat_4d``.

Bit-exactness: every path was compared with the library (``harness_ops.mul_mat`` on the sdist's libggml.so) for
the weights f16, q8_0, iq4_nl, q4_0, q4_K, q6_K, src1 f32 / f16 / bf16 / q8_0 (also a 512-of-576 view),
K = 512, M = 64 and 4096, N = 1, 7, 32, 64, 100, n_threads 1 and 2: equal bytes; also K = 160 / 576 (tail blocks),
f16 with K % 8 == 4, q4_K / q6_K with K = 256 / 768, and the tiled branch (M / nth < 32). The same grid, plus the
weight ne = [256, 16] with src1 ne = [256, 5, 2] on 2 threads, for f32 (src1 f32 / f16), bf16, q4_1, q5_0 and q5_1,
with K = 160 / 576 for the last three, f32 K = 12 / 20 / 516, bf16 K = 8 / 24 / 520 and the tiled branch.

Value domain: weights as their formats state (q8_0 quants never -128: the sign trick of ``SignedDot`` would give
-128 * -128 = -16384 there); src1 finite.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference import fp, quantize
from mlaref.reference.ops._common import check_tensor
from mlaref.reference.ops import _vecdot_pairs as pairs
from mlaref.reference.ops.vec_dot import vec_dot
from mlaref.reference.tensor import Tensor

__all__ = ["SNAPSHOT", "PATHS", "REPACK_MIN_N", "ik2026_path", "MulMat_ik2026", "mul_mat_ik2026", "fold8"]

SNAPSHOT = ("ik_llama.cpp vendored in ik-llama-cpp-python 0.1.5 (sdist), x86-64 AVX2+FMA+F16C build without "
            "AVX-512 and without VNNI")

# the named models of this module (see the module docstring)
PATHS = ("ik2026_f16_l8", "ik2026_q8_0_h16", "ik2026_iq4_nl_h16", "ik2026_q4_0_h16m", "ik2026_q8_0_r8",
         "ik2026_q4_K_h16", "ik2026_q4_K_r8", "ik2026_q6_K_h16", "ik2026_q6_K_r8",
         "ik2026_f32_l8", "ik2026_bf16_l8", "ik2026_q5_0_h16m", "ik2026_q4_1_h16m", "ik2026_q5_1_h16m",
         "ik2026_q8_1_r8", "ik2026_vec_dot_avx2")

# weight type -> the smallest N at which MulMat::is_dequant_better repacks it (iqk_mul_mat.cpp:254-274, AVX2)
REPACK_MIN_N = {"q4_0": 32, "q8_0": 32, "iq4_nl": 32, "q4_K": 32, "q6_K": 64, "q4_1": 32, "q5_0": 32, "q5_1": 32}

# float weights: one kernel family, never repacked (is_dequant_better names no other type for them)
_FLOAT_PATH = {"f16": "ik2026_f16_l8", "f32": "ik2026_f32_l8", "bf16": "ik2026_bf16_l8"}
_SMALL_N_PATH = {"q8_0": "ik2026_q8_0_h16", "iq4_nl": "ik2026_iq4_nl_h16", "q4_0": "ik2026_q4_0_h16m",
                 "q4_K": "ik2026_q4_K_h16", "q6_K": "ik2026_q6_K_h16", "q5_0": "ik2026_q5_0_h16m",
                 "q4_1": "ik2026_q4_1_h16m", "q5_1": "ik2026_q5_1_h16m"}
_REPACK_PATH = {"q8_0": "ik2026_q8_0_r8", "iq4_nl": "ik2026_q8_0_r8", "q4_0": "ik2026_q8_0_r8",
                "q4_K": "ik2026_q4_K_r8", "q6_K": "ik2026_q6_K_r8", "q5_0": "ik2026_q8_0_r8",
                "q4_1": "ik2026_q8_1_r8", "q5_1": "ik2026_q8_1_r8"}
_WEIGHT_TYPES = tuple(_FLOAT_PATH) + tuple(_SMALL_N_PATH)
_SRC1_TYPES = ("f32", "f16", "bf16", "q8_0")
# K must be a multiple of this for the iqk kernels to accept the weight (iqk_gemm_floats.cpp:611, 642,
# iqk_gemm_legacy_quants.cpp:2086, k-quants 256)
_K_MULTIPLE = {"f16": 4, "f32": 4, "bf16": 8, "q4_K": 256, "q6_K": 256}
# the legacy h16m kernels' offset: ScaleHelperQ_0_1<8> / <16> give the block's m as dx * -8 / dx * -16
# (iqk_gemm_legacy_quants.cpp:151-171); q4_1 / q5_1 carry their own m (ScaleHelperQ_1, 238-266)
_H16M_OFFSET = {"q4_0": 8, "q5_0": 16}


def ik2026_path(weight_type: str, n: int, m: int, n_threads: int = 1, k: int | None = None) -> str:
    """The model the snapshot runs for an ``m``-row weight and ``n`` src1 rows of one matrix on ``n_threads``.

    ``k`` (the row length), when given, matters for float weights only: a K the iqk float kernels decline (not a
    multiple of 4, bf16: 8) runs ggml's own vec_dot, ``ik2026_vec_dot_avx2``. Repacking needs (iqk_mul_mat.cpp:514, 534-537): ``m / nth >= 32`` (integer division), ``ceil(m / nth) >= 16``,
    ``n`` at least ``REPACK_MIN_N`` and ``m`` a multiple of 8 (the r8 layouts' rows).
    """
    if weight_type in _FLOAT_PATH:
        if k is not None and k % _K_MULTIPLE[weight_type]:
            return "ik2026_vec_dot_avx2"
        return _FLOAT_PATH[weight_type]
    if weight_type not in _SMALL_N_PATH:
        raise ValueError(f"mul_mat_ik2026: weight type {weight_type!r} is not modelled; "
                         f"modelled: {', '.join(_WEIGHT_TYPES)}")
    repack = (m // n_threads >= 32 and -(-m // n_threads) >= 16 and n >= REPACK_MIN_N[weight_type]
              and m % 8 == 0)
    return _REPACK_PATH[weight_type] if repack else _SMALL_N_PATH[weight_type]


# -- float helpers ------------------------------------------------------------------------------------------

def _mul(a, b) -> np.ndarray:
    return (np.asarray(a, np.float32) * np.asarray(b, np.float32)).astype(np.float32)


def _add(a, b) -> np.ndarray:
    return (np.asarray(a, np.float32) + np.asarray(b, np.float32)).astype(np.float32)


def fold8(acc: np.ndarray) -> np.ndarray:
    """``hsum_float_8`` over the last axis (8 lanes): ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))."""
    t = _add(acc[..., :4], acc[..., 4:])
    return _add(_add(t[..., 0], t[..., 2]), _add(t[..., 1], t[..., 3]))


def _fold4(t: np.ndarray) -> np.ndarray:
    """``hsum_float_4``: (t0 + t2) + (t1 + t3)."""
    return _add(_add(t[..., 0], t[..., 2]), _add(t[..., 1], t[..., 3]))


# -- src1 in q8_2_x4 ----------------------------------------------------------------------------------------

def _q8_2_values(rows: np.ndarray, k: int):
    """q8_2_x4 rows (N, bytes) -> quants int32 (N, nb, 32), dy float32 (N, nb), s float32 (N, nb)."""
    n_rows, nb = rows.shape[0], k // 32
    g = nb // 4
    grp = np.ascontiguousarray(rows[:, : g * 144]).reshape(n_rows, g, 144)
    d = grp[..., :16].copy().view("<u2")  # (N, g, 8): 4 bf16 d then 4 int16 s
    q = grp[..., 16:].view(np.int8).reshape(n_rows, g * 4, 32)
    dy, s = d[..., :4].reshape(n_rows, -1), d[..., 4:].view("<i2").reshape(n_rows, -1)
    if nb > 4 * g:
        tail = np.ascontiguousarray(rows[:, g * 144:]).reshape(n_rows, nb - 4 * g, 36)
        dy = np.concatenate([dy, tail[..., :2].copy().view("<u2")[..., 0]], axis=1)
        s = np.concatenate([s, tail[..., 2:4].copy().view("<i2")[..., 0]], axis=1)
        q = np.concatenate([q, tail[..., 4:].view(np.int8)], axis=1)
    return q.astype(np.int32), fp.bf16_to_f32(dy), s.astype(np.float32)


def _isums(qx: np.ndarray, qy: np.ndarray, group: int) -> np.ndarray:
    """Exact int sums over consecutive ``group`` elements of each 32-block: (M, N, nb, 32 // group)."""
    m, nb, _ = qx.shape
    a = qx.reshape(m, nb, 32 // group, group).astype(np.int64)
    b = qy.reshape(qy.shape[0], nb, 32 // group, group).astype(np.int64)
    return np.einsum("mbjk,nbjk->mnbj", a, b, optimize=False).astype(np.float32)  # |sum| < 2**24: exact


# -- the kernels --------------------------------------------------------------------------------------------

def _f16_l8(xv: np.ndarray, yv: np.ndarray) -> np.ndarray:
    """``ik2026_f16_l8``: xv (M, K), yv (N, K) float32 -> (M, N)."""
    m, k = xv.shape
    acc = _mul(yv[None, :, 0:8], xv[:, None, 0:8])
    for e in range(8, k - k % 8, 8):
        acc = fp.fmaf(yv[None, :, e:e + 8], xv[:, None, e:e + 8], acc)
    if k % 8:  # load4Floats: 4 values in lanes 0..3, zeros in lanes 4..7
        ys = np.zeros((1, yv.shape[0], 8), np.float32)
        xs = np.zeros((m, 1, 8), np.float32)
        ys[0, :, :4], xs[:, 0, :4] = yv[:, k - 4:], xv[:, k - 4:]
        acc = fp.fmaf(ys, xs, acc)
    return fold8(acc)


def _legacy_h16(qx, dx, qy, dy, s, mx=None) -> np.ndarray:
    """``ik2026_q8_0_h16`` / ``_iq4_nl_h16`` (``mx`` None: qx signed) and the h16m paths ``ik2026_q4_0_h16m``,
    ``_q5_0_h16m``, ``_q4_1_h16m``, ``_q5_1_h16m`` (qx the unsigned stored values, ``mx`` the block's offset
    factor (M, nb): ``dx * -8``, ``dx * -16`` or the block's own m)."""
    m, nb = dx.shape
    n = dy.shape[0]
    s16 = _isums(qx, qy, 16)  # (M, N, nb, 2)
    s4 = _isums(qx, qy, 4)  # (M, N, nb, 8): the tail blocks' lanes
    d = _mul(dx[:, None, :], dy[None, :, :])  # (M, N, nb)
    if mx is not None:
        mterm = _mul(mx[:, None, :], _mul(dy, s)[None, :, :])
    acc = np.zeros((m, n, 8), np.float32)
    accm = np.zeros((m, n, 4), np.float32)
    g = nb // 4
    for i in range(g):
        blk = slice(4 * i, 4 * i + 4)
        dd = np.concatenate([d[..., blk], d[..., blk]], axis=-1)
        ss = np.concatenate([s16[..., blk, 0], s16[..., blk, 1]], axis=-1)
        acc = fp.fmaf(dd, ss, acc)
        if mx is not None:
            accm = _add(accm, mterm[..., blk])
    for b in range(4 * g, nb):
        acc = fp.fmaf(d[..., b:b + 1], s4[..., b, :], acc)
        if mx is not None:
            accm = _add(accm, _mul(mterm[..., b:b + 1], np.float32(0.25)))
    if mx is not None:
        return _fold4(_add(_add(acc[..., :4], acc[..., 4:]), accm))
    return fold8(acc)


def _r8_serial(qx, dx, qy, dy) -> np.ndarray:
    """``ik2026_q8_0_r8``: one float per (row, column), blocks in order."""
    sums = _isums(qx, qy, 32)[..., 0]
    d = _mul(dx[:, None, :], dy[None, :, :])
    acc = np.zeros(d.shape[:2], np.float32)
    for b in range(d.shape[2]):
        acc = fp.fmaf(d[..., b], sums[..., b], acc)
    return acc


def _q4_K_parts(rows: np.ndarray, k: int):
    """q4_K rows -> nibbles (M, nb*8, 32), d, dmin (M, nb), sc, mins (M, nb, 8) as float32."""
    q, sc, mn, d, dmin = pairs.decode_kquant(rows, "q4_K", k)
    m, nb = d.shape
    sc8 = sc.reshape(m, nb, 8, 32)[..., 0].astype(np.float32)
    return q.reshape(m, nb * 8, 32).astype(np.int32), d, dmin, sc8, mn.astype(np.float32)


def _q4_K_h16(rows, k, qy, dy, s) -> np.ndarray:
    """``ik2026_q4_K_h16``."""
    q, d, dmin, sc, mn = _q4_K_parts(rows, k)
    m, nb = d.shape
    n = dy.shape[0]
    s16 = _isums(q, qy, 16)  # (M, N, nb*8, 2)
    mins = -_mul(dmin[:, :, None], mn)  # (M, nb, 8); the negation is exact
    scales = _mul(d[:, :, None], sc)  # (M, nb, 8)
    my = _mul(dy, s)  # (N, nb*8)
    acc = np.zeros((m, n, 8), np.float32)
    for i in range(nb):
        acc = fp.fmaf(my[None, :, 8 * i:8 * i + 8], mins[:, None, i, :], acc)
        for j in range(2):
            sub = slice(8 * i + 4 * j, 8 * i + 4 * j + 4)
            e = _mul(scales[:, None, i, 4 * j:4 * j + 4], dy[None, :, sub])
            acc = fp.fmaf(np.concatenate([e, e], axis=-1),
                          np.concatenate([s16[:, :, sub, 0], s16[:, :, sub, 1]], axis=-1), acc)
    return fold8(acc)


def _q8_1_r8(q, dq, mq, qy, dy, s) -> np.ndarray:
    """``ik2026_q8_1_r8`` (``mul_mat_q8_1_r8_q8_2``): q (M, nb, 32) unsigned values, dq / mq (M, nb) the per-block
    scale and min as the f16 stored in q8_1_r8 (widened); per group of 4 blocks the 4 min terms first, then per
    block two FMAs (elements 0..15, 16..31). Blocks after the last full group of 4 are not visited at all
    (the kernel's loop runs ``nb / 4`` groups)."""
    s16 = _isums(q, qy, 16)
    sy = _mul(s, dy)  # (N, nb)
    acc = np.zeros((q.shape[0], dy.shape[0]), np.float32)
    for g in range(q.shape[1] // 4):
        for b in range(4 * g, 4 * g + 4):
            acc = fp.fmaf(mq[:, None, b], sy[None, :, b], acc)
        for b in range(4 * g, 4 * g + 4):
            e = _mul(dq[:, None, b], dy[None, :, b])
            acc = fp.fmaf(e, s16[..., b, 0], acc)
            acc = fp.fmaf(e, s16[..., b, 1], acc)
    return acc


def _q4_K_r8(rows, k, qy, dy, s) -> np.ndarray:
    """``ik2026_q4_K_r8``: q8_1_r8 scales rounded to f16, then :func:`_q8_1_r8`."""
    q, d, dmin, sc, mn = _q4_K_parts(rows, k)
    m = d.shape[0]
    dq = fp.f16_to_f32(fp.f32_to_f16(_mul(d[:, :, None], sc))).reshape(m, -1)  # (M, nb*8)
    mq = fp.f16_to_f32(fp.f32_to_f16(_mul(-dmin[:, :, None], mn))).reshape(m, -1)
    return _q8_1_r8(q, dq, mq, qy, dy, s)


def _q6_K_parts(rows: np.ndarray, k: int):
    """q6_K rows -> signed values q - 32 (M, nb*8, 32), d (M, nb), 16-element scales (M, nb, 16) float32."""
    q, sc, _, d, _ = pairs.decode_kquant(rows, "q6_K", k)
    m, nb = d.shape
    sc16 = sc.reshape(m, nb, 16, 16)[..., 0]
    return (q.astype(np.int32) - 32).reshape(m, nb * 8, 32), d, sc16


def _q6_K_h16(rows, k, qy, dy) -> np.ndarray:
    """``ik2026_q6_K_h16``."""
    q, d, sc = _q6_K_parts(rows, k)
    m, nb = d.shape
    s16 = _isums(q, qy, 16)
    scales = _mul(d[:, :, None], sc.astype(np.float32))  # (M, nb, 16)
    acc = np.zeros((m, dy.shape[0], 8), np.float32)
    for i in range(nb):
        for j in range(2):
            sub = slice(8 * i + 4 * j, 8 * i + 4 * j + 4)  # the 4 y blocks of this half
            lo = _mul(scales[:, None, i, 8 * j:8 * j + 8:2], dy[None, :, sub])  # sub-blocks 8j + 2k
            hi = _mul(scales[:, None, i, 8 * j + 1:8 * j + 8:2], dy[None, :, sub])  # 8j + 2k + 1
            acc = fp.fmaf(np.concatenate([lo, hi], axis=-1),
                          np.concatenate([s16[:, :, sub, 0], s16[:, :, sub, 1]], axis=-1), acc)
    return fold8(acc)


def _q6_K_requant(rows, k):
    """``iqk_convert_q6_k_q8_0_r8`` per row: int8 values (M, nb*8, 32) and f16-rounded scales (M, nb*8)."""
    q, d, sc = _q6_K_parts(rows, k)
    m, nb = d.shape
    v = q * np.repeat(sc.astype(np.int32), 16, axis=-1).reshape(m, nb * 8, 32)  # |v| <= 32 * 128: int16
    mx = (np.abs(v).max(axis=-1).astype(np.float32) / np.float32(127)).astype(np.float32)
    dq = fp.f16_to_f32(fp.f32_to_f16(_mul(np.repeat(d, 8, axis=1), mx)))
    big = mx > np.float32(1e-9)
    with np.errstate(divide="ignore"):
        inv = np.where(big, np.float32(1) / np.where(big, mx, np.float32(1)), np.float32(0)).astype(np.float32)
    q8 = np.clip(np.rint(_mul(inv[..., None], v.astype(np.float32))), -128, 127).astype(np.int32)
    return np.where(big[..., None], q8, 0), dq


# -- the op -------------------------------------------------------------------------------------------------

def _matrix_rows(t: Tensor, i2: int, i3: int) -> np.ndarray:
    if t.ne[1] == 0:
        return np.zeros((0, t.row_size()), np.uint8)
    return np.stack([t.row(i1, i2, i3) for i1 in range(t.ne[1])])


def _src1_values(rows: np.ndarray, b_type: str, k: int) -> np.ndarray:
    """src1 rows -> float32 (N, K): f32 as is, the others through their ``to_float`` (exact for f16/bf16)."""
    rows = np.ascontiguousarray(rows)
    if b_type == "f32":
        return rows.view(np.float32).reshape(rows.shape[0], k)
    return Tensor.from_bytes(rows, b_type, (k, rows.shape[0])).to_numpy().reshape(rows.shape[0], k)


class MulMat_ik2026:
    """``ggml_mul_mat`` of the ik-llama-cpp-python 0.1.5 snapshot on AVX2 (see the module docstring).

    ``n_threads`` only selects the path (:func:`ik2026_path`); ``path`` forces one of ``PATHS`` (for studies: the
    snapshot itself never runs a path other than the one :func:`ik2026_path` names).
    """

    version = "MulMat_ik2026"

    def __init__(self, n_threads: int = 1, path: str | None = None):
        if not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
            raise ValueError(f"{self.version}: n_threads must be an int >= 1, got {n_threads!r}")
        if path is not None and path not in PATHS:
            raise ValueError(f"{self.version}: unknown path {path!r}; known: {', '.join(PATHS)}")
        self.n_threads = int(n_threads)
        self.path = path

    def _check(self, a: Tensor, b: Tensor) -> None:
        check_tensor(self.version, "a (src0)", a)
        check_tensor(self.version, "b (src1)", b)
        if a.type not in _WEIGHT_TYPES:
            raise ValueError(f"{self.version}: weight type {a.type} is not modelled; modelled: "
                             f"{', '.join(_WEIGHT_TYPES)}")
        if b.type not in _SRC1_TYPES:
            raise ValueError(f"{self.version}: src1 type {b.type} is not modelled; modelled: {', '.join(_SRC1_TYPES)}")
        ragged = a.ne[0] % _K_MULTIPLE.get(a.type, 32) != 0  # the iqk kernels decline this K
        if a.type == "f32" and (b.type not in ("f32", "f16") or (ragged and b.type != "f32")):
            # iqk declines and src1 would be converted to the vec_dot type f32, whose type_traits have no
            # from_float (ggml.c:680-689): the snapshot calls a null pointer (SIGSEGV)
            raise ValueError(f"{self.version}: an f32 weight with a {b.type} src1 (K = {a.ne[0]}) crashes the "
                             f"snapshot (no from_float for f32); nothing to model")
        if ragged and a.type in _FLOAT_PATH and b.type != a.type:
            # iqk declines, src1 is converted to the vec_dot type (the weight's type), iqk declines again and
            # ggml_compute_forward_mul_mat returns without computing anything (ggml.c:16990-17018)
            raise ValueError(f"{self.version}: {a.type} weight, {b.type} src1, K = {a.ne[0]}: the snapshot "
                             f"never writes dst here; nothing to model")
        if a.ne[0] != b.ne[0]:
            raise ValueError(f"{self.version}: a.ne[0] ({a.ne[0]}) must equal b.ne[0] ({b.ne[0]})")
        if ragged and a.type not in _FLOAT_PATH:
            raise ValueError(f"{self.version}: K = {a.ne[0]} is not handled by the iqk kernels of {a.type}")
        if a.nb[0] != a.type_size or b.nb[0] != b.type_size:
            raise ValueError(f"{self.version}: rows of a and b must have contiguous elements")
        if b.ne[2] % a.ne[2] or b.ne[3] % a.ne[3]:
            raise ValueError(f"{self.version}: b.ne[2:4] {b.ne[2:]} must be multiples of a.ne[2:4] {a.ne[2:]}")
        r2 = b.ne[2] // a.ne[2]
        if b.ne[3] == 1 and b.ne[1] == 1 and (r2 > 1 or (b.ne[2] > 1 and b.ne[2] == a.ne[2])):
            # iqk_mul_mat_4d's special cases for one src1 row per matrix (iqk_mul_mat.cpp:632-691)
            raise NotImplementedError(f"{self.version}: N == 1 with several src1 matrices is not modelled")

    def _one(self, x: np.ndarray, wt: str, y_rows: np.ndarray, bt: str, k: int, nth: int) -> np.ndarray:
        m, n = x.shape[0], y_rows.shape[0]
        path = self.path or ik2026_path(wt, n, m, nth, k)
        if path == "ik2026_vec_dot_avx2":  # src1 is the weight's type here (_check)
            return vec_dot(x, wt, y_rows, bt, k, "ggml_x86_avx2")
        yv = _src1_values(y_rows, bt, k)
        if wt == "f16":
            if bt not in ("f32", "f16"):  # converted to the vec_dot type f16 (RNE) first
                yv = fp.f16_to_f32(fp.f32_to_f16(yv))
            return _f16_l8(fp.f16_to_f32(np.ascontiguousarray(x).view("<u2")).reshape(m, k), yv)
        if wt == "f32":  # f32 / f16 src1 as given (_check refuses the others)
            return _f16_l8(np.ascontiguousarray(x).view(np.float32).reshape(m, k), yv)
        if wt == "bf16":
            if bt not in ("f32", "bf16"):  # converted to the vec_dot type bf16 (RNE) first
                yv = fp.bf16_to_f32(fp.f32_to_bf16(yv))
            return _f16_l8(fp.bf16_to_f32(np.ascontiguousarray(x).view("<u2")).reshape(m, k), yv)
        qy, dy, s = _q8_2_values(quantize(yv, "q8_2_x4", variant="iqk"), k)
        if wt in ("q4_K", "q6_K"):
            if path == "ik2026_q4_K_h16":
                return _q4_K_h16(x, k, qy, dy, s)
            if path == "ik2026_q4_K_r8":
                return _q4_K_r8(x, k, qy, dy, s)
            if path == "ik2026_q6_K_h16":
                return _q6_K_h16(x, k, qy, dy)
            q8, dq = _q6_K_requant(x, k)
            return _r8_serial(q8, dq, qy, dy)
        qx, dx, mx = pairs.decode_x(x, wt, k)
        qx = qx.astype(np.int32)
        if path == "ik2026_q8_0_r8":  # q8_0_r8 stores the signed values (q4_0: nib - 8, q5_0: q - 16)
            return _r8_serial(qx, dx, qy, dy)
        if path == "ik2026_q8_1_r8":  # q4_1 / q5_1: d, m and the unsigned values copied
            return _q8_1_r8(qx, dx, mx, qy, dy, s)
        if not path.endswith("_h16m"):
            return _legacy_h16(qx, dx, qy, dy, s)
        if wt in _H16M_OFFSET:  # the kernel sees the unsigned stored values; the offset is an m term
            off = _H16M_OFFSET[wt]
            return _legacy_h16(qx + off, dx, qy, dy, s, mx=_mul(dx, np.float32(-off)))
        return _legacy_h16(qx, dx, qy, dy, s, mx=mx)

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        self._check(a, b)
        k, m = a.ne[0], a.ne[1]
        n, ne12, ne13 = b.ne[1], b.ne[2], b.ne[3]
        r2, r3 = ne12 // a.ne[2], ne13 // a.ne[3]
        # matrices are dealt to gcd(ne12*ne13, nth) thread groups, each splitting its matrix's rows
        # (iqk_mul_mat.cpp:693-707)
        nth = self.n_threads // int(np.gcd(ne12 * ne13, self.n_threads))
        dst = Tensor.zeros("f32", (m, n, ne12, ne13))
        out = dst.storage()
        step = max(1, (1 << 21) // max(1, n * k))  # weight rows per pass: bounds the int temporaries
        for i13 in range(ne13):
            for i12 in range(ne12):
                x = _matrix_rows(a, i12 // r2, i13 // r3)
                y = _matrix_rows(b, i12, i13)
                res = np.empty((m, n), np.float32)
                path = self.path or ik2026_path(a.type, n, m, nth, k)
                for i in range(0, m, step):
                    res[i:i + step] = MulMat_ik2026(path=path)._one(x[i:i + step], a.type, y, b.type, k, 1)
                out[i13, i12] = res.T
        return dst


def mul_mat_ik2026(a: Tensor, b: Tensor, *, n_threads: int = 1) -> Tensor:
    """``ggml_mul_mat(a, b)`` as the ik-llama-cpp-python 0.1.5 snapshot computes it on AVX2 (no AVX-512/VNNI)."""
    return MulMat_ik2026(n_threads=n_threads)(a, b)
