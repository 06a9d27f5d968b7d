"""vec_dot: the dot products behind mul_mat, for every (x type, y type) pair, under any ReductionPlan.

``vec_dot(x, x_type, y, y_type, n, plan="ggml_generic") -> float32 (M, N)``: ``x`` holds M rows and ``y`` N
rows of ``n`` values each as raw bytes (uint8 ``(M, row_bytes)``; f32 rows as their 4-byte little-endian
words, f16/bf16 rows as their 16-bit patterns); ``out[i, j]`` is the dot product of x row i and y row j,
computed in the float order of ``plan.for_pair(x_type.y_type)``. Pairs (upstream facts §4a, vec_dot_type table):

* element pairs: ``f32.f32``, ``f16.f16``, ``bf16.bf16``;
* 32-blocks: ``q8_0.q8_0``, ``q4_0.q8_0``, ``q5_0.q8_0``, ``iq4_nl.q8_0``, ``q4_1.q8_1``, ``q5_1.q8_1``, and
  the same with the interleaved y layouts ``q8_0_x4`` / ``q8_1_x4`` (only the byte positions differ);
* 256-element super-blocks: ``q4_K.q8_K``, ``q6_K.q8_K`` (see :func:`_dot_kquants` for their lane maps).

Bit-exactness established by the tests: each build's plan (``mlaref.reference.builds``: ``ggml_generic``,
``ggml_x86_avx``, ``ggml_x86_avx2`` for the levels of that name, ``ggml_x86_avx2_znver3`` and the AVX-512 plans for
native builds) equals upstream ggml's ``vec_dot`` in that build for every pair above; ``ggml_generic`` /
``ggml_generic_gnu`` equal the library's compiled ``ggml_vec_dot_*_generic`` symbols, unfused or fused as GCC chose
per build (the tests' ``COMPILED_GENERIC``), and an independent transcription of the C source. The aarch64 plans
(``ggml_arm_neon``, ``ggml_arm_dotprod``, ``ggml_arm_fp16``: :mod:`mlaref.reference.plan`) equal ggml
cross-built for those levels and run under qemu-user; their extra fields (``acc_fold``, ``lane_map``, ``summs``,
``block_pairs``, ``superblock``, ``lane_fold_f32``) are read here with defaults that leave every other plan as is.

How it is computed (style.md section 4):

1. **Integers, exact in any order.** Each block's int products are summed in int32 (``|sum| < 2**31``):
   the whole block for serial plans (``int_to_float = "block"``), 8 lane sums of 4 consecutive products for
   lane plans (``"lane4"``; ``|lane| <= 4*127*128 < 2**24``, so the int -> float conversion is exact), or 4 lane
   sums of 8 products (``"lane8"``: products 4j..4j+3 and 16+4j..16+4j+3, ggml's AVX code; still < 2**24).
2. **Floats, one rounding per step.** A loop over the reduction axis (blocks or element steps) only, every
   step vectorised over all (i, j) and lanes and rounded once: float32 adds/multiplies by NumPy, fused
   multiply-adds by :func:`mlaref.reference.fp.fmaf`, half-precision arithmetic by an exact float64 result
   rounded to odd and then to f16, double sums in float64.
3. **Fixed fold** of accumulators and lanes (``halves`` or ``hadd``), then the plan's tail, then the m*s
   term sum of q4_1/q5_1 (a separate float sum over blocks, added last, as ggml's x86 ``summs``).

Value domain: q8_0/q8_1 ``qs`` never hold -128 when written by ggml's quantizers; the reference multiplies
true integers, whereas ggml's AVX2 sign trick turns (-128)*(-128) into -16384. Bytes outside the domain give the
mathematically exact product here.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference import fp
from mlaref.reference.ops import _vecdot_pairs as pairs
from mlaref.reference.plan import ReductionPlan, get_plan

__all__ = ["vec_dot", "supported_pairs", "round_f64_to_f16", "fma_f16"]

_CHUNK_ELEMS = 1 << 22  # keeps the int lane sums of one chunk of x rows below ~64 MB


def supported_pairs() -> list[str]:
    """Every ``"x.y"`` pair :func:`vec_dot` accepts."""
    out = [f"{t}.{t}" for t in pairs.ELEMENT_TYPES]
    for x, (ys, _) in pairs.BLOCK_PAIRS.items():
        out += [f"{x}.{y}" for y in ys]
    out += [f"{x}.{y}" for x, y in pairs.KQUANT_PAIRS.items()]
    return out


# -- half-precision arithmetic ---------------------------------------------------------------------------------

def _round_odd_to_f32(s: np.ndarray) -> np.ndarray:
    """float64 -> float32 rounded to odd (truncate, then set the last bit if inexact): composes with a later RNE."""
    s = np.asarray(s, dtype=np.float64)
    t = s.astype(np.float32)
    back = t.astype(np.float64)
    with np.errstate(invalid="ignore"):
        too_big = np.abs(back) > np.abs(s)
    tz = np.where(too_big, np.nextafter(t, np.float32(0)), t).astype(np.float32)
    inexact = back != s
    bits = fp.f32_bits(tz)
    odd = fp.bits_f32(bits | np.uint32(1))
    return np.where(inexact & np.isfinite(s), odd, t).astype(np.float32)


def round_f64_to_f16(s) -> np.ndarray:
    """float64 -> f16 value (as float32), correctly rounded to nearest even (via round-to-odd float32).

    The last step, float32 -> f16, is NumPy's cast (round to nearest even, subnormals and overflow to Inf as
    IEEE says; three times faster than ``fp.f32_to_f16``, and tested equal to it on finite values).
    """
    with np.errstate(over="ignore"):
        return _round_odd_to_f32(s).astype(np.float16).astype(np.float32)


def fma_f16(a, b, c) -> np.ndarray:
    """``vfmadd231ph``: a*b + c of f16 values rounded once to f16 (returned as float32 values).

    The product of two f16 is exact in float64; the sum is made exact-to-odd with TwoSum, as in ``fp.fmaf``.
    """
    p = np.asarray(a, np.float32).astype(np.float64) * np.asarray(b, np.float32).astype(np.float64)
    cd = np.asarray(c, np.float32).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + cd
        bb = s - p
        err = (p - (s - bb)) + (cd - bb)
        even = (np.ascontiguousarray(s).view(np.uint64) & 1) == 0
        fix = np.isfinite(s) & (err != 0) & even
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return round_f64_to_f16(s)


# -- element pairs ----------------------------------------------------------------------------------------------

def _element_values(rows: np.ndarray, type: str, n: int) -> np.ndarray:
    size = 4 if type == "f32" else 2
    if rows.shape[1] != n * size:
        raise ValueError(f"vec_dot: rows of {type} with n = {n} must have {n * size} bytes, got {rows.shape[1]}")
    raw = np.ascontiguousarray(rows)
    if type == "f32":
        return raw.view("<f4").astype(np.float32)
    if type == "f16":
        return fp.f16_to_f32(raw.view("<u2"))
    return fp.bf16_to_f32(raw.view("<u2"))


def _fold(acc: np.ndarray, fold: str, add) -> np.ndarray:
    """(..., A, L) -> (...): accumulators by halves, then lanes by halves (or hadd below 4 lanes)."""
    while acc.shape[-2] > 1:
        h = acc.shape[-2] // 2
        acc = add(acc[..., :h, :], acc[..., h:, :])
    acc = acc[..., 0, :]
    if fold == "xor":  # a warp's shuffle-xor butterfly: every lane l adds lane l ^ o, o = L/2 .. 1; lane 0's value
        o = acc.shape[-1] // 2
        while o:
            acc = add(acc, acc[..., np.arange(acc.shape[-1]) ^ o])
            o //= 2
        return acc[..., 0]
    while acc.shape[-1] > (4 if fold == "hadd" else 1):
        h = acc.shape[-1] // 2
        acc = add(acc[..., :h], acc[..., h:])
    if fold == "hadd" and acc.shape[-1] == 4:
        acc = add(add(acc[..., 0], acc[..., 1]), add(acc[..., 2], acc[..., 3]))[..., None]
    return acc[..., 0]


def _fold_each_to_f64(acc: np.ndarray, fold: str) -> np.ndarray:
    """(M, N, A, L) -> (M, N) float64: each accumulator folded on its own, the results added to a double in
    accumulator order (ggml's ``sumf += (ggml_float)_mm512_reduce_add_ps(c_a)``)."""
    s = np.zeros(acc.shape[:2], np.float64)
    for a in range(acc.shape[2]):
        s = s + _fold(acc[:, :, a:a + 1, :], fold, _add_f32).astype(np.float64)
    return s


def _add_f32(a, b):
    return (a + b).astype(np.float32)


def _add_f16(a, b):
    return round_f64_to_f16(a.astype(np.float64) + b.astype(np.float64))  # exact in float64, then one rounding


def _dot_elements(xv: np.ndarray, yv: np.ndarray, plan: ReductionPlan) -> np.ndarray:
    M, n = xv.shape
    N = yv.shape[0]
    if plan.fold == "serial":
        # ggml_float (double) sum; each product is a float: exact for f16/bf16, rounded once for f32.
        s = np.zeros((M, N), np.float64)
        for i in range(n):
            p = (xv[:, None, i] * yv[None, :, i]).astype(np.float32)
            s = s + p.astype(np.float64)
        return s.astype(np.float32)
    if plan.dot2:
        return _dot_elements_dot2(xv, yv, plan)
    L, A = plan.lanes, plan.accs
    step = L * A
    full = n // step if plan.tail != "masked" else -(-n // step)
    half = plan.acc_type == "f16"
    acc = np.zeros((M, N, A, L), np.float32)
    for k in range(full):
        idx = np.arange(k * step, (k + 1) * step)
        valid = idx < n
        idx = np.minimum(idx, n - 1)
        xs = xv[:, idx].reshape(M, 1, A, L)
        ys = yv[:, idx].reshape(1, N, A, L)
        if half:  # xs, ys are f16 values; their product is exact in float64
            new = fma_f16(xs, ys, acc) if plan.fma else _add_f16(acc, round_f64_to_f16(xs.astype(np.float64) * ys))
        elif plan.fma:
            new = fp.fmaf(xs, ys, acc)
        else:
            new = (acc + (xs * ys).astype(np.float32)).astype(np.float32)
        acc = np.where(valid.reshape(A, L), new, acc).astype(np.float32)
    rest = range(full * step, n)
    if plan.acc_type == "f64":
        total = _fold_each_to_f64(acc, plan.fold)
    elif half and plan.lane_fold_f32:
        # GGML_F16x8_REDUCE (NEON with FP16 vector arithmetic): accumulators added in f16, then the 8 lanes
        # widened to f32 and folded there
        while acc.shape[-2] > 1:
            h = acc.shape[-2] // 2
            acc = _add_f16(acc[..., :h, :], acc[..., h:, :])
        total = _fold(acc, plan.fold, _add_f32)
    else:
        total = _fold(acc, plan.fold, _add_f16 if half else _add_f32)
    if plan.tail == "scalar_f64":
        s = total.astype(np.float64)
        for i in rest:
            s = s + (xv[:, None, i] * yv[None, :, i]).astype(np.float32).astype(np.float64)
        return s.astype(np.float32)
    if plan.tail in ("scalar_gcc", "scalar_gcc8"):
        # GCC's vectorisation of ``for (i = np; i < n; ++i) sumf += x[i]*y[i]`` (ggml_vec_dot_f32): chunks of 8
        # while 8 remain (and, for ``scalar_gcc``, then one chunk of 4) are rounded products added in order; the
        # last ones are fmaf.
        r = n - full * step
        unfused = (r // 8) * 8 + (4 if r % 8 >= 4 and plan.tail == "scalar_gcc" else 0)
        for t, i in enumerate(rest):
            if t < unfused:
                total = (total + (xv[:, None, i] * yv[None, :, i]).astype(np.float32)).astype(np.float32)
            else:
                total = fp.fmaf(xv[:, None, i], yv[None, :, i], total)
        return total
    if plan.tail == "scalar_f32":
        for i in rest:
            total = fp.fmaf(xv[:, None, i], yv[None, :, i], total)
    if plan.tail == "scalar_f32m":
        # ``sumf += x[i]*y[i]`` without FMA (vec.cpp@ggml 0.15.3, a build without -mfma): whether GCC vectorises the
        # products or not, each is rounded and the adds stay in index order.
        for i in rest:
            total = (total + (xv[:, None, i] * yv[None, :, i]).astype(np.float32)).astype(np.float32)
    return total.astype(np.float32)


def _daz(v: np.ndarray) -> np.ndarray:
    """Subnormal float32 inputs read as zero (DAZ), sign kept."""
    sub = (np.abs(v) < np.float32(2.0**-126)) & (v != 0)
    return np.where(sub, np.copysign(np.float32(0), v), v).astype(np.float32)


def _dot_elements_dot2(xv: np.ndarray, yv: np.ndarray, plan: ReductionPlan) -> np.ndarray:
    """``ggml_vec_dot_bf16`` with AVX512-BF16: ``vdpbf16ps`` lanes, each reduced alone, summed in double.

    Per 2*L*A-element step, element e goes to accumulator e // (2L), lane (e % 2L) // 2; a lane does
    acc = fma(x_odd, y_odd, acc) then acc = fma(x_even, y_even, acc) with DAZ inputs and FTZ results.
    """
    M, n = xv.shape
    N = yv.shape[0]
    L, A = plan.lanes, plan.accs
    step = 2 * L * A
    acc = np.zeros((M, N, A, L), np.float32)
    tiny = np.float32(2.0**-126)
    for k in range(n // step):
        base = k * step
        for parity in (1, 0):
            idx = base + np.arange(A * L) * 2 + parity
            xs = _daz(xv[:, idx]).reshape(M, 1, A, L)
            ys = _daz(yv[:, idx]).reshape(1, N, A, L)
            acc = fp.fmaf(xs, ys, acc)
            acc = np.where(np.abs(acc) < tiny, np.copysign(np.float32(0), acc), acc).astype(np.float32)
    s = _fold_each_to_f64(acc, "halves")
    for i in range((n // step) * step, n):
        s = s + (xv[:, None, i] * yv[None, :, i]).astype(np.float32).astype(np.float64)
    return s.astype(np.float32)


# -- block pairs ------------------------------------------------------------------------------------------------

def _int_sums(qx: np.ndarray, qy: np.ndarray, group: int) -> np.ndarray:
    """Exact int32 sums of products over groups of ``group`` consecutive elements: (M, N, nb, 32/group)."""
    M, nb, _ = qx.shape
    N = qy.shape[0]
    a = qx.reshape(M, nb, 32 // group, group).astype(np.int32)
    b = qy.reshape(N, nb, 32 // group, group).astype(np.int32)
    return np.einsum("mbjk,nbjk->mnbj", a, b, optimize=False)


# int_to_float of a lane plan on 32-blocks -> how many register lanes one block fills.
_BLOCK_LANES = {"lane4": 8, "lane8": 4, "block": 1}  # "block": one block's exact int sum per lane (cuda_w32)


def _block_lanes(qx: np.ndarray, qy: np.ndarray, int_to_float: str, lane_map: str = "quad") -> np.ndarray:
    """The exact int32 lane sums of every block: (M, N, nb, 8) for ``lane4`` (lane j = products 4j..4j+3), or
    (M, N, nb, 4) for ``lane8`` (lane j = products 4j..4j+3 and 16+4j..16+4j+3: the two 16-byte halves of a block
    ``_mm_madd_epi16``'d and added, ``mul_sum_i8_quad_float`` in arch/x86/quants.c@ggml 0.15.3)."""
    if lane_map == "pair" and int_to_float == "lane8":
        # ggml_vdotq_s32 without the dot-product extension (ggml-cpu-impl.h@ggml 0.15.3): vmull_s8 of each 8-byte
        # half, vpaddlq_s16 (adjacent pairs): lane j = products 2j, 2j+1, 8+2j, 9+2j of each 16-byte half
        s2 = _int_sums(qx, qy, 2)  # (M, N, nb, 16): pair p = products 2p, 2p+1
        return s2.reshape(s2.shape[:3] + (2, 2, 4)).sum(axis=(3, 4), dtype=np.int32)
    if int_to_float == "block":
        return _int_sums(qx, qy, 32)
    s4 = _int_sums(qx, qy, 4)
    if int_to_float == "lane4":
        return s4
    return s4[..., :4] + s4[..., 4:]


def _scalar_factors(formula: str, sumi, dd, dx, dy):
    """(P, Q) of the pair's scalar ``sumf += P*Q`` (``_vecdot_pairs.BLOCK_PAIRS``): P*Q is the last product."""
    if formula == "sumi*(dx*dy)":
        return sumi, dd
    if formula == "sumi*dx*dy":
        return (sumi * dx).astype(np.float32), np.broadcast_to(dy, np.shape(sumi))
    return dd, sumi


def _dot_blocks(x: np.ndarray, xt: str, y: np.ndarray, yt: str, n: int, plan: ReductionPlan) -> np.ndarray:
    qx, dx, mx = pairs.decode_x(x, xt, n)
    qy, dy, sy = pairs.decode_y(y, yt, n)
    formula = pairs.BLOCK_PAIRS[xt][1]
    M, nb = dx.shape
    N = dy.shape[0]
    dxb = dx[:, None, :]
    dyb = dy[None, :, :]
    dd = (dxb * dyb).astype(np.float32)  # (M, N, nb); dx*dy == dy*dx exactly
    has_m = mx is not None

    if plan.fold == "serial" and plan.block_pairs:
        return _dot_block_pairs(qx, qy, formula, dd, dxb, dyb, plan)
    if plan.fold == "serial":
        sumi = _int_sums(qx, qy, 32)[..., 0].astype(np.float32)  # |sumi| < 2**24 except in theory; see domain
        sumf = np.zeros((M, N), np.float32)
        for b in range(nb):
            P, Q = _scalar_factors(formula, sumi[..., b], dd[..., b], dxb[..., b], dyb[..., b])
            if has_m:
                R = (mx[:, None, b] * sy[None, :, b]).astype(np.float32)
                term = fp.fmaf(P, Q, R) if plan.fma else ((P * Q).astype(np.float32) + R).astype(np.float32)
                sumf = (sumf + term).astype(np.float32)
            elif plan.fma:
                sumf = fp.fmaf(P, Q, sumf)
            else:
                sumf = (sumf + (P * Q).astype(np.float32)).astype(np.float32)
        return sumf

    if plan.int_to_float not in _BLOCK_LANES:
        raise ValueError(f"vec_dot: lane plan {plan.name} must use int_to_float='lane4' or 'lane8' for block pairs")
    lanesum = _block_lanes(qx, qy, plan.int_to_float, plan.lane_map).astype(np.float32)
    width = _BLOCK_LANES[plan.int_to_float]  # register lanes one block fills
    slots = plan.lanes * plan.accs // width  # blocks per step
    acc = np.zeros((M, N, slots, width), np.float32)  # the A registers of L lanes, flat, one block per slot
    nfull = nb if plan.tail == "masked" else (nb // slots) * slots
    for b in range(nfull):
        k = b % slots
        d = dd[..., b, None]
        if plan.fma:
            acc[:, :, k] = fp.fmaf(d, lanesum[:, :, b], acc[:, :, k])
        else:
            acc[:, :, k] = acc[:, :, k] + (d * lanesum[:, :, b]).astype(np.float32)
    acc = acc.reshape(M, N, plan.accs, plan.lanes)
    if plan.acc_fold == "each":
        # every accumulator folded on its own, the floats added in accumulator order (NEON: vaddvq_f32(sumv0) +
        # vaddvq_f32(sumv1))
        total = _fold(acc[:, :, :1], plan.fold, _add_f32)
        for a in range(1, plan.accs):
            total = _add_f32(total, _fold(acc[:, :, a:a + 1], plan.fold, _add_f32))
    else:
        total = _fold(acc, plan.fold, _add_f32)
    if has_m:
        total = _add_summs(total, mx, sy, nfull, plan)
    if plan.tail in ("scalar_f32", "scalar_f32m"):
        # ggml finishes the blocks left after the last full step with the pair's scalar formula
        # (``sumf += sumi*(dx*dy)`` for q8_0, ``sumi*dx*dy`` for q4_0, ``d*(sumi1 + sumi2)`` for iq4_nl; fused by
        # GCC for ``scalar_f32``, a rounded product then an add for ``scalar_f32m``).
        for b in range(nfull, nb):
            sumi = lanesum[:, :, b, 0]
            for j in range(1, width):
                sumi = sumi + lanesum[:, :, b, j]  # integers below 2**24: exact
            P, Q = _scalar_factors(formula, sumi, dd[..., b], dxb[..., b], dyb[..., b])
            if has_m:  # sumf += (dx*dy)*sumi + mx*sy: the sum of both terms, then the add
                R = (mx[:, None, b] * sy[None, :, b]).astype(np.float32)
                term = fp.fmaf(P, Q, R) if plan.tail == "scalar_f32" else _add_f32((P * Q).astype(np.float32), R)
                total = _add_f32(total, term)
            elif plan.tail == "scalar_f32":
                total = fp.fmaf(P, Q, total)
            else:
                total = (total + (P * Q).astype(np.float32)).astype(np.float32)
    return total.astype(np.float32)


def _add_summs(total, mx, sy, nfull: int, plan: ReductionPlan) -> np.ndarray:
    """Adds the m*s terms of the first ``nfull`` blocks of q4_1/q5_1 to the folded sum, as ``plan.summs`` says:
    ``last`` (x86: one float sum over the blocks, fused if the plan fuses, added last), ``pairs`` (NEON q4_1:
    ``summs += mx0*sy0 + mx1*sy1`` per two blocks, the first product fused) or ``split`` (NEON q5_1: even and odd
    blocks in two fused sums, added to the folded sum in that order)."""
    mode = plan.summs
    M, N = total.shape
    if mode == "last":
        summs = np.zeros((M, N), np.float32)
        for b in range(nfull):
            if plan.fma:
                summs = fp.fmaf(mx[:, None, b], sy[None, :, b], summs)
            else:
                summs = (summs + (mx[:, None, b] * sy[None, :, b]).astype(np.float32)).astype(np.float32)
        return _add_f32(total, summs)
    if mode == "pairs":
        summs = np.zeros((M, N), np.float32)
        for b in range(0, nfull - 1, 2):
            second = (mx[:, None, b + 1] * sy[None, :, b + 1]).astype(np.float32)
            summs = _add_f32(summs, fp.fmaf(mx[:, None, b], sy[None, :, b], second))
        return _add_f32(total, summs)
    parts = [np.zeros((M, N), np.float32), np.zeros((M, N), np.float32)]
    for b in range(nfull):
        parts[b % 2] = fp.fmaf(mx[:, None, b], sy[None, :, b], parts[b % 2])
    return _add_f32(_add_f32(total, parts[0]), parts[1])


def _dot_block_pairs(qx, qy, formula: str, dd, dxb, dyb, plan: ReductionPlan) -> np.ndarray:
    """A serial plan with ``block_pairs`` (ggml_vec_dot_iq4_nl_q8_0's NEON code): per two blocks
    ``sumf += P0*Q0 + P1*Q1`` (the pair's scalar factors; GCC fuses the first product onto the rounded second),
    then an odd last block ``sumf += P*Q``, fused."""
    sumi = _int_sums(qx, qy, 32)[..., 0].astype(np.float32)
    nb = sumi.shape[-1]
    sumf = np.zeros(sumi.shape[:2], np.float32)
    fac = [_scalar_factors(formula, sumi[..., b], dd[..., b], dxb[..., b], dyb[..., b]) for b in range(nb)]
    for b in range(0, nb - 1, 2):
        (P0, Q0), (P1, Q1) = fac[b], fac[b + 1]
        sumf = _add_f32(sumf, fp.fmaf(P0, Q0, (P1 * Q1).astype(np.float32)))
    if nb % 2:
        P, Q = fac[nb - 1]
        sumf = fp.fmaf(P, Q, sumf)
    return sumf


# -- k-quant pairs (256-element super-blocks, y = q8_K) -------------------------------------------------------

def _dot_kquants(x: np.ndarray, xt: str, y: np.ndarray, n: int, plan: ReductionPlan) -> np.ndarray:
    """q4_K.q8_K / q6_K.q8_K.

    Serial plans: ``ggml_vec_dot_<x>_q8_K_generic``: 8 int lanes (lane l = elements with index % 8 == l, each
    product times its sub-block scale, q6_K codes minus 32), per super-block ``sums[l] += d*lane`` with
    d = f16(x.d)*y.d; q4_K also ``sumf -= dmin*sum_j(bsums[j]*m[j/2])``; finally ``sumf += sums[l]`` for l in order.

    Lane plans: upstream's AVX2 kernels: int lane i = sum over sub-blocks of scale * (products of elements
    4i..4i+3 of each 32-chunk); q6_K uses codes 0..63 and subtracts 32*(bsums[2i]*sc[2i] + bsums[2i+1]*sc[2i+1])
    from lane i; then ``acc = fma(d, float(lane), acc)`` per super-block (slot = super-block % slots), the
    fold, and for q4_K a 4-lane min accumulator (lane k: m[2k]*S[2k] + m[2k+1]*S[2k+1], S = 32-sums of q8,
    fma with -(y.d*dmin)) folded by halves and added last.
    """
    q, sc, mn, dx, dmin = pairs.decode_kquant(x, xt, n)
    qy, dy, bsums = pairs.decode_q8_K(y, n)
    M, nb = dx.shape
    N = dy.shape[0]
    d = (dx[:, None, :] * dy[None, :, :]).astype(np.float32)  # (M, N, nb); commutative, so order-free
    if plan.fold == "serial" and plan.superblock:
        return _dot_kquants_superblock(xt, q, sc, mn, dmin, qy, dy, bsums, d)
    if plan.fold == "serial":
        signed = q - 32 if xt == "q6_K" else q
        w = (signed.astype(np.int32) * sc).reshape(M, nb, 32, 8)  # scale * value, index % 8 = lane
        lane = np.einsum("mbgl,nbgl->mnbl", w, qy.astype(np.int32).reshape(N, nb, 32, 8), optimize=False)
        lanef = lane.astype(np.float32)
        sums = np.zeros((M, N, 8), np.float32)
        sumf = np.zeros((M, N), np.float32)
        if xt == "q4_K":
            sumi = np.einsum("nbj,mbj->mnb", bsums, np.repeat(mn, 2, axis=-1), optimize=False).astype(np.float32)
            dm = (dmin[:, None, :] * dy[None, :, :]).astype(np.float32)
        for b in range(nb):
            if plan.fma:
                sums = fp.fmaf(d[..., b, None], lanef[:, :, b], sums)
            else:
                sums = (sums + (d[..., b, None] * lanef[:, :, b]).astype(np.float32)).astype(np.float32)
            if xt == "q4_K":
                if plan.fma:
                    sumf = fp.fmaf(-dm[..., b], sumi[..., b], sumf)
                else:
                    sumf = (sumf - (dm[..., b] * sumi[..., b]).astype(np.float32)).astype(np.float32)
        for lidx in range(8):
            sumf = (sumf + sums[..., lidx]).astype(np.float32)
        return sumf
    if plan.int_to_float != "lane4":
        raise ValueError(f"vec_dot: lane plan {plan.name} must use int_to_float='lane4' for k-quant pairs")
    w = (q.astype(np.int32) * sc).reshape(M, nb, 8, 8, 4)  # (chunk of 32, lane, 4 elements)
    lane = np.einsum("mbcli,nbcli->mnbl", w, qy.astype(np.int32).reshape(N, nb, 8, 8, 4), optimize=False)
    if xt == "q6_K":
        scb = sc[..., ::16].reshape(M, nb, 8, 2)  # the 16 sub-block scales, paired (2i, 2i+1)
        corr = np.einsum("nbip,mbip->mnbi", bsums.reshape(N, nb, 8, 2), scb, optimize=False)
        lane = lane - 32 * corr
    lanef = lane.astype(np.float32)  # int32 -> float32 rounds to nearest even, as vcvtdq2ps
    slots = plan.lanes * plan.accs // 8
    acc = np.zeros((M, N, slots, 8), np.float32)
    for b in range(nb):
        k = b % slots
        if plan.fma:
            acc[:, :, k] = fp.fmaf(d[..., b, None], lanef[:, :, b], acc[:, :, k])
        else:
            acc[:, :, k] = acc[:, :, k] + (d[..., b, None] * lanef[:, :, b]).astype(np.float32)
    total = _fold(acc, plan.fold, _add_f32)
    if xt == "q4_K":
        s8 = bsums.reshape(N, nb, 8, 2).sum(-1)  # int16 hadd of bsums pairs: the 32-sums of q8
        prod = np.einsum("mbkp,nbkp->mnbk", mn.reshape(M, nb, 4, 2), s8.reshape(N, nb, 4, 2),
                         optimize=False).astype(np.float32)
        ndm = (-dy[None, :, :] * dmin[:, None, :]).astype(np.float32)
        accm = np.zeros((M, N, 4), np.float32)
        for b in range(nb):
            if plan.fma:
                accm = fp.fmaf(ndm[..., b, None], prod[:, :, b], accm)
            else:
                accm = (accm + (ndm[..., b, None] * prod[:, :, b]).astype(np.float32)).astype(np.float32)
        total = (total + _fold(accm[:, :, None, :], "halves", _add_f32)).astype(np.float32)
    return total


def _dot_kquants_superblock(xt, q, sc, mn, dmin, qy, dy, bsums, d) -> np.ndarray:
    """A serial plan with ``superblock`` (the NEON code of ggml_vec_dot_q4_K_q8_K / q6_K_q8_K, arch/arm/quants.c@ggml
    0.15.3): one exact int sum per super-block (q6_K: ``isum - 32*isum_mins``), converted to float once
    (rounded to nearest even above 2**24); q4_K first ``sumf -= dmin*summins`` then ``sumf += d*sumi``, each one
    fused multiply-add with ``dmin = y.d*f16(x.dmin)`` and ``d = y.d*f16(x.d)``."""
    M, nb = d.shape[0], d.shape[2]
    N = d.shape[1]
    signed = q.astype(np.int32) - (32 if xt == "q6_K" else 0)
    isum = np.einsum("mbk,nbk->mnb", signed * sc, qy.astype(np.int32), optimize=False).astype(np.float32)
    sumf = np.zeros((M, N), np.float32)
    if xt == "q4_K":
        smin = np.einsum("nbj,mbj->mnb", bsums.astype(np.int32), np.repeat(mn, 2, axis=-1).astype(np.int32),
                         optimize=False).astype(np.float32)
        ndm = -(dmin[:, None, :] * dy[None, :, :]).astype(np.float32)
    for b in range(nb):
        if xt == "q4_K":
            sumf = fp.fmaf(ndm[..., b], smin[..., b], sumf)
        sumf = fp.fmaf(d[..., b], isum[..., b], sumf)
    return sumf


# -- public entry -----------------------------------------------------------------------------------------------

def _check_rows(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise TypeError(f"vec_dot: {what} must be uint8 row bytes, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"vec_dot: {what} must be 2-D (rows, row_bytes), got shape {a.shape}")
    return a


def vec_dot(x, x_type: str, y, y_type: str, n: int, plan="ggml_generic") -> np.ndarray:
    """All dot products of x rows with y rows, float32 ``(M, N)``, in the order of ``plan``.

    ``x``: uint8 ``(M, row_bytes(x_type, n))``; ``y``: uint8 ``(N, row_bytes(y_type, n))``; ``plan``: a
    :class:`~mlaref.reference.plan.ReductionPlan` or its name, resolved with ``plan.for_pair("x.y")``.
    """
    plan = get_plan(plan)
    x = _check_rows(x, "x")
    y = _check_rows(y, "y")
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"vec_dot: n must be a positive int, got {n!r}")
    pair = f"{x_type}.{y_type}"
    if pair not in supported_pairs():
        raise ValueError(f"vec_dot: unsupported pair {pair!r}; supported: {', '.join(supported_pairs())}")
    plan = plan.for_pair(pair)
    M, N = x.shape[0], y.shape[0]
    out = np.empty((M, N), np.float32)
    if x_type in pairs.ELEMENT_TYPES:
        xv = _element_values(x, x_type, n)
        yv = _element_values(y, y_type, n)
        per_row = max(1, N * n)
        step = max(1, _CHUNK_ELEMS // per_row)
        for i in range(0, M, step):
            out[i:i + step] = _dot_elements(xv[i:i + step], yv, plan)
        return out
    if x_type in pairs.KQUANT_PAIRS:
        if n % 256:
            raise ValueError(f"vec_dot: n = {n} must be a multiple of 256 for {pair}")
        step = max(1, _CHUNK_ELEMS // max(1, N * (n // 256) * 8))
        for i in range(0, M, step):
            out[i:i + step] = _dot_kquants(x[i:i + step], x_type, y, n, plan)
        return out
    if n % 32:
        raise ValueError(f"vec_dot: n = {n} must be a multiple of 32 for {pair}")
    per_row = max(1, N * (n // 32) * 8)
    step = max(1, _CHUNK_ELEMS // per_row)
    for i in range(0, M, step):
        out[i:i + step] = _dot_blocks(x[i:i + step], x_type, y, y_type, n, plan)
    return out
