"""flash_attn_ext as the 2026 ik_llama.cpp snapshot runs it on an AVX2+FMA CPU (iqk), bit for bit.

Models the CPU flash attention of the ik_llama.cpp source vendored in the **ik-llama-cpp-python 0.1.5 sdist**
(``vendor/ik_llama.cpp``), built for **x86-64 with AVX2+FMA+F16C and no AVX-512** (so neither ``__AVX512F__`` nor
``HAVE_FANCY_SIMD`` nor a 256-bit VNNI is defined). Verified byte for byte against that build's native
``libggml.so`` on an AMD EPYC (Zen 3). File references below are ``ggml/src/...`` of that sdist; the facts and a
path table are in docs/facts/ik-snapshot-fa.md. Supported here: q f32; K and V f16 or q8_0; (Dk, Dv) = (192, 128)
or (576, 512); an f16 mask (required); ``max_bias = 0``; ``softcap = 0``; ``n_kv % 32 == 0``.

**Which code runs** (``ggml.c:21731`` -> ``iqk_flash_attn_noalibi``, ``iqk/iqk_flash_attn.cpp:142``):

1. *SWA trim* (``iqk_flash_attn.cpp:210-233``): one query row, ``n_head > n_head_kv``, ``n_kv > 256``: leading and
   trailing KV columns whose mask bits (row 0) are non-zero are dropped, to a multiple of 32, if at most 3/4 remain.
2. *K repack* (``iqk_flash_attn.cpp:237-247``, ``iqk/iqk_mul_mat.cpp:1251-1259``): with ``n_q >= 8`` a q8_0 K
   (Dk % 32 == 0, rows % 8 == 0) is repacked to Q8_0_R8 (a byte move) and its K·Q dots use the R8 kernel below.
3. *MLA decode split* (``iqk_flash_attn.cpp:262-309``): one query row, ``n_head_kv == 1 < n_head``,
   ``n_kv/32 >= 4·nth``: thread t runs the kernel on its own contiguous range of ``ceil(n_kv/32/nth)`` (or one
   less) 32-row KV steps with the heads as the kernel's query rows (all reading mask row 0), and the partial
   (M, S, acc) are merged in thread order by ``accumulate_qkv`` (``:30-47``). **The bytes depend on nth here.**
   The other one-query splits (``:310-378`` by gcd, ``:381-452`` GQA chunks) are also modelled.
4. Otherwise (``:456-489``): ``ntg = nth / gcd(n_head·ne3, nth)`` threads share a head, each taking
   ``ceil(n_q/ntg)`` consecutive queries; the kernel runs once per (head, thread slice). The per-row arithmetic
   does not depend on nth; only the query slicing (and so the q_step chunks) could, when ``ntg > 1``.

**The kernel** (``iqk_flash_attn_impl``, ``iqk/iqk_mul_mat.cpp:1364-1432``; it needs a mask and ``nk % 32 == 0``):

* k_step: 32 for 576/512 (``fa/iqk_fa_576_512.cpp:119``); 192/128: 128 if nk % 128 == 0, else 64 if
  nk % 64 == 0, else 32 (``fa/iqk_fa_192_128.cpp:31-41``).
* q_step (rows handled together): 576/512 takes 16·⌊nq/16⌋ rows in steps of 16, then 8s, 4s, then 3, 2 or 1
  (``fa/iqk_fa_576_512.cpp:23-51``); 192/128 (``fa/iqk_fa_templates.h:2054-2105``): with nk >= 512, steps of 64
  (for 128·⌊nq/128⌋ rows, then 64), 32, 16; then exactly 12 rows as one step; else 8s, *or* 4s, *or* 2s;
  the rest one row at a time.
* Block skipping (``iqk_fa_templates.h:1361-1366``, ``:1426-1431``, ``:1457-1461``): for each chunk of q_step rows
  the **last** row's mask is probed at the first column of each k_step block, from the end: trailing blocks whose
  probe's f16 bits are non-zero are skipped for every row of the chunk.
* K·Q (one float per (query, key)):
    - f16 K (``iqk/iqk_gemm_floats.cpp:665-699, 117-140, 72-78, 92-94``): q stays f32, K is widened; two FMA
      chains in index order, A over the indices i with i mod 8 in 0..3 and B over 4..7, then ``A + B``.
    - q8_0 K: q is quantized to **q8_2** x4 rows (``HelperQ80::block_q8`` on AVX2, ``iqk_fa_templates.h:230-232``;
      ``quantize_row_q8_2_x4``, ``iqk/iqk_quantize.cpp:1090``, AVX2 body ``:987-1077``): per 32-block
      ``d = bf16_rne(amax / 127)``, ``q = rint(x · (1/d))``. Block integer dots are exact; the float part is
        * R8 kernel (``iqk/iqk_gemm_legacy_quants.cpp:1670-1755``; used when K was repacked, or when the kernel
          is called with exactly one chunk of q_step >= 4 rows, ``iqk_fa_templates.h:1417-1441``):
          ``acc = fma(dK_b·dQ_b, Σ_b, acc)`` over blocks b in order from 0;
        * lanes kernel (``mul_mat_qX_0_q8_0_T<Q8_0_Unpacker, n, block_q8_2>``, ``:399-418``, ``AccumT`` ``:297-330``,
          ``Sum4`` ``:47-66``; all other q8_0 calls): 8 float lanes. Blocks in groups of 4: lane j (0..3) adds
          ``fma(dK·dQ, Σ bytes 0..15 of block 4g+j)``, lane 4+j the same over bytes 16..31; the ``nb % 4`` trailing
          blocks add, in lane l (0..7), their bytes 4l..4l+3. Then ``hsum_float_8``: halves 8 -> 4 -> 2 -> 1.
* Softmax per block (``FlashMS``, ``iqk_fa_templates.h:745-785, 872-879, 905-917``): ``s = scale · (kq + mask)``
  (the mask is **added**, not used as a binary select, on AVX2), two roundings; ``smax`` its max. If
  ``smax == -inf``: nothing changes (an exp of -inf is 0 below). If ``smax > M``: with ``M > -inf``,
  ``ms = expf(M - smax)`` (libm), ``S *= ms`` and later ``acc *= ms``; with ``M == -inf``, S and acc restart at 0;
  ``M = smax``. Then ``p = v_expf(s - M)`` (the AVX2 polynomial, ``iqk/iqk_utils.h:170-206`` = :func:`.vexp.v_expf_avx2`)
  and ``S += Σp``: the k_step/8 vectors of 8 added in order, then ``hsum_float_8``.
* V (``FlashQKV::accumulate_qkv``, ``iqk_fa_templates.h:964-1091``): ``acc[d] = fma(V[l][d], p[l], acc[d])`` for
  the rows l of the block in order; f16 V widened, q8_0 V as ``d · q`` rounded to f32 (``:240-258``).
* End (``:1139-1164``): ``GGML_ASSERT(S > 0)``, ``out = (1/S) · acc``. Split paths instead store (M, S, acc)
  (``:1166-1192``) and ``accumulate_qkv`` merges chunk c into (M, S, R): if ``M_c > M`` (M > -inf):
  ``c = (float) exp((double)(M - M_c))`` (C's double ``exp``, *not* ``expf``: they differ now and then),
  ``S = fma(c, S, S_c)``, ``R = fma(c, R, R_c)``; else ``c = exp(M_c - M)`` likewise,
  ``S = fma(c, S_c, S)``, ``R = fma(c, R_c, R)`` (GCC contracts ``c*x + y`` to FMA); then ``R *= (S > 0 ? 1/S : 1)``.

Everything float is element-wise and rounded once per step; the loops run over the reduction axes only (Dk,
KV blocks, KV rows), vectorised over all query rows.
"""

