"""vec_dot: ggml's scalar formulas (independent transcription), upstream ggml's own vec_dot (bytes), hand-built
orders, the x4 layouts, and NMSE bounds against float64 math.

Oracles, none of them the code under test:
* ``_scalar_*``: a per-block Python transcription of ``ggml_vec_dot_<x>_<y>_generic`` (ggml-cpu/quants.c),
  decoding bytes with ``struct``-style loops and NumPy float32 scalars; fused steps use libm ``fmaf``;
* the peer's ``vec_dot`` (upstream ggml's SIMD code as ggml-python built it here, natively; its plan is
  ``ggml_peer.build().vec_dot_plan``, the ``peer_plan`` fixture);
* upstream ggml built at each level: tests/reference/test_vec_dot_levels.py;
* the peer library's exported ``ggml_vec_dot_*_generic`` symbols (the scalar code as GCC compiled it);
* gguf-py's ``dequantize`` and float64 dot products for the NMSE bounds.
"""

import ctypes

import numpy as np
import pytest

from mlaref.reference import libm as libm
from mlaref.reference.compare import nmse
from mlaref.reference.ops.vec_dot import fma_f16, round_f64_to_f16, supported_pairs, vec_dot
from mlaref.reference.plan import PLANS, ReductionPlan

BLOCK_PAIRS = [("q8_0", "q8_0"), ("q4_0", "q8_0"), ("q5_0", "q8_0"), ("iq4_nl", "q8_0"),
               ("q4_1", "q8_1"), ("q5_1", "q8_1")]
