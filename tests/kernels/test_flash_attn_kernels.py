"""flash_attn_ext kernels (iqk's blocked online softmax, l16a1, l8a1 or l8s1 K.Q) against the reference and ggml.

Every case runs each kernel under the plan of its token: the case's plan, with its K.Q dots in the kernel's order
(``fa_plan(..., dots="l8a1")`` for the l8a1 kernels, ``dots="l8s1"`` for the q8_0 l8s1 kernels);
``test_flash_attn_l8a1_differs`` and ``test_flash_attn_l8s1_dots`` check that the dot orders give different bytes
on a case, so a kernel cannot pass by running another order.

Bit-exact: every manifest kernel equals ``flash_attn_ext(..., algorithm="blocked", plan=p)`` on float32 bytes for
1, 2, 3 and 4 threads, under plans that vary ``k_step`` (16, 32, 64), ``kv_chunks`` (1, 2, 3) and the exp (libm
expf, the AVX2 and AVX-512 v_expf polynomials), with n_kv not a multiple of k_step, a first KV block fully masked
for one query row, a -0.0 mask entry (binary mask), softcap, K/V head broadcast, and the (Dk, Dv) pairs (192, 128)
(FlashMLA-2 PP), (128, 128) and (576, 512) (FlashMLA-1). A query row with every entry masked raises ValueError
in the kernel wrapper as in the reference (iqk asserts S > 0).

The tiled kernels' edges (``TILE_CASES``), at 1, 2 and 3 threads: query counts 1, 7, 64 and 512, n_kv off the
k_step grid, masks that close whole KV blocks for some rows or for all of them, ragged Dk and Dv tails, an odd last
q8_0 block pair, and 576 / 512 with V a view of K.

Approximate (ggml's test-backend-ops NMSE bound for flash_attn_ext, 5e-4, against float64 softmax attention of
the dequantized operands; Q rounded as the kernels see it): Dk 192, Dv 128, 16 heads, f16 and q8_0 K/V, an f16
causal mask, compared with upstream ggml's own flash_attn_ext on the same tensors.
"""

import numpy as np
import pytest
from kernel_inputs import fa_kv as _kv
from kernel_inputs import fa_mask as _mask
from kernel_inputs import fa_q as _q

from mlaref.codegen.kernels import mm as KM
from mlaref.reference.compare import nmse
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext as ref_fa
from mlaref.reference.tensor import Tensor

FAMILY = "flash_attn_ext"
NMSE_BOUND = 5e-4  # ggml tests/test-backend-ops.cpp: test_flash_attn_ext::max_nmse_err
_REF_CACHE: dict = {}


# (Dk, Dv, nq, nh, nhk, n_kv, plan, scale, softcap, masked rows (row, lo, hi), -0.0 entry). A scale of 10 spreads
# s - M over [-300, 0]: the v_expf paths for |n| > 126 (two-step scaling, subnormal results) and |n| > 192 (0).
CASES = [
    (192, 128, 5, 2, 2, 70, KM.fa_plan(16, 1, "libm"), 0.125, 0.0, [(1, 10, 40), (2, 0, 64)], True),
    (192, 128, 5, 2, 2, 70, KM.fa_plan(32, 3, "v_expf_avx512"), 0.125, 30.0, [(1, 10, 40), (2, 0, 64)], True),
    (192, 128, 4, 2, 1, 67, KM.fa_plan(64, 2, "v_expf_avx2"), 0.125, 0.0, None, False),
    (128, 128, 3, 1, 1, 33, KM.fa_plan(64, 1, "libm"), 0.125, 0.0, [(0, 0, 32)], False),
    (576, 512, 2, 2, 1, 20, KM.fa_plan(16, 2, "libm"), 0.125, 0.0, [(1, 3, 9)], False),
    (192, 128, 3, 1, 1, 48, KM.fa_plan(48, 1, "v_expf_avx2"), 10.0, 0.0, None, False),
    (192, 128, 3, 1, 1, 48, KM.fa_plan(48, 1, "v_expf_avx512"), 10.0, 0.0, None, False),
]


def _dots(plan, dots: str):
    """The case's plan with its K.Q dots in the order of a kernel's plan token."""
    return plan if dots == "l16a1" else KM.fa_plan(plan.k_step, plan.kv_chunks, plan.exp, dots=dots)