from __future__ import annotations

import math

import numpy as np

from mlaref.reference import fp, libm
from mlaref.reference.ops.vexp import v_expf_avx2
from mlaref.reference.tensor import Tensor

__all__ = [
    "BUILD",
    "MASK_PAD",
    "SNAPSHOT",
    "flash_attn_iqk2026",
    "k_step_for",
    "kq_f16",
    "kq_q8_0_lanes",
    "kq_q8_0_r8",
    "plan_kernel_rows",
    "q_steps",
    "quantize_q8_2",
    "thread_path",
]

SNAPSHOT = "ik_llama.cpp vendored in ik-llama-cpp-python 0.1.5 (sdist)"
BUILD = "x86-64 AVX2+FMA+F16C, no AVX-512 (AMD Zen 3)"
MASK_PAD = 16  # GGML_KQ_MASK_PAD, ggml/include/ggml.h:2412; asserted by ggml_flash_attn_ext, ggml/src/ggml.c:10166

_F32 = np.float32
_F64 = np.float64
_NEG_INF = _F32(-np.inf)
_LOW29 = np.uint64((1 << 29) - 1)
_HALF29 = np.uint64(1 << 28)
_SUPPORTED = ((192, 128), (576, 512))


# ---------------------------------------------------------------------------------------------------------------
# float helpers