KV = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
BLOCK_BYTES = {"q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "q8_0": 34, "q8_1": 36, "iq4_nl": 18}
SIZES = [32, 96, 160, 576]  # 1 block, odd block counts (iq4_nl's scalar tail), the MLA row 576


@pytest.fixture(scope="module")
def peer():
    from mlaref.codegen.peers import ggml as ggml_peer  # noqa: PLC0415

    if not ggml_peer.available():
        pytest.skip(ggml_peer.unavailable_reason())
    g = ggml_peer.lib()
    # The CPU back-end's f16 -> f32 table (used by every vec_dot for the block scales) is filled by
    # ggml_cpu_init(); without it ggml's vec_dot reads zeros.
    g.ggml_cpu_init()
    return ggml_peer


def _h(b: bytes, off: int) -> np.float32:
    return np.float32(np.frombuffer(b[off:off + 2], "<f2")[0])


def _element_ints(xt: str, blk: bytes) -> list[int]:
    """The 32 integer values of one x block (independent of mlaref's decoder)."""
    if xt == "q8_0":
        return list(np.frombuffer(blk[2:34], np.int8).astype(int))
    qs_off = {"q4_0": 2, "q4_1": 4, "q5_0": 6, "q5_1": 8, "iq4_nl": 2}[xt]
    qs = blk[qs_off:qs_off + 16]
    vals = [qs[j] & 15 for j in range(16)] + [qs[j] >> 4 for j in range(16)]
    if xt in ("q5_0", "q5_1"):
        qh = int.from_bytes(blk[qs_off - 4:qs_off], "little")
        vals = [v | (((qh >> j) & 1) << 4) for j, v in enumerate(vals)]
    if xt == "q4_0":
        vals = [v - 8 for v in vals]
    if xt == "q5_0":
        vals = [v - 16 for v in vals]
    if xt == "iq4_nl":
        vals = [KV[v] for v in vals]
    return vals


def _scalar(xt: str, yt: str, xb: bytes, yb: bytes, n: int, fused: bool) -> np.float32:
    """``ggml_vec_dot_<xt>_<yt>_generic``, one block at a time; ``fused`` = GCC's contraction of the last a*b."""
    sx, sy = BLOCK_BYTES[xt], BLOCK_BYTES[yt]
    sumf = np.float32(0)
    for ib in range(n // 32):
        bx, by = xb[ib * sx:(ib + 1) * sx], yb[ib * sy:(ib + 1) * sy]
        qy = np.frombuffer(by[sy - 32:], np.int8).astype(int)
        sumi = int(sum(a * b for a, b in zip(_element_ints(xt, bx), qy)))
        fi = np.float32(sumi)
        dx, dy = _h(bx, 0), _h(by, 0)
        if xt == "q8_0":
            P, Q = fi, dx * dy
        elif xt == "q4_0":
            P, Q = fi * dx, dy
        elif xt == "iq4_nl":
            P, Q = dy * dx, fi
        else:
            P, Q = dx * dy, fi
        if xt in ("q4_1", "q5_1"):
            R = _h(bx, 2) * _h(by, 2)
            term = libm.fmaf(P, Q, R)[()] if fused else P * Q + R
            sumf = np.float32(sumf + term)
        else:
            sumf = libm.fmaf(P, Q, sumf)[()] if fused else np.float32(sumf + P * Q)
    return np.float32(sumf)


def _data(peer, xt, yt, n, rows_x=3, rows_y=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows_x, n)).astype(np.float32)
    y = rng.standard_normal((rows_y, n)).astype(np.float32)
    return peer.quantize_chunk(xt, x), peer.from_float(yt, y)


def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


@pytest.mark.parametrize("fused", [False, True], ids=["ggml_generic", "ggml_generic_gnu"])
@pytest.mark.parametrize("xt,yt", BLOCK_PAIRS)
def test_generic_plans_equal_scalar_transcription(peer, xt, yt, fused):
    plan = "ggml_generic_gnu" if fused else "ggml_generic"
    for n in (32, 160):
        qx, qy = _data(peer, xt, yt, n)
        got = vec_dot(qx, xt, qy, yt, n, plan)
        want = np.array([[_scalar(xt, yt, qx[i].tobytes(), qy[j].tobytes(), n, fused) for j in range(len(qy))]
                         for i in range(len(qx))], np.float32)
        assert np.array_equal(_bits(got), _bits(want)), (xt, n)


def _avx2_block_path(plan: str, pair: str) -> bool:
    """Whether ``plan`` runs ``pair`` on arch/x86/quants.c's ``__AVX2__`` code (8 lanes of 4 products, FMA)."""
    own = PLANS[plan].for_pair(pair)
    return (own.lanes, own.int_to_float, own.fma) == (8, "lane4", True)


@pytest.mark.parametrize("xt,yt", BLOCK_PAIRS)
def test_x86_plan_equals_upstream_ggml_vec_dot(peer, xt, yt, peer_plan):
    """The peer's plan (``build().vec_dot_plan``: e.g. ggml_x86_avx2_znver3 on Zen 3, ggml_x86_avx512_znver4 on
    Zen 4) = upstream ggml's vec_dot on this machine, bit for bit."""
    for n in SIZES:
        qx, qy = _data(peer, xt, yt, n, seed=n)
        got = vec_dot(qx, xt, qy, yt, n, peer_plan)
        want = np.array([[peer.vec_dot(xt, qx[i], qy[j], n) for j in range(len(qy))] for i in range(len(qx))])
        assert np.array_equal(_bits(got), _bits(want)), (xt, n)
        # On the AVX2 code paths mlaref's own l8a1 is ggml's order for the one-accumulator pairs, and l8a2 is
        # iq4_nl's when the block count is even (with an odd count ggml finishes the last block in scalar code).
        if not _avx2_block_path(peer_plan, f"{xt}.{yt}"):
            continue
        if xt != "iq4_nl":
            assert np.array_equal(_bits(vec_dot(qx, xt, qy, yt, n, "mlaref_l8a1")), _bits(want)), (xt, n)
        elif (n // 32) % 2 == 0:
            assert np.array_equal(_bits(vec_dot(qx, xt, qy, yt, n, "mlaref_l8a2")), _bits(want)), (xt, n)


# The plan of each exported ``ggml_vec_dot_<x>_<y>_generic`` symbol (the scalar C as GCC compiled it) in the build
# that each vec_dot plan describes, measured: whether GCC contracted the last ``sumf += a*b`` into an FMA
# (``ggml_generic_gnu``) or not (``ggml_generic``) depends on the target having FMA and on GCC's tuning. None: the
# symbol disagrees with its own C source in that build (q5_0 on Sapphire Rapids returns (x+256)*y for negative
# 5-bit values: its int8 cast is lost in GCC's vectorisation); a missing x type was not measured.
_G, _GNU = "ggml_generic", "ggml_generic_gnu"
_X_TYPES = ("q8_0", "q4_0", "q5_0", "iq4_nl", "q4_1", "q5_1", "q4_K", "q6_K")
COMPILED_GENERIC = {
    "ggml_generic": dict.fromkeys(_X_TYPES, _G),  # no FMA in the target: nothing to fuse
    "ggml_x86_avx": dict.fromkeys(_X_TYPES, _G),
    "ggml_x86_avx2": dict.fromkeys(_X_TYPES, _GNU),  # generic tuning fuses every pair (level avx2, Zen 3)
    "ggml_x86_avx2_znver3": {"q8_0": _G, "q4_0": _G, "q5_0": _G, "iq4_nl": _G, "q4_1": _GNU, "q5_1": _GNU,
                             "q4_K": _GNU, "q6_K": _G},
    "ggml_x86_avx512": {**dict.fromkeys(_X_TYPES, _GNU), "q5_0": None},
    "ggml_x86_avx512_znver4": {"q8_0": _G, "q4_0": _G, "iq4_nl": _G, "q4_1": _GNU, "q5_1": _GNU, "q4_K": _GNU,
                               "q6_K": _G},
    "ggml_x86_avx512_icelake": {x: _GNU for x in _X_TYPES if x != "q5_0"},
}


def _compiled_generic(plan: str, xt: str) -> str:
    plans = COMPILED_GENERIC.get(plan, {})
    if xt not in plans:
        pytest.skip(f"which plan GCC compiled ggml_vec_dot_{xt}_*_generic to in the {plan} build is not measured")
    if plans[xt] is None:
        pytest.skip(f"ggml_vec_dot_{xt}_*_generic disagrees with its own C source in the {plan} build")
    return plans[xt]


def test_compiled_generic_table_names_known_plans():
    assert set(COMPILED_GENERIC) <= set(PLANS)
    assert all(set(v) <= set(_X_TYPES) and set(v.values()) <= {_G, _GNU, None} for v in COMPILED_GENERIC.values())


@pytest.mark.parametrize("xt,yt", BLOCK_PAIRS)
def test_generic_gnu_equals_compiled_generic_symbols(peer, xt, yt, peer_plan):
    """The peer exports ``ggml_vec_dot_<x>_<y>_generic``: the scalar C as GCC compiled it, fused or not as
    ``COMPILED_GENERIC`` says for the peer's build (e.g. the Sapphire Rapids build fuses every pair; the Zen 3 and
    Zen 4 builds fuse q4_1/q5_1 only and leave q8_0, q4_0 and iq4_nl unfused)."""
    compiled = _compiled_generic(peer_plan, xt)
    lib = ctypes.CDLL(peer.lib().__file__.replace("ggml.py", "lib/libggml-cpu.so"))
    fn = getattr(lib, f"ggml_vec_dot_{xt}_{yt}_generic")
    fn.restype = None
    for n in (32, 96, 576):
        qx, qy = _data(peer, xt, yt, n, seed=7 + n)
        s = np.zeros(1, np.float32)
        want = np.empty((len(qx), len(qy)), np.float32)
        for i in range(len(qx)):
            for j in range(len(qy)):
                fn(ctypes.c_int(n), ctypes.c_void_p(s.ctypes.data), ctypes.c_size_t(0),
                   ctypes.c_void_p(qx[i].ctypes.data), ctypes.c_size_t(0),
                   ctypes.c_void_p(qy[j].ctypes.data), ctypes.c_size_t(0), ctypes.c_int(1))
                want[i, j] = s[0]
        assert np.array_equal(_bits(vec_dot(qx, xt, qy, yt, n, compiled)), _bits(want)), (xt, n)


@pytest.mark.parametrize("et", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("n", [7, 13, 64, 75, 100, 128, 192, 512, 576])
def test_element_pairs_equal_upstream_ggml(peer, et, n, peer_plan):
    """f32: 4 zmm accumulators + GCC's vectorised leftovers; f16: AVX512-FP16 half-precision accumulators (f32
    ones without FP16); bf16: two vdpbf16ps accumulators reduced into a double."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((2, n)).astype(np.float32)
    y = rng.standard_normal((3, n)).astype(np.float32)
    if et == "f16":
        x, y = x.astype(np.float16), y.astype(np.float16)
    if et == "bf16":
        x, y = (x.view(np.uint32) >> 16).astype(np.uint16), (y.view(np.uint32) >> 16).astype(np.uint16)
    xb, yb = x.view(np.uint8), y.view(np.uint8)
    got = vec_dot(xb, et, yb, et, n, peer_plan)
    want = np.array([[peer.vec_dot(et, xb[i], yb[j], n) for j in range(3)] for i in range(2)])
    assert np.array_equal(_bits(got), _bits(want))


def test_element_generic_is_a_double_sum():
    """f16.f16 under ggml_generic: exact products summed in double, rounded once at the end."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 200)).astype(np.float16)
    y = rng.standard_normal((2, 200)).astype(np.float16)
    want = np.array([[np.float32(sum(float(a) * float(b) for a, b in zip(x[i], y[j]))) for j in range(2)]
                     for i in range(2)])
    got = vec_dot(x.view(np.uint8), "f16", y.view(np.uint8), "f16", 200, "ggml_generic")
    assert np.array_equal(_bits(got), _bits(want))


# -- k-quants -------------------------------------------------------------------------------------------------

def _k_codes(xt: str, blk: bytes):
    """(256 codes, 256 per-element scales, 8 mins or None, d, dmin) of one q4_K / q6_K super-block."""
    if xt == "q4_K":
        sc12 = blk[4:16]
        scales, mins = [], []
        for j in range(8):
            if j < 4:
                scales.append(sc12[j] & 63)
                mins.append(sc12[j + 4] & 63)
            else:
                scales.append((sc12[j + 4] & 0xF) | ((sc12[j - 4] >> 6) << 4))
                mins.append((sc12[j + 4] >> 4) | ((sc12[j] >> 6) << 4))
        qs = blk[16:144]
        codes = []
        for c in range(4):
            codes += [qs[32 * c + l] & 15 for l in range(32)] + [qs[32 * c + l] >> 4 for l in range(32)]
        return codes, [scales[e // 32] for e in range(256)], mins, _h(blk, 0), _h(blk, 2)
    ql, qh, sc = blk[0:128], blk[128:192], np.frombuffer(blk[192:208], np.int8).astype(int)
    codes = [0] * 256
    for half in range(2):
        for l in range(32):
            h = qh[32 * half + l]
            base = 128 * half
            codes[base + l] = (ql[64 * half + l] & 15) | ((h & 3) << 4)
            codes[base + l + 32] = (ql[64 * half + l + 32] & 15) | (((h >> 2) & 3) << 4)
            codes[base + l + 64] = (ql[64 * half + l] >> 4) | (((h >> 4) & 3) << 4)
            codes[base + l + 96] = (ql[64 * half + l + 32] >> 4) | (((h >> 6) & 3) << 4)
    return codes, [int(sc[e // 16]) for e in range(256)], None, _h(blk, 208), None


def _scalar_k(xt: str, xb: bytes, yb: bytes, n: int, fused: bool) -> np.float32:
    """``ggml_vec_dot_<xt>_q8_K_generic``: int lanes by index % 8, float sums[8], then sumf += sums[l]."""
    sx = {"q4_K": 144, "q6_K": 210}[xt]
    sums = [np.float32(0)] * 8
    sumf = np.float32(0)
    for ib in range(n // 256):
        bx, by = xb[ib * sx:(ib + 1) * sx], yb[ib * 292:(ib + 1) * 292]
        yd = np.frombuffer(by[0:4], "<f4")[0]
        q8 = np.frombuffer(by[4:260], np.int8).astype(int)
        bsums = np.frombuffer(by[260:292], "<i2").astype(int)
        codes, scales, mins, d16, dmin16 = _k_codes(xt, bx)
        vals = [c - 32 for c in codes] if xt == "q6_K" else codes
        lanes = [0] * 8
        for e in range(256):
            lanes[e % 8] += scales[e] * vals[e] * int(q8[e])
        d = np.float32(d16 * yd)
        for lidx in range(8):
            t = np.float32(lanes[lidx])
            sums[lidx] = libm.fmaf(d, t, sums[lidx])[()] if fused else np.float32(sums[lidx] + d * t)
        if xt == "q4_K":
            sumi = np.float32(sum(int(bsums[j]) * mins[j // 2] for j in range(16)))
            dmin = np.float32(dmin16 * yd)
            sumf = libm.fmaf(-dmin, sumi, sumf)[()] if fused else np.float32(sumf - dmin * sumi)
    for lidx in range(8):
        sumf = np.float32(sumf + sums[lidx])
    return sumf


@pytest.mark.parametrize("xt", ["q4_K", "q6_K"])
def test_kquants_against_transcription_symbols_and_simd(peer, xt, peer_plan):
    lib = ctypes.CDLL(peer.lib().__file__.replace("ggml.py", "lib/libggml-cpu.so"))
    fn = getattr(lib, f"ggml_vec_dot_{xt}_q8_K_generic")
    fn.restype = None
    rng = np.random.default_rng(17)
    for n in (256, 768):
        qx = peer.quantize_chunk(xt, rng.standard_normal((2, n)).astype(np.float32))
        qy = peer.from_float("q8_K", rng.standard_normal((3, n)).astype(np.float32))
        for fused, plan in ((False, "ggml_generic"), (True, "ggml_generic_gnu")):
            want = np.array([[_scalar_k(xt, qx[i].tobytes(), qy[j].tobytes(), n, fused) for j in range(3)]
                             for i in range(2)], np.float32)
            assert np.array_equal(_bits(vec_dot(qx, xt, qy, "q8_K", n, plan)), _bits(want)), (plan, n)
        s = np.zeros(1, np.float32)
        sym = np.empty((2, 3), np.float32)
        for i in range(2):
            for j in range(3):
                fn(ctypes.c_int(n), ctypes.c_void_p(s.ctypes.data), ctypes.c_size_t(0),
                   ctypes.c_void_p(qx[i].ctypes.data), ctypes.c_size_t(0),
                   ctypes.c_void_p(qy[j].ctypes.data), ctypes.c_size_t(0), ctypes.c_int(1))
                sym[i, j] = s[0]
        # e.g. GCC fuses q6_K's ``sums[l] += d*aux32[l]`` in the Sapphire Rapids build, not in the Zen 3/4 ones
        compiled = COMPILED_GENERIC.get(peer_plan, {}).get(xt)
        if compiled is not None:
            assert np.array_equal(_bits(vec_dot(qx, xt, qy, "q8_K", n, compiled)), _bits(sym))
        simd = np.array([[peer.vec_dot(xt, qx[i], qy[j], n) for j in range(3)] for i in range(2)])
        assert np.array_equal(_bits(vec_dot(qx, xt, qy, "q8_K", n, peer_plan)), _bits(simd))


@pytest.mark.parametrize("plan", list(PLANS))
def test_nmse_kquants(peer, plan):
    from gguf import GGMLQuantizationType, quants  # noqa: PLC0415

    rng = np.random.default_rng(23)
    for xt in ("q4_K", "q6_K"):
        qx = peer.quantize_chunk(xt, rng.standard_normal((3, 768)).astype(np.float32))
        qy = peer.from_float("q8_K", rng.standard_normal((3, 768)).astype(np.float32))
        fx = quants.dequantize(qx, GGMLQuantizationType[xt.upper()]).astype(np.float64)
        yb = qy.reshape(3, 3, 292)
        fy = (yb[..., 4:260].view(np.int8).astype(np.float64)
              * yb[..., 0:4].copy().view("<f4").astype(np.float64)).reshape(3, 768)
        assert nmse(vec_dot(qx, xt, qy, "q8_K", 768, plan), fx @ fy.T) < NMSE_F32_ACC, (plan, xt)


# -- hand-built cases -------------------------------------------------------------------------------------------

def _q8_0_block(d: float, first: int) -> bytes:
    qs = np.zeros(32, np.int8)
    qs[0] = first
    return np.array([d], "<f2").tobytes() + qs.tobytes()


def test_exact_case_every_plan_agrees():
    """d = 1 and small integers: every partial sum is an exact small integer, so every order gives sum(x*y)."""
    rng = np.random.default_rng(5)
    qx = rng.integers(-3, 4, size=(2, 8, 32))
    qy = rng.integers(-3, 4, size=(3, 8, 32))
    one = np.array([1.0], "<f2").tobytes()
    xb = np.frombuffer(b"".join(one + qx[i, b].astype(np.int8).tobytes() for i in range(2) for b in range(8)),
                       np.uint8).reshape(2, -1)
    yb = np.frombuffer(b"".join(one + qy[i, b].astype(np.int8).tobytes() for i in range(3) for b in range(8)),
                       np.uint8).reshape(3, -1)
    want = np.einsum("ibk,jbk->ij", qx, qy).astype(np.float32)  # integers: exact in any order
    for name, plan in PLANS.items():
        assert np.array_equal(vec_dot(xb, "q8_0", yb, "q8_0", 256, plan), want), name


def test_order_case_by_hand():
    """Four q8_0 blocks, all products in element 0 (lane 0): terms 2**24, 1, 1, -2**24 (exact sum 2).

    serial (ggml_generic, l8a1): 2**24 + 1 -> 2**24 (tie to even) twice, then - 2**24 -> 0.
    l8a2 / l16a1: acc0 = 2**24 + 1 -> 2**24 (blocks 0, 2); acc1 = 1 - 2**24 = -16777215 (blocks 1, 3);
    acc0 + acc1 = 1.
    l16a2: 4 slots, one block each, folded (s0 + s2) + (s1 + s3) = 2**24 + (-16777215) = 1.
    """
    blocks_x = [_q8_0_block(4096.0, 1), _q8_0_block(1.0, 1), _q8_0_block(1.0, 1), _q8_0_block(4096.0, -1)]
    blocks_y = [_q8_0_block(4096.0, 1), _q8_0_block(1.0, 1), _q8_0_block(1.0, 1), _q8_0_block(4096.0, 1)]
    xb = np.frombuffer(b"".join(blocks_x), np.uint8).reshape(1, -1)
    yb = np.frombuffer(b"".join(blocks_y), np.uint8).reshape(1, -1)
    expect = {"ggml_generic": 0.0, "ggml_generic_gnu": 0.0, "ggml_x86_avx512": 0.0, "mlaref_l8a1": 0.0,
              "mlaref_l8a2": 1.0, "mlaref_l16a1": 1.0, "mlaref_l16a2": 1.0}
    for name, value in expect.items():
        assert vec_dot(xb, "q8_0", yb, "q8_0", 128, name)[0, 0] == np.float32(value), name


def test_minus_128_is_outside_the_domain(peer, peer_plan):
    """(-128)*(-128) in q8_0: the reference computes +16384; ggml's AVX2 sign trick (|x| as unsigned, y*sign(x)
    wrapping back to -128) gives -16384. ggml's quantizers never write -128, so this is the documented edge.
    (ggml's scalar code, and the AVX build's one-block tail, multiply true integers: +16384.)"""
    qs = np.zeros(32, np.int8)
    qs[0] = -128
    row = np.frombuffer(np.array([1.0], "<f2").tobytes() + qs.tobytes(), np.uint8).reshape(1, -1)
    assert vec_dot(row, "q8_0", row, "q8_0", 32, "ggml_x86_avx512")[0, 0] == np.float32(16384)
    want = -16384 if _avx2_block_path(peer_plan, "q8_0.q8_0") else 16384
    assert peer.vec_dot("q8_0", row[0], row[0], 32) == np.float32(want)


def test_l16a1_equals_l8a2_on_block_pairs(peer):
    """The plan docstring's claim: one zmm with blocks 2k / 2k+1 in lanes 0-7 / 8-15 is the l8a2 order."""
    for xt, yt in BLOCK_PAIRS:
        qx, qy = _data(peer, xt, yt, 288, seed=3)
        a = vec_dot(qx, xt, qy, yt, 288, "mlaref_l16a1")
        b = vec_dot(qx, xt, qy, yt, 288, "mlaref_l8a2")
        assert np.array_equal(_bits(a), _bits(b)), xt


def _to_x4(rows: np.ndarray, yt: str) -> np.ndarray:
    """Interleave groups of 4 q8_0/q8_1 blocks: scales first (d[4], then s[4] for q8_1), then the 4 qs runs."""
    bs = BLOCK_BYTES[yt]
    hdr = 2 if yt == "q8_0" else 4
    out = []
    for r in rows:
        blocks = [r[i * bs:(i + 1) * bs].tobytes() for i in range(len(r) // bs)]
        parts = []
        n4 = len(blocks) // 4
        for g in range(n4):
            grp = blocks[4 * g:4 * g + 4]
            parts += [b[0:2] for b in grp]
            if yt == "q8_1":
                parts += [b[2:4] for b in grp]
            parts += [b[hdr:] for b in grp]
        parts += blocks[4 * n4:]
        out.append(np.frombuffer(b"".join(parts), np.uint8))
    return np.stack(out)


@pytest.mark.parametrize("xt,yt", [("q8_0", "q8_0"), ("iq4_nl", "q8_0"), ("q4_1", "q8_1")])
def test_x4_layouts_give_the_same_bytes(peer, xt, yt):
    qx, qy = _data(peer, xt, yt, 224, seed=11)  # 7 blocks: one x4 group and 3 plain blocks
    qy4 = _to_x4(qy, yt)
    for plan in ("ggml_generic", "mlaref_l8a2", "ggml_x86_avx512"):
        assert np.array_equal(_bits(vec_dot(qx, xt, qy4, f"{yt}_x4", 224, plan)),
                              _bits(vec_dot(qx, xt, qy, yt, 224, plan))), plan


@pytest.mark.parametrize("yt", ["q8_0_x4", "q8_1_x4"])
def test_x4_byte_map_matches_the_format_modules(yt):
    """vec_dot reads x4 rows with its own byte map; its values must be the format's dequantize (7 blocks:
    one interleaved group and 3 plain blocks)."""
    from mlaref.reference import dequantize, quantize  # noqa: PLC0415
    from mlaref.reference.ops._vecdot_pairs import decode_y  # noqa: PLC0415

    x = np.random.default_rng(2).standard_normal((3, 224)).astype(np.float32)
    rows = quantize(x, yt, variant="iqk")
    q, d, _ = decode_y(rows, yt, 224)
    assert np.array_equal((q * d[..., None]).reshape(3, 224), dequantize(rows, yt))


# -- NMSE against float64 math ------------------------------------------------------------------------------------

NMSE_F32_ACC = 1e-7  # ggml test-backend-ops' default; measured <= 6e-14 here (float32 rounding only)
NMSE_F16_ACC = 1e-5  # ggml_x86_avx512's f16 pair accumulates in half precision; measured 1.8e-7


@pytest.mark.parametrize("plan", list(PLANS))
def test_nmse_block_pairs(peer, plan):
    import gguf  # noqa: PLC0415
    from gguf import quants  # noqa: PLC0415

    for xt, yt in BLOCK_PAIRS:
        qx, qy = _data(peer, xt, yt, 576, rows_x=4, rows_y=4, seed=21)
        fx = quants.dequantize(qx, gguf.GGMLQuantizationType[xt.upper()]).astype(np.float64)
        yq = qy.reshape(4, -1, BLOCK_BYTES[yt])
        fy = (yq[..., -32:].view(np.int8).astype(np.float64)
              * yq[..., :2].copy().view("<f2").astype(np.float64)).reshape(4, -1)
        exact = fx @ fy.T  # float64 reference math, order-insensitive at this precision
        if yt == "q8_1":
            # ggml's q4_1/q5_1 formula uses the stored s = f16(d_y * sum q_y) for the m term, not d_y * sum q_y.
            xq = qx.reshape(4, -1, BLOCK_BYTES[xt])
            mx = xq[..., 2:4].copy().view("<f2").astype(np.float64)[..., 0]
            sy = yq[..., 2:4].copy().view("<f2").astype(np.float64)[..., 0]
            dsum = (yq[..., -32:].view(np.int8).astype(np.float64).sum(-1)
                    * yq[..., :2].copy().view("<f2").astype(np.float64)[..., 0])
            exact = exact + mx @ (sy - dsum).T
        assert nmse(vec_dot(qx, xt, qy, yt, 576, plan), exact) < NMSE_F32_ACC, (plan, xt)


@pytest.mark.parametrize(
    "plan,et",
    [(p, et) for p in PLANS for et in ("f32", "f16", "bf16")
     if not PLANS[p].pairs_only or any(k == f"{et}.{et}" for k, _ in PLANS[p].by_pair)],
)
def test_nmse_element_pairs(plan, et):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 576)).astype(np.float32)
    y = rng.standard_normal((3, 576)).astype(np.float32)
    if et == "f16":
        xb, yb = x.astype(np.float16).view(np.uint8), y.astype(np.float16).view(np.uint8)
        xf, yf = x.astype(np.float16).astype(np.float64), y.astype(np.float16).astype(np.float64)
    elif et == "bf16":
        xs, ys = (x.view(np.uint32) >> 16).astype(np.uint16), (y.view(np.uint32) >> 16).astype(np.uint16)
        xb, yb = xs.view(np.uint8), ys.view(np.uint8)
        xf = (xs.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        yf = (ys.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    else:
        xb, yb, xf, yf = x.view(np.uint8), y.view(np.uint8), x.astype(np.float64), y.astype(np.float64)
    resolved = PLANS[plan].for_pair(f"{et}.{et}")
    bound = NMSE_F16_ACC if resolved.acc_type == "f16" else NMSE_F32_ACC
    assert nmse(vec_dot(xb, et, yb, et, 576, plan), xf @ yf.T) < bound


# -- half-precision helpers ----------------------------------------------------------------------------------------

def test_fma_f16_against_exhaustive_float64_rounding():
    """fma_f16 on f16 operands equals the exact a*b + c rounded once to f16 (checked by Python fractions)."""
    from fractions import Fraction  # noqa: PLC0415

    rng = np.random.default_rng(9)
    a = rng.standard_normal(300).astype(np.float16).astype(np.float32)
    b = (rng.standard_normal(300) * 64).astype(np.float16).astype(np.float32)
    c = (rng.standard_normal(300) * 2.0 ** rng.integers(-20, 10, 300)).astype(np.float16).astype(np.float32)
    got = fma_f16(a, b, c)
    grid = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    for ai, bi, ci, gi in zip(a, b, c, got):
        exact = Fraction(float(ai)) * Fraction(float(bi)) + Fraction(float(ci))
        mag = abs(exact)
        k = int(np.searchsorted(grid, float(mag)))
        lo, hi = grid[max(k - 1, 0)], grid[min(k, len(grid) - 1)]
        dlo, dhi = mag - Fraction(lo), Fraction(hi) - mag
        if dlo < dhi or (dlo == dhi and int(np.float16(lo).view(np.uint16)) % 2 == 0):
            r = lo
        else:
            r = hi
        assert abs(float(gi)) == r and (r == 0 or np.sign(gi) == np.sign(float(exact)))


def test_round_f64_to_f16_equals_fp_on_float32_inputs():
    """On float32 inputs round_f64_to_f16 is plain RNE to f16: fp.f32_to_f16, over all exponents and ties."""
    from mlaref.reference import fp  # noqa: PLC0415

    rng = np.random.default_rng(12)
    bits = rng.integers(0, 0x7F800000, 200000, dtype=np.uint32)
    ties = (np.arange(0x33000000, 0x47800000, 0x1000, dtype=np.uint32))  # low 13 bits = halfway patterns
    x = np.concatenate([bits, ties, ties | 0x80000000]).view(np.float32)
    assert np.array_equal(round_f64_to_f16(x.astype(np.float64)).view(np.uint32),
                          fp.f16_to_f32(fp.f32_to_f16(x)).view(np.uint32))


def test_round_f64_to_f16_double_rounding_case():
    """1 + 2**-11 + 2**-40 is just above the f16 halfway point: correct rounding goes up to 1 + 2**-10,
    whereas rounding to float32 first (1 + 2**-11, a tie) and then to f16 would give 1."""
    v = 1.0 + 2.0**-11 + 2.0**-40
    assert round_f64_to_f16(np.array([v]))[0] == np.float32(1.0 + 2.0**-10)


# -- bad inputs ------------------------------------------------------------------------------------------------

_X = np.zeros((1, 34), np.uint8)


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((_X, "q8_0", _X, "q8_1", 32), ValueError, "unsupported pair 'q8_0.q8_1'"),
        ((np.zeros((1, 32), np.float32), "f32", _X, "f32", 32), TypeError, "x must be uint8 row bytes"),
        ((_X, "q8_0", _X, "q8_0", 64), ValueError, "must have 68 bytes, got 34"),
        ((_X, "q8_0", _X, "q8_0", 0), ValueError, "n must be a positive int"),
        ((_X, "q8_0", _X[0], "q8_0", 32), ValueError, "y must be 2-D"),
        ((_X, "q8_0", _X, "q8_0", 32, "fast"), ValueError, "unknown plan"),
        # one block per lane ("block") is a lane map of 32-blocks (cuda_w32), not of k-quant super-blocks
        ((np.zeros((1, 144), np.uint8), "q4_K", np.zeros((1, 292), np.uint8), "q8_K", 256,
          ReductionPlan(name="b", lanes=8, fold="halves", int_to_float="block")), ValueError, "int_to_float='lane4'"),
        ((np.zeros((1, 292), np.uint8), "q4_K", np.zeros((1, 292), np.uint8), "q8_K", 256), ValueError,
         "rows of q4_K with n = 256 must have 144 bytes"),
        ((_X, "q8_0", _X, "q8_0", 32, "ggml_x86_avx2"), None, None),
    ],
    ids=["pair", "dtype", "row-bytes", "n", "ndim", "plan-name", "plan-kind", "kquant-bytes", "valid"],
)
def test_bad_inputs(args, error, message):
    if error is None:  # the control case: the same call shape with valid arguments works
        assert vec_dot(*args).shape == (1, 1)
        return
    with pytest.raises(error, match=message):
        vec_dot(*args)


def test_per_pair_plan_rejects_pairs_it_does_not_define():
    only_q8 = ReductionPlan(name="only_q8", pairs_only=True, by_pair=(("q8_0.q8_0", PLANS["mlaref_l8a1"]),))
    with pytest.raises(ValueError, match="plan only_q8 does not define the pair 'bf16.bf16'"):
        vec_dot(np.zeros((1, 64), np.uint8), "bf16", np.zeros((1, 64), np.uint8), "bf16", 32, only_q8)


def test_supported_pairs_cover_the_table():
    assert {"f32.f32", "f16.f16", "bf16.bf16", "q8_0.q8_0", "q4_0.q8_0", "q4_1.q8_1", "q5_0.q8_0", "q5_1.q8_1",
            "iq4_nl.q8_0", "q8_0.q8_0_x4", "iq4_nl.q8_0_x4", "q4_1.q8_1_x4", "q4_K.q8_K", "q6_K.q8_K"
            } <= set(supported_pairs())