def _case(type: str, i: int, dots: str = "l16a1"):
    key = (type, i, dots)
    if key not in _REF_CACHE:
        Dk, Dv, nq, nh, nhk, n_kv, plan, scale, softcap, masked, negzero = CASES[i]
        plan = _dots(plan, dots)
        rng = np.random.default_rng(1000 + i + (7 if type == "q8_0" else 0))
        q = _q(rng, Dk, nq, nh)
        k, v = _kv(rng, type, (Dk, n_kv, nhk, 1)), _kv(rng, type, (Dv, n_kv, nhk, 1))
        mask = None
        if masked is not None:
            mask = _mask(n_kv, 32, masked)
            if negzero:
                mask.storage()[0, 0, 3, 5] = 0x8000  # -0.0 masks the entry too
        want = ref_fa(q, k, v, mask, scale, 0.0, softcap, algorithm="blocked", plan=plan)
        _REF_CACHE[key] = (q, k, v, mask, plan, scale, softcap, want)
    return _REF_CACHE[key]


def test_flash_attn_bit_exact(kernel_name, kt):
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    for i in range(len(CASES)):
        q, kk, v, mask, plan, scale, softcap, want = _case(k["type_x"], i, k["plan"])
        for n_threads in (1, 2, 3, 4):
            n = int(np.prod(want.ne)) * 4
            buf = np.full(n + 64, 0xA5, np.uint8)
            buf[:n] = 0xFF  # NaN poison
            ne = want.ne
            out = Tensor("f32", ne, (4, 4 * ne[0], 4 * ne[0] * ne[1], 4 * ne[0] * ne[1] * ne[2]), buf)
            got = KM.flash_attn_ext(q, kk, v, mask, scale, 0.0, softcap, plan=plan, kernel=kernel_name,
                                    n_threads=n_threads, q_block=2, out=out)
            assert np.all(buf[-64:] == 0xA5), f"{kernel_name}: the kernel wrote past the output"
            kt.assert_same_bytes(got.storage(), want.storage(), 4,
                                 f"{kernel_name} case {i} plan {plan.name} threads={n_threads}")


# The tiled kernels' edges: (name, Dk, Dv, nq, nh, nhk, n_kv, plan, mask, V a view of K, q_block). Query counts 1, 7,
# 64 and 512 (tile remainders of the 3-query K.Q and 6-query V tiles), n_kv off the k_step grid, causal masks that
# close whole KV blocks for some rows ("causal") or for every row ("holes": block 1 closed everywhere, so no row
# needs its K or V), binary masks with -0.0 and finite entries ("mixed"), row tails (Dk 100 and 108: a ragged lo
# or hi lane half; Dk 96 for q8_0: an odd last block pair; Dv 40: a tail past the 16-value V tile), and 576 / 512
# with V a view of K (FlashMLA-1); "longkv": a KV head past the avx2 head cache (widened per unit), at the default
# q_block.
TILE_CASES = [
    ("nq1", 192, 128, 1, 2, 1, 100, KM.fa_plan(64, 1, "v_expf_avx2"), "causal", False, 64),
    ("nq7", 192, 128, 7, 2, 2, 130, KM.fa_plan(64, 1, "v_expf_avx2"), "causal", False, 64),
    ("nq64", 192, 128, 64, 1, 1, 200, KM.fa_plan(64, 1, "v_expf_avx2"), "causal", False, 64),
    ("nq512", 192, 128, 512, 1, 1, 72, KM.fa_plan(32, 1, "v_expf_avx2"), "causal", False, 100),
    ("holes", 192, 128, 13, 1, 1, 160, KM.fa_plan(32, 2, "libm"), "holes", False, 64),
    ("mixed", 192, 128, 11, 2, 1, 77, KM.fa_plan(16, 1, "v_expf_avx2"), "mixed", False, 4),
    ("tails", 100, 40, 8, 1, 1, 50, KM.fa_plan(16, 1, "libm"), "causal", False, 64),
    ("hitail", 108, 40, 5, 1, 1, 33, KM.fa_plan(32, 1, "v_expf_avx2"), "mixed", False, 64),
    ("q8pairs", 96, 64, 9, 1, 1, 70, KM.fa_plan(32, 1, "v_expf_avx2"), "causal", False, 64),
    ("mla576", 576, 512, 9, 2, 1, 90, KM.fa_plan(32, 2, "v_expf_avx2"), "causal", True, 64),
    ("longkv", 576, 512, 5, 2, 1, 700, KM.fa_plan(64, 1, "v_expf_avx2"), "causal", True, None),
]