def _fma(a, b, c) -> np.ndarray:
    """float32 ``fma(a, b, c)`` (one rounding), as :func:`mlaref.reference.fp.fmaf` but faster.

    The product of two floats is exact in float64, so ``s = a·b + c`` in float64 is rounded at most once. Rounding
    ``s`` to float32 is then the correctly rounded FMA unless ``s`` landed exactly on a float32 rounding midpoint
    (low 29 bits of its significand = 2^28) or lies in the float32 subnormal range; only those elements take the
    exact round-to-odd path of ``fp.fmaf``."""
    s = np.multiply(a, b, dtype=_F64)
    s += c
    r = s.astype(_F32)
    bits = s.view(np.uint64)
    suspect = (bits & _LOW29) == _HALF29
    suspect |= (np.abs(r) < _F32(2.0 ** -125)) & (r != 0)
    if suspect.any():
        A, B, C = np.broadcast_arrays(np.asarray(a, _F32), np.asarray(b, _F32), np.asarray(c, _F32))
        r[suspect] = fp.fmaf(A[suspect], B[suspect], C[suspect])
    return r


def _hsum8(lanes: list) -> np.ndarray:
    """``hsum_float_8`` (``iqk/iqk_common.h:229-231`` with ``hsum_float_4``): halves 8 -> 4 -> 2 -> 1."""
    v = list(lanes)
    while len(v) > 1:
        h = len(v) // 2
        v = [(v[i] + v[i + h]).astype(_F32) for i in range(h)]
    return v[0]


# ---------------------------------------------------------------------------------------------------------------
# Q conversion and the K·Q kernels


def quantize_q8_2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``quantize_row_q8_2_x4`` on AVX2 (``iqk/iqk_quantize.cpp:987-1077``) for rows ``x`` (R, D), D % 32 == 0.

    Per block of 32: ``amax`` = max |x| (exact), ``d = amax / 127.f`` (float), rounded to bf16 (RNE,
    ``GGML_FP32_TO_BF16``) and widened back; ``id = d > 0 ? 1/d : 0``; ``q = rint(x·id)`` (``_mm256_round_ps``,
    nearest even). Returns the widened scales (R, D/32) float32 and the quants (R, D/32, 32) int8. (The x4 byte
    interleaving and the stored block sums do not affect the dots modelled here; a private helper until
    ``reference/types`` has q8_2_x4.)"""
    x = np.asarray(x, _F32)
    R, D = x.shape
    xb = x.reshape(R, D // 32, 32)
    amax = np.max(np.abs(xb), axis=2)
    d = fp.bf16_to_f32(fp.f32_to_bf16((amax / _F32(127)).astype(_F32)))
    with np.errstate(divide="ignore"):
        inv = np.where(d > 0, (_F32(1) / d).astype(_F32), _F32(0)).astype(_F32)
    q = np.rint((xb * inv[:, :, None]).astype(_F32))
    return d, np.clip(q, -128, 127).astype(np.int8)  # the pack instructions saturate; |q| <= 127 in practice


def kq_f16(qf: np.ndarray, kf: np.ndarray) -> np.ndarray:
    """K·Q for f16 K on AVX2: ``q`` (R, D) f32 rows, ``kf`` (n, D) the widened K rows -> (R, n) float32.

    ``mul_mat_Qx_Qy_MxN_fa4`` (``iqk/iqk_gemm_floats.cpp:256-273``): after the 4x4 transposition of ``load_r4``
    (``:117-140``) lane r of the low half accumulates, by ``acc_r4`` (``:72-78``), ``fma(k[i], q[i], acc)`` for the
    indices i ≡ 0..3 (mod 8) in order and the high half those ≡ 4..7; ``hsum_r4`` (``:92-94``) adds the halves."""
    R, D = qf.shape
    a = np.zeros((R, kf.shape[0]), _F32)
    b = np.zeros_like(a)
    for i in range(0, D, 8):
        for e in range(4):
            a = _fma(qf[:, i + e, None], kf[None, :, i + e], a)
            b = _fma(qf[:, i + 4 + e, None], kf[None, :, i + 4 + e], b)
    return (a + b).astype(_F32)


def _int_dot(qq: np.ndarray, kq: np.ndarray) -> np.ndarray:
    """Exact integer dot products (R, m) x (n, m) -> (R, n) as float64 (every partial sum is far below 2^53)."""
    return np.matmul(qq.astype(_F64), kq.astype(_F64).T)


def kq_q8_0_r8(qd, qq, kd, kqs) -> np.ndarray:
    """K·Q of the Q8_0_R8 kernel ``mul_mat_q8_0_r8_q8_2`` (AVX2, ``iqk/iqk_gemm_legacy_quants.cpp:1670-1755``).

    ``qd`` (R, nb) / ``qq`` (R, nb, 32): the q8_2 rows; ``kd`` (n, nb) / ``kqs`` (n, nb, 32): K's q8_0 scales
    (widened f16) and quants. Per block b in order: ``acc = fma(f32(dK_b · dQ_b), float(Σ_b), acc)`` from 0."""
    acc = np.zeros((qd.shape[0], kd.shape[0]), _F32)
    for b in range(qd.shape[1]):
        d = (kd[None, :, b] * qd[:, b, None]).astype(_F32)
        acc = _fma(d, _int_dot(qq[:, b], kqs[:, b]).astype(_F32), acc)
    return acc


def kq_q8_0_lanes(qd, qq, kd, kqs) -> np.ndarray:
    """K·Q of ``mul_mat_qX_0_q8_0_T<Q8_0_Unpacker, n, block_q8_2>`` (AVX2; arguments as :func:`kq_q8_0_r8`).

    8 float lanes from 0 (``AccumT::compute``, ``iqk/iqk_gemm_legacy_quants.cpp:297-330``). Full groups of 4
    blocks: ``Sum4`` (``:47-66``, ``can_pack = false``) gives lane j (0..3) block 4g+j's integer sum over bytes
    0..15 and lane 4+j over bytes 16..31; each lane adds ``fma(dK·dQ, sum)``. The ``nb % 4`` blocks after them:
    lane l adds the block's bytes 4l..4l+3 (``madd(maddubs)``). Then ``hsum_float_8``."""
    R, nb = qd.shape
    n = kd.shape[0]
    lanes = [np.zeros((R, n), _F32) for _ in range(8)]
    for b in range(nb):
        d = (kd[None, :, b] * qd[:, b, None]).astype(_F32)
        if b < 4 * (nb // 4):
            j = b % 4
            for h in range(2):
                part = _int_dot(qq[:, b, 16 * h:16 * h + 16], kqs[:, b, 16 * h:16 * h + 16]).astype(_F32)
                lanes[j + 4 * h] = _fma(d, part, lanes[j + 4 * h])
        else:
            for lane in range(8):
                part = _int_dot(qq[:, b, 4 * lane:4 * lane + 4], kqs[:, b, 4 * lane:4 * lane + 4]).astype(_F32)
                lanes[lane] = _fma(d, part, lanes[lane])
    return _hsum8(lanes)


# ---------------------------------------------------------------------------------------------------------------
# blocking


def k_step_for(Dk: int, Dv: int, nk: int) -> int:
    """The KV block size of the kernel (``fa/iqk_fa_576_512.cpp:119``, ``fa/iqk_fa_192_128.cpp:31-41``)."""
    if (Dk, Dv) == (576, 512):
        return 32
    return 128 if nk % 128 == 0 else 64 if nk % 64 == 0 else 32


def q_steps(Dk: int, Dv: int, nq: int, nk: int) -> list[tuple[int, int]]:
    """``[(q_step, rows), ...]`` in row order: which ``FlashAttn<Dk, Dv, q_step, k_step>`` handles which rows
    (``fa/iqk_fa_576_512.cpp:23-51``; ``fa/iqk_fa_templates.h:2054-2105``)."""
    out: list[tuple[int, int]] = []

    def take(rows: int, step: int) -> bool:
        nonlocal nq
        n = rows * (nq // rows)
        out.append((step, n))
        nq -= n
        return nq == 0

    if (Dk, Dv) == (576, 512):
        for s in (16, 8, 4):
            if nq >= s and take(s, s):
                return out
        if nq > 0:
            out.append((nq, nq) if nq in (2, 3) else (1, 1))
        return out
    if nk >= 512:
        for rows, s in ((128, 64), (64, 64), (32, 32), (16, 16)):
            if nq >= rows and take(rows, s):
                return out
    if nq == 12:
        return out + [(12, 12)]
    for s in (8, 4, 2):  # an if / else-if chain: only the first that fits
        if nq >= s:
            if take(s, s):
                return out
            break
    return out + [(1, nq)]


def plan_kernel_rows(Dk, Dv, mask_bits: np.ndarray, k_type: str, repacked: bool):
    """For one kernel call on ``nq`` rows whose mask rows (f16 bits) are ``mask_bits`` (nq, nk): the k_step, the
    number of KV blocks each row processes (the block-skip rule, module docstring) and, for a q8_0 K, which K·Q
    kernel each row uses (``"r8"`` or ``"lanes"``; f16: ``"f16"``)."""
    nq, nk = mask_bits.shape
    ks = k_step_for(Dk, Dv, nk)
    nblocks = np.zeros(nq, np.int64)
    kernel = np.empty(nq, object)
    r0 = 0
    for step, rows in q_steps(Dk, Dv, nq, nk):
        if k_type == "f16":
            kern = "f16"
        else:  # iqk_fa_templates.h:1417-1418: one full chunk of >= 4 rows is repacked block by block
            kern = "r8" if repacked or (step >= 4 and rows == step) else "lanes"
        for c0 in range(r0, r0 + rows, step):
            probe = mask_bits[c0 + step - 1]
            ik = nk - ks
            while ik >= 0 and probe[ik] != 0:
                ik -= ks
            nblocks[c0:c0 + step] = (ik + ks) // ks
            kernel[c0:c0 + step] = kern
        r0 += rows
    return ks, nblocks, kernel


# ---------------------------------------------------------------------------------------------------------------
# the kernel's per-row state


def _state(kq, mvals, V, ks, nblocks, scale):
    """(M, S, acc) after the blocks of each row: ``kq`` (R, n) K·Q, ``mvals`` (R, n) mask values, ``V`` (n, Dv)."""
    R = kq.shape[0]
    M = np.full(R, _NEG_INF, _F32)
    S = np.zeros(R, _F32)
    acc = np.zeros((R, V.shape[1]), _F32)
    for blk in range(int(nblocks.max(initial=0))):
        rows = np.nonzero(nblocks > blk)[0]
        c0, c1 = blk * ks, (blk + 1) * ks
        s = (scale * (kq[rows, c0:c1] + mvals[rows, c0:c1]).astype(_F32)).astype(_F32)
        smax = np.max(s, axis=1)
        Mr, Sr, ar = M[rows], S[rows], acc[rows]
        grow = (smax != _NEG_INF) & (smax > Mr)
        rescale = grow & (Mr != _NEG_INF)
        with np.errstate(invalid="ignore"):
            ms = libm.expf(np.where(rescale, Mr - smax, 0).astype(_F32))
        Sr = np.where(rescale, (Sr * ms).astype(_F32), np.where(grow, _F32(0), Sr)).astype(_F32)
        ar = np.where(rescale[:, None], (ms[:, None] * ar).astype(_F32), np.where(grow[:, None], _F32(0), ar))
        Mr = np.where(grow, smax, Mr).astype(_F32)
        live = Mr != _NEG_INF
        with np.errstate(invalid="ignore"):
            p = np.where(live[:, None], v_expf_avx2(np.where(live[:, None], s - Mr[:, None], 0).astype(_F32)), 0)
        p = p.astype(_F32)
        vec = p[:, 0:8]
        for j in range(8, ks, 8):
            vec = (vec + p[:, j:j + 8]).astype(_F32)
        Sr = np.where(live, (Sr + _hsum8([vec[:, i] for i in range(8)])).astype(_F32), Sr)
        for l in range(ks):
            ar = _fma(V[c0 + l][None, :], p[:, l, None], ar)
        M[rows], S[rows], acc[rows] = Mr, Sr, ar
    return M, S, acc


class _KV:
    """One KV head: K·Q inputs (widened f16, or q8_0 scales and quants) and V values (n_kv, Dv) float32."""

    def __init__(self, k: Tensor, v: Tensor, ik2: int, ik3: int, iv2: int, iv3: int):
        self.k_type = k.type
        Dk = k.ne[0]
        rows = np.ascontiguousarray(k.raw()[ik3, ik2])  # (n_kv, row bytes)
        if k.type == "f16":
            self.kf = fp.f16_to_f32(rows.view(np.uint16))
        else:
            blocks = rows.reshape(rows.shape[0], Dk // 32, 34)
            self.kd = fp.f16_to_f32(np.ascontiguousarray(blocks[:, :, :2]).view(np.uint16)[:, :, 0])
            self.kqs = np.ascontiguousarray(blocks[:, :, 2:]).view(np.int8)
        self.V = v.to_numpy()[iv3, iv2]

    def kq(self, qrows: np.ndarray, kernel: np.ndarray, lo: int, hi: int) -> np.ndarray:
        if self.k_type == "f16":
            return kq_f16(qrows, self.kf[lo:hi])
        qd, qq = quantize_q8_2(qrows)
        out = np.empty((qrows.shape[0], hi - lo), _F32)
        for name, fn in (("r8", kq_q8_0_r8), ("lanes", kq_q8_0_lanes)):
            sel = np.nonzero(kernel == name)[0]
            if sel.size:
                out[sel] = fn(qd[sel], qq[sel], self.kd[lo:hi], self.kqs[lo:hi])
        return out


def _run(kv: _KV, jobs, Dk, Dv, scale, repacked):
    """Run kernel calls that share one KV head and one KV range, batched over their rows: ``jobs`` =
    [(qrows (r, Dk), mask bits (r, n), mask values (r, n), lo, hi), ...] for KV rows [lo, hi). Each job is planned
    as its own call (its own q_step chunks). Returns the unnormalised (M, S, acc) of each job's rows."""
    lo, hi = jobs[0][3], jobs[0][4]
    plans = [plan_kernel_rows(Dk, Dv, mb, kv.k_type, repacked) for _, mb, _, _, _ in jobs]
    ks = plans[0][0]
    Q = np.concatenate([j[0] for j in jobs])
    mv = np.concatenate([j[2] for j in jobs])
    nblocks = np.concatenate([p[1] for p in plans])
    kernel = np.concatenate([p[2] for p in plans])
    kq = kv.kq(Q, kernel, lo, hi)
    M, S, acc = _state(kq, mv, kv.V[lo:hi], ks, nblocks, scale)
    out, r = [], 0
    for j in jobs:
        n = j[0].shape[0]
        out.append((M[r:r + n], S[r:r + n], acc[r:r + n]))
        r += n
    return out


def _exp_double(x: np.ndarray) -> np.ndarray:
    """``float c = exp(x)`` with a float ``x`` in iqk_flash_attn.cpp (``:37``, ``:43``): only C's double ``exp``
    is visible there, so x is widened, libm's double ``exp`` (Python's ``math.exp``) runs, and the result is
    rounded to float. This differs from ``expf`` now and then (measured: x = -4.5219584)."""
    x = np.asarray(x, _F32)
    return np.array([math.exp(t) for t in x.astype(_F64).ravel().tolist()], _F64).astype(_F32).reshape(x.shape)


def _merge(parts):
    """``accumulate_qkv`` (``iqk/iqk_flash_attn.cpp:30-47``) over partial (M, S, R) in order, then
    ``R *= S > 0 ? 1/S : 1``. (A row whose every part has M = -inf keeps R = 0 here; upstream leaves dst as it was.)"""
    M, S, R = None, None, None
    for Mc, Sc, Rc in parts:
        if M is None:
            M = np.full_like(Mc, _NEG_INF)
            S = np.zeros_like(Sc)
            R = np.zeros_like(Rc)
        skip = Mc == _NEG_INF
        first = ~skip & (M == _NEG_INF)
        up = ~skip & ~first & (Mc > M)
        down = ~skip & ~first & ~up
        with np.errstate(invalid="ignore"):
            c = _exp_double(np.where(up, M - Mc, np.where(down, Mc - M, 0)).astype(_F32))
        S = np.where(first, Sc, np.where(up, _fma(c, S, Sc), np.where(down, _fma(c, Sc, S), S))).astype(_F32)
        R = np.where(first[:, None], Rc,
                     np.where(up[:, None], _fma(c[:, None], R, Rc),
                              np.where(down[:, None], _fma(c[:, None], Rc, R), R))).astype(_F32)
        M = np.where(first | up, Mc, M).astype(_F32)
    with np.errstate(divide="ignore"):
        norm = np.where(S > 0, (_F32(1) / S).astype(_F32), _F32(1)).astype(_F32)
    return (R * norm[:, None]).astype(_F32)


def _normalize(S, acc):
    """``normalize_and_store_1row`` (``iqk_fa_templates.h:1157-1163``): assert S > 0, ``out = (1/S) · acc``."""
    if np.any(~(S > 0)):
        raise ValueError("flash_attn_ext(iqk2026): a query row processed no unmasked KV entry (S = 0); upstream "
                         "aborts with GGML_ASSERT(S > 0) (fa/iqk_fa_templates.h:1157)")
    return ((_F32(1) / S).astype(_F32)[:, None] * acc).astype(_F32)


# ---------------------------------------------------------------------------------------------------------------
# threads


def _gcd(a: int, b: int) -> int:
    return math.gcd(a, b)


def thread_path(nq: int, nh: int, ne3: int, nhk: int, nhv: int, nk: int, nth: int) -> str:
    """Which branch of ``iqk_flash_attn_noalibi`` runs (after any SWA trim): ``"mla_split"`` (:262-309),
    ``"mla_gcd"`` (:310-378), ``"gqa_chunks"`` (:381-452) or ``"heads"`` (:456-489). Only the first three make
    the bytes depend on ``nth``."""
    rk2, rv2 = nh // nhk, nh // nhv
    if ne3 == 1 and rk2 > 1 and nq == 1 and nk // 32 > 1 and nhk == 1:
        nstep = nk // 32
        if nstep >= 4 * nth:
            return "mla_split"
        g = _gcd(nstep, nth)
        if -(-rk2 // (nth // g)) > 1:
            return "mla_gcd"
    if ne3 == 1 and rk2 > 1 and rk2 == rv2 and nq == 1 and nhk * nk >= 32 * nth:
        return "gqa_chunks"
    return "heads"


def flash_attn_iqk2026(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale, softcap=0.0,
                       n_threads: int = 1) -> np.ndarray:
    """The snapshot's CPU flash attention (module docstring); returns rows (ne3, n_q, n_head, Dv) float32.

    ``scale`` is the value after ggml.c's ``scale /= softcap`` (softcap must be 0 here). ``n_threads`` is the
    thread count upstream ran with: it decides the one-query KV splits (:func:`thread_path`)."""
    op = "flash_attn_ext(iqk2026)"
    Dk, nq, nh, ne3 = q.ne
    Dv, nk = v.ne[0], k.ne[1]
    if (Dk, Dv) not in _SUPPORTED:
        raise ValueError(f"{op}: (Dk, Dv) must be one of {_SUPPORTED}, got {(Dk, Dv)}")
    if k.type not in ("f16", "q8_0") or v.type not in ("f16", "q8_0"):
        raise ValueError(f"{op}: K and V must be f16 or q8_0, got {k.type} / {v.type}")
    if (Dk, Dv) == (576, 512) and k.type != v.type:
        raise ValueError(f"{op}: 576/512 needs K and V of one type (fa/iqk_fa_576_512.cpp:115)")
    if softcap != 0:
        raise NotImplementedError(f"{op}: softcap (v_tanh) is not modelled")
    if mask is None:
        raise ValueError(f"{op}: the iqk kernel needs a mask (iqk_mul_mat.cpp:1386); without one upstream runs "
                         f"ggml's generic code")
    if mask.ne[2] != 1 or mask.ne[3] != 1 or mask.ne[1] < -(-nq // MASK_PAD) * MASK_PAD:
        raise ValueError(f"{op}: ggml_flash_attn_ext asserts mask.ne[2] == mask.ne[3] == 1 and mask.ne[1] >= "
                         f"GGML_PAD(n_q, {MASK_PAD}) (ggml.c:10163-10167); got mask ne {mask.ne}")
    if not isinstance(n_threads, (int, np.integer)) or isinstance(n_threads, bool) or n_threads < 1:
        raise ValueError(f"{op}: n_threads must be an int >= 1, got {n_threads!r}")
    nth = int(n_threads)
    scale = _F32(scale)
    nhk, nhv = k.ne[2], v.ne[2]
    rk2, rv2, rk3, rv3 = nh // nhk, nh // nhv, ne3 // k.ne[3], ne3 // v.ne[3]
    mbits_all = np.ascontiguousarray(mask.storage()[0, 0]).view(np.uint16)  # (mask.ne[1], mask.ne[0])
    mvals_all = fp.f16_to_f32(mbits_all)
    qv = q.to_numpy()  # (ne3, nh, nq, Dk)

    # SWA trim (iqk_flash_attn.cpp:210-233)
    first, last = 0, nk
    if ne3 == 1 and rk2 > 1 and nq == 1 and nk > 256:
        row = mbits_all[0, :nk]
        while first < last and row[first] != 0:
            first += 1
        while last > first and row[last - 1] != 0:
            last -= 1
        span = 32 * (-(-(last - first) // 32))
        first = max(0, last - span)
        last = min(first + span, nk)
        if not (last - first <= 3 * nk // 4 and (last - first) % 32 == 0):
            first, last = 0, nk
    n = last - first
    if n % 32:
        raise ValueError(f"{op}: n_kv % 32 != 0 ({n}): iqk_flash_attn_impl refuses (iqk_mul_mat.cpp:1386) and "
                         f"upstream runs ggml's generic code instead, which this model does not cover")
    repacked = nq >= 8 and k.type == "q8_0" and (n * nhk * k.ne[3]) % 8 == 0  # iqk_mul_mat.cpp:1255-1257
    mbits, mvals = mbits_all[:, first:last], mvals_all[:, first:last]
    kvs = {}

    def kvhead(ik2, ik3, iv2, iv3):
        key = (ik2, ik3, iv2, iv3)
        if key not in kvs:
            kvs[key] = _KV(k, v, ik2, ik3, iv2, iv3)
        return kvs[key]

    out = np.empty((ne3, nq, nh, Dv), _F32)
    path = thread_path(nq, nh, ne3, nhk, nhv, n, nth)
    if path == "mla_split":  # iqk_flash_attn.cpp:262-309: heads = the kernel's rows, KV split by thread
        nstep = n // 32
        per = -(-nstep // nth)
        mid = nstep - nth * (per - 1) if per * nth > nstep else nth
        kv = kvhead(0, 0, 0, 0)
        Q = qv[0, :, 0, :]
        parts = []
        for t in range(nth):
            mine = per - (1 if t >= mid else 0)
            off = 32 * (t * per if t <= mid else mid * per + (t - mid) * mine)
            lo, hi = first + off, first + off + 32 * mine
            mb = np.broadcast_to(mbits[0, off:off + 32 * mine], (nh, 32 * mine))
            mv = np.broadcast_to(mvals[0, off:off + 32 * mine], (nh, 32 * mine))
            parts += _run(kv, [(Q, mb, mv, lo, hi)], Dk, Dv, scale, repacked)
        out[0, 0] = _merge(parts)
        return out
    if path == "mla_gcd":  # iqk_flash_attn.cpp:310-378
        nstep = n // 32
        g = _gcd(nstep, nth)
        nth_k = nth // g
        per = -(-rk2 // nth_k)
        mid = rk2 - nth_k * (per - 1) if per * nth_k > rk2 else nth_k
        if (n // g) % 32:
            raise ValueError(f"{op}: upstream's kernel refuses a KV chunk of {n // g} rows (not a multiple of 32)")
        kv = kvhead(0, 0, 0, 0)
        Qall = qv[0, :, 0, :]
        chunks = {}
        for t in range(nth):
            ik, iq = t % g, t // g
            nqt = per - (1 if iq >= mid else 0)
            q0 = iq * per if iq < mid else mid * per + (iq - mid) * nqt
            if nqt <= 0:
                continue
            lo = first + ik * (n // g)
            m = n // g
            mb = np.broadcast_to(mbits[0, lo - first:lo - first + m], (nqt, m))
            mv = np.broadcast_to(mvals[0, lo - first:lo - first + m], (nqt, m))
            (res,) = _run(kv, [(Qall[q0:q0 + nqt], mb, mv, lo, lo + m)], Dk, Dv, scale, repacked)
            chunks[(q0, ik)] = (nqt, res)
        for j in range(rk2):
            parts = []
            for ik in range(g):
                for (q0, ikk), (nqt, (Mc, Sc, Rc)) in chunks.items():
                    if ikk == ik and q0 <= j < q0 + nqt:
                        parts.append((Mc[j - q0:j - q0 + 1], Sc[j - q0:j - q0 + 1], Rc[j - q0:j - q0 + 1]))
            out[0, 0, j] = _merge(parts)[0]
        return out
    if path == "gqa_chunks":  # iqk_flash_attn.cpp:381-452
        g = _gcd(nhk, nth)
        nth_k, nek2_k = nth // g, nhk // g
        nchunk = nek2_k * n // 32
        npt = -(-nchunk // nth_k)
        if npt * nth_k == nchunk:
            nkc = 32 * (nhk * n // (32 * nth))
        else:
            nm = 1
            while nm * 4 < npt:
                nm *= 2
            nkc = 32 * nm
        nkk = -(-n // nkc)
        for ik02 in range(nhk):
            kv = kvhead(ik02, 0, ik02 * rk2 // rv2, 0)
            Q = qv[0, ik02 * rk2:(ik02 + 1) * rk2, 0, :]
            parts = []
            for ikk in range(nkk):
                ik01 = nkc * ikk
                this = nkc if ik01 + nkc <= n else n - ik01
                if this <= 0:
                    break
                if this % 32:
                    raise ValueError(f"{op}: upstream's kernel refuses a KV chunk of {this} rows")
                mb = np.broadcast_to(mbits[0, ik01:ik01 + this], (rk2, this))
                mv = np.broadcast_to(mvals[0, ik01:ik01 + this], (rk2, this))
                parts += _run(kv, [(Q, mb, mv, first + ik01, first + ik01 + this)], Dk, Dv, scale, repacked)
            out[0, 0, ik02 * rk2:(ik02 + 1) * rk2] = _merge(parts)
        return out

    # iqk_flash_attn.cpp:456-489: heads over thread groups, ntg threads per head splitting its queries
    ntg = nth // _gcd(nh * ne3, nth)
    per = -(-nq // ntg)
    groups: dict = {}
    for i3 in range(ne3):
        for i2 in range(nh):
            key = (i2 // rk2, i3 // rk3, i2 // rv2, i3 // rv3)
            for t in range(ntg):
                q0, q1 = t * per, min(t * per + per, nq)
                if q1 > q0:
                    groups.setdefault(key, []).append((i3, i2, q0, q1))
    for key, items in groups.items():
        kv = kvhead(*key)
        jobs = [(qv[i3, i2, q0:q1], mbits[q0:q1], mvals[q0:q1], first, last) for i3, i2, q0, q1 in items]
        for (i3, i2, q0, q1), (_, S, acc) in zip(items, _run(kv, jobs, Dk, Dv, scale, repacked)):
            out[i3, q0:q1, i2] = _normalize(S, acc)
    return out