def _tile_mask(kind: str, nq: int, n_kv: int, rng) -> Tensor:
    rows = -(-nq // 16) * 16  # ggml pads the mask rows
    j, i = np.meshgrid(np.arange(n_kv), np.arange(rows))
    m = np.where(j > n_kv - nq + i, -np.inf, 0).astype(np.float16)
    m[:, 0] = 0  # keep column 0 open: no fully masked row
    if kind == "holes":
        m[:, 32:64] = -np.inf
    elif kind == "mixed":
        m = np.where(rng.random((rows, n_kv)) < 0.3, np.float16(-np.inf), np.float16(0))
        m[rng.random((rows, n_kv)) < 0.1] = np.float16(-1.5)  # finite: masks too (binary)
        m[:, 0] = 0
    t = Tensor.from_numpy(m.reshape(1, 1, rows, n_kv), "f16")
    if kind == "mixed":
        t.storage()[0, 0, 1, 2] = 0x8000  # -0.0 masks the entry
    return t


def _tile_case(type: str, name: str, dots: str = "l16a1"):
    key = ("tile", type, name, dots)
    if key not in _REF_CACHE:
        _, Dk, Dv, nq, nh, nhk, n_kv, plan, kind, view, q_block = next(c for c in TILE_CASES if c[0] == name)
        plan = _dots(plan, dots)
        rng = np.random.default_rng(sum(map(ord, name)) + (7 if type == "q8_0" else 0))
        q = _q(rng, Dk, nq, nh, s=0.5)
        k = _kv(rng, type, (Dk, n_kv, nhk, 1))
        v = k.view((Dv, n_kv, nhk, 1), k.nb[1:], 0) if view else _kv(rng, type, (Dv, n_kv, nhk, 1))
        mask = _tile_mask(kind, nq, n_kv, rng)
        want = ref_fa(q, k, v, mask, 0.1, algorithm="blocked", plan=plan)
        _REF_CACHE[key] = (q, k, v, mask, plan, q_block, want)
    return _REF_CACHE[key]


@pytest.mark.parametrize("case", [c[0] for c in TILE_CASES])
def test_flash_attn_tiles_bit_exact(kernel_name, kt, case):
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    Dk, Dv = next(c for c in TILE_CASES if c[0] == case)[1:3]
    if k["type_x"] == "q8_0" and (Dk % 32 or Dv % 32):
        # no such q8_0 case exists: a q8_0 row is whole 32-value blocks, and a ragged one is refused up front
        with pytest.raises(ValueError, match="32"):
            _kv(np.random.default_rng(0), "q8_0", (Dk, 4, 1, 1))
        return
    q, kk, v, mask, plan, q_block, want = _tile_case(k["type_x"], case, k["plan"])
    for n_threads in (1, 2, 3):
        got = KM.flash_attn_ext(q, kk, v, mask, 0.1, plan=plan, kernel=kernel_name, n_threads=n_threads,
                                q_block=q_block)
        kt.assert_same_bytes(got.storage(), want.storage(), 4, f"{kernel_name} {case} threads={n_threads}")


@pytest.mark.parametrize("type", ["f16", "q8_0"])
def test_flash_attn_l8a1_differs(type):
    """The l8a1 and l16a1 references differ on the 576 / 512 tile case (so each kernel's test tells the orders
    apart), and each dispatched kernel gives its own plan's bytes; FA_PLAN keeps the l16a1 dots."""
    l16, l8 = _tile_case(type, "mla576", "l16a1"), _tile_case(type, "mla576", "l8a1")
    assert l8[4].for_pair(f"{type}.{type}").lanes == 8 and KM.FA_PLAN.for_pair(f"{type}.{type}").lanes == 16
    assert KM.fa_plan() == KM.FA_PLAN.replace(name=KM.fa_plan().name)
    assert not np.array_equal(l16[-1].storage().view(np.uint32), l8[-1].storage().view(np.uint32))
    for q, kk, v, mask, plan, q_block, want in (l16, l8):
        got = KM.flash_attn_ext(q, kk, v, mask, 0.1, plan=plan, n_threads=2, q_block=q_block)
        assert np.array_equal(got.storage().view(np.uint32), want.storage().view(np.uint32)), plan.name


@pytest.mark.parametrize("type", ["f16", "q8_0"])
def test_flash_attn_l8s1_dots(type, kt):
    """fa_plan(dots="l8s1"): q8_0 K runs the block-serial l8s1 kernels, whose reference differs from l8a1's on the
    576 / 512 tile case; f16 K is l8a1 there (the plan's element pairs) and runs the l8a1 kernels, same bytes."""
    from mlaref.codegen import catalog, cpu

    s1, a1 = _tile_case(type, "mla576", "l8s1"), _tile_case(type, "mla576", "l8a1")
    same = np.array_equal(s1[-1].storage().view(np.uint32), a1[-1].storage().view(np.uint32))
    assert same == (type == "f16")
    for isa in catalog.MM_L8S1_ISAS:
        if cpu.missing(isa):
            continue
        q, kk, v, mask, plan, q_block, want = s1
        got = KM.flash_attn_ext(q, kk, v, mask, 0.1, plan=plan, isa=isa, n_threads=2, q_block=q_block)
        kt.assert_same_bytes(got.storage(), want.storage(), 4, f"{type} l8s1 {isa}")


def test_flash_attn_l8s1_ragged_k_steps(kt):
    """The l8s1 K tile takes a KV block's rows 8 at a time: k_step 20 (groups of 8, 8, 4) in 3 chunks of n_kv 77
    (chunk and block starts off the 8-row grid, ragged last blocks), the K/V head cached across units, against the
    reference on every ISA this CPU runs for the plan, 1 and 3 threads."""
    from mlaref.codegen import catalog, cpu

    rng = np.random.default_rng(2077)
    q = _q(rng, 192, 9, 2)
    k, v = _kv(rng, "q8_0", (192, 77, 1, 1)), _kv(rng, "q8_0", (128, 77, 1, 1))
    mask = _mask(77, 32, [(1, 5, 30), (4, 0, 40)])
    plan = KM.fa_plan(20, 3, "v_expf_avx2", dots="l8s1")
    want = ref_fa(q, k, v, mask, 0.1, algorithm="blocked", plan=plan)
    for isa in catalog.MM_L8S1_ISAS:
        if cpu.missing(isa):
            continue
        for n_threads in (1, 3):
            got = KM.flash_attn_ext(q, k, v, mask, 0.1, plan=plan, isa=isa, n_threads=n_threads, q_block=4)
            kt.assert_same_bytes(got.storage(), want.storage(), 4, f"q8_0 l8s1 k_step 20 {isa} threads={n_threads}")


def test_flash_attn_fastest_fa_plan():
    """The native flash-attention plan (kernels.mm.fastest_fa_plan): fastest_plan's dots (l8s1 on avx2: f16 K.Q in
    8 lanes, q8_0 block-serial; l16a1 on avx512 and scalar) with the given blocked-softmax fields; with no ISA, the
    one dispatch picks here."""
    from mlaref.codegen import dispatch

    for isa, dots, f16_lanes, q8_lanes in (("avx2", "l8s1", 8, 1), ("avx512", "l16a1", 16, 16),
                                           ("avx512vnni", "l16a1", 16, 16), ("scalar", "l16a1", 16, 16)):
        p = KM.fastest_fa_plan(isa, 32, 2, "v_expf_avx2")
        assert p.for_pair("f16.f16").lanes == f16_lanes and p.for_pair("q8_0.q8_0").lanes == q8_lanes
        assert (p.k_step, p.kv_chunks, p.exp) == (32, 2, "v_expf_avx2")
        assert p == KM.fa_plan(32, 2, "v_expf_avx2", dots=dots)
    assert KM.fastest_fa_plan() == KM.fastest_fa_plan(dispatch.choose(FAMILY, "f16", "f16", "l16a1")[0].isa)


def test_flash_attn_fully_masked_row_raises(rng):
    q = _q(rng, 192, 3, 1)
    k, v = _kv(rng, "f16", (192, 40, 1, 1)), _kv(rng, "f16", (128, 40, 1, 1))
    mask = _mask(40, 32, [(1, 0, 40)])
    with pytest.raises(ValueError, match="masked"):
        ref_fa(q, k, v, mask, 0.125, algorithm="blocked", plan=KM.FA_PLAN)
    with pytest.raises(ValueError, match="masked"):
        KM.flash_attn_ext(q, k, v, mask, 0.125)
    with pytest.raises(ValueError, match="1 query row"):  # the count comes back from a pool worker's job too
        KM.flash_attn_ext(q, k, v, mask, 0.125, n_threads=3, q_block=1)


def test_flash_attn_rejects_bad_arguments(rng):
    q = _q(rng, 192, 3, 2)
    k, v = _kv(rng, "f16", (192, 40, 2, 1)), _kv(rng, "f16", (128, 40, 2, 1))
    with pytest.raises(ValueError, match="blocked"):
        KM.flash_attn_ext(q, k, v, None, 0.1, algorithm="generic")
    with pytest.raises(ValueError, match="Dk"):
        KM.flash_attn_ext(_q(rng, 128, 3, 2), k, v, None, 0.1)
    with pytest.raises(ValueError, match="same type"):
        KM.flash_attn_ext(q, k, _kv(rng, "q8_0", (128, 40, 2, 1)), None, 0.1)
    with pytest.raises(ValueError, match="mask"):
        KM.flash_attn_ext(q, k, v, _mask(20, 32), 0.1)
    with pytest.raises(ValueError, match="max_bias"):
        KM.flash_attn_ext(q, k, v, None, 0.1, 8.0)
    with pytest.raises(ValueError, match="mlaref_l16a1"):
        KM.flash_attn_ext(q, k, v, None, 0.1, plan="ggml_generic")
    with pytest.raises(ValueError, match="k_step"):
        KM.flash_attn_ext(q, k, v, None, 0.1, plan=KM.FA_PLAN.replace(k_step=5000))
    with pytest.raises(ValueError, match="dots must be one of l16a1, l8a1"):
        KM.fa_plan(dots="l8a2")
    with pytest.raises(ValueError, match=r"computes flash_attn_ext f16/f16 \[l16a1\], not .*\[l8a1\]"):
        KM.flash_attn_ext(q, k, v, None, 0.1, plan=KM.fa_plan(dots="l8a1"),
                          kernel="mlaref_flash_attn_ext_f16_f16__avx2_l16a1")
    with pytest.raises(TypeError, match="scale"):
        KM.flash_attn_ext(q, k, v, None, "0.1")
    with pytest.raises(ValueError, match="q_block"):
        KM.flash_attn_ext(q, k, v, None, 0.1, q_block=0)


@pytest.mark.parametrize("type", ["f16", "q8_0"])
def test_flash_attn_mla_shape_vs_ggml(type, ggml, rng):
    """FlashMLA-2 PP attention: Dk 192, Dv 128, 16 heads, f16 causal-style mask, small n_kv."""
    from mlaref.codegen.peers import ggml_ops as ggml_ops

    Dk, Dv, nh, nq, n_kv = 192, 128, 16, 8, 96
    q = _q(rng, Dk, nq, nh, s=0.5)
    k, v = _kv(rng, type, (Dk, n_kv, nh, 1)), _kv(rng, type, (Dv, n_kv, nh, 1))
    m = np.zeros((64, n_kv), np.float16)  # ggml pads the mask rows; cells after the query's position masked
    for i in range(nq):
        m[i, n_kv - nq + i + 1:] = -np.inf
    mask = Tensor.from_numpy(m.reshape(1, 1, 64, n_kv), "f16")
    scale = 1.0 / np.sqrt(Dk)
    got = KM.flash_attn_ext(q, k, v, mask, scale, n_threads=2, plan=KM.fa_plan(32, 2, "v_expf_avx512"))
    ref = ggml_ops.flash_attn_ext(q, k, v, mask, scale)
    qv = q.to_numpy()[0]  # (nh, nq, Dk)
    kv, vv = k.to_numpy()[0].astype(np.float64), v.to_numpy()[0].astype(np.float64)  # (nh, n_kv, D)
    s = np.einsum("hqd,hkd->hqk", qv.astype(np.float64), kv) * scale + m[:nq].astype(np.float64)[None]
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    o = np.einsum("hqk,hkd->hqd", p / p.sum(axis=-1, keepdims=True), vv)  # (nh, nq, Dv)
    truth = np.transpose(o, (1, 0, 2))  # dst [Dv, nh, nq]: (nq, nh, Dv)
    got_v = got.to_numpy()[0]
    ref_v = ref.to_numpy()[0]
    assert got_v.shape == truth.shape == ref_v.shape
    assert nmse(got_v, truth) < NMSE_BOUND
    assert nmse(ref_v, truth) < NMSE_BOUND
    assert nmse(got_v, ref_v) < NMSE_BOUND
