"""mul_mat kernels (#253: non-f32 src1 converted per column inside the kernel) against the reference and ggml.

Bit-exact: every manifest kernel equals ``MulMat_253`` under its plan (``mlaref_l16a1``, or ``mlaref_l8a1`` for the
scalar and avx2 ``_l8a1`` kernels, ``mlaref_l8s1`` for the scalar and avx2 ``_l8s1`` kernels of 32-block weights;
variant x86) on float32 bytes, for
1, 2, 3 and 4 threads, with tails (K not a multiple of 16 for element weights, an odd number of 32-blocks),
M not a multiple of the row tiles (4; avx2: 6 and 8; avx2 l8a1: 8 and 9; l8s1: groups of 8 rows), a strided src1 view (the cache layout: rows of 576 values, 512 used), src0
broadcast over ne02/ne03, a NaN-poisoned output with guard bytes after it.

Approximate (NMSE bound of ggml's test-backend-ops for mul_mat, 5e-4, against float64 math of the dequantized
operands): the MLA shape kv_f32 = wkv_b [512, 4096] x cache [512, n_kv] (n_kv small), compared with upstream
ggml running the same op (an f32 copy of the cache for the #253 cases upstream cannot run).
"""

import zlib

import numpy as np
import pytest
from kernel_inputs import mm_tensor as _tensor
from kernel_inputs import mm_values as _values
from kernel_inputs import serial_tie_pair

from mlaref.codegen.kernels import mm as KM
from mlaref.reference.compare import nmse
from mlaref.reference.ops.mul_mat import MulMat_253
from mlaref.reference.tensor import Tensor

FAMILY = "mul_mat"
NMSE_BOUND = 5e-4  # ggml tests/test-backend-ops.cpp: test_mul_mat::max_nmse_err
_REF_CACHE: dict = {}
PLANS = {"l16a1": "mlaref_l16a1", "l8a1": "mlaref_l8a1", "l8s1": "mlaref_l8s1"}  # kernel-name token -> reference plan


def _guarded_out(ne) -> tuple[Tensor, np.ndarray]:
    """A NaN-poisoned contiguous f32 output followed by 64 guard bytes."""
    n = int(np.prod(ne)) * 4
    buf = np.full(n + 64, 0xA5, np.uint8)
    buf[:n] = 0xFF
    return Tensor("f32", ne, (4, 4 * ne[0], 4 * ne[0] * ne[1], 4 * ne[0] * ne[1] * ne[2]), buf), buf


def _cases(tx: str, ty: str):
    """(K, a.ne, b.ne, src1 row length, src0 row length) per case: tails, odd rows, broadcast, strided views."""
    block = tx not in ("f32", "f16", "bf16") or ty == "q8_0"
    k_tail = 96 if block else 37  # 3 blocks (odd pair) / 2 steps of 16 + 5
    k_real = 192 if block else 200
    if tx in ("q4_K", "q6_K"):
        k_tail, k_real = 768, 512  # 3 super-blocks (odd pair), 2
    a_pad = 256 if tx in ("q4_K", "q6_K") else 64
    return [
        (k_tail, (k_tail, 7, 1, 1), (k_tail, 9, 2, 1), None, None),          # r2 = 2: one weight, two src1 matrices
        (k_real, (k_real, 5, 2, 1), (k_real, 6, 4, 2), None, None),          # r2 = 2, r3 = 2
        (k_real, (k_real, 6, 1, 1), (k_real, 11, 1, 1), k_real + 64, k_real + a_pad),  # strided src1 and src0 views
    ]


def test_mul_mat_bit_exact(kernel_name, kt, rng):
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    tx, ty, plan = k["type_x"], k["type_y"], PLANS[k["plan"]]
    for case, (K, ane, bne, row_len, a_row_len) in enumerate(_cases(tx, ty)):
        key = (tx, ty, case, plan)
        if key not in _REF_CACHE:
            r = np.random.default_rng(zlib.crc32(repr(key[:3]).encode()))
            a = _tensor(_values(r, int(np.prod(ane[1:])), K), tx, ane, a_row_len)
            b = _tensor(_values(r, int(np.prod(bne[1:])), K), ty, bne, row_len)
            want = MulMat_253(plan=plan, variant="x86")(a, b)
            _REF_CACHE[key] = (a, b, want)
        a, b, want = _REF_CACHE[key]
        for n_threads in (1, 2, 3, 4):
            out, buf = _guarded_out(want.ne)
            got = KM.mul_mat(a, b, plan=plan, kernel=kernel_name, n_threads=n_threads, out=out)
            assert got is out
            assert np.all(buf[-64:] == 0xA5), f"{kernel_name}: the kernel wrote past the output"
            kt.assert_same_bytes(got.storage(), want.storage(), 4,
                                 f"{kernel_name} case {case} K={K} a{ane} b{bne} threads={n_threads}")


def test_mul_mat_rejects_bad_arguments(rng):
    a = _tensor(_values(rng, 4, 64), "q8_0", (64, 4, 1, 1))
    b = _tensor(_values(rng, 3, 64), "f16", (64, 3, 1, 1))
    with pytest.raises(ValueError, match="ne\\[0\\]"):
        KM.mul_mat(a, _tensor(_values(rng, 3, 96), "f16", (96, 3, 1, 1)))
    with pytest.raises(ValueError, match="multiples"):
        KM.mul_mat(_tensor(_values(rng, 8, 64), "q8_0", (64, 4, 2, 1)),
                   _tensor(_values(rng, 9, 64), "f16", (64, 3, 3, 1)))
    with pytest.raises(ValueError, match="src1"):
        KM.mul_mat(a, b, vec_dot_type="q8_1")
    with pytest.raises(ValueError, match="mlaref_l16a1 .*, mlaref_l8a1 .* or mlaref_l8s1"):
        KM.mul_mat(a, b, plan="ggml_generic")
    with pytest.raises(ValueError, match="mlaref_l16a1"):
        KM.mul_mat(a, b, plan="mlaref_l16a2")
    with pytest.raises(ValueError, match="variant"):
        KM.mul_mat(a, b, variant="ref")
    with pytest.raises(TypeError, match="Tensor"):
        KM.mul_mat(a, np.zeros((3, 64), np.float32))
    with pytest.raises(ValueError, match="type"):
        KM.mul_mat(_tensor(_values(rng, 4, 256), "q8_K", (256, 4, 1, 1)),
                   _tensor(_values(rng, 3, 256), "f32", (256, 3, 1, 1)))
    with pytest.raises(TypeError, match="n_threads"):
        KM.mul_mat(a, b, n_threads=1.5)
    with pytest.raises(ValueError, match="out"):
        KM.mul_mat(a, b, out=Tensor.zeros("f32", (3, 4, 1, 1)))


@pytest.mark.parametrize("tx, ty", [("f16", "f16"), ("q8_0", "f32"), ("q8_0", "f16"), ("iq4_nl", "f16"),
                                    ("q8_0", "q8_0"), ("q4_0", "f16"), ("q4_K", "f32"), ("q6_K", "f16")])
def test_mul_mat_mla_shape_vs_ggml(tx, ty, ggml, rng):
    """kv_f32 = mul_mat(wkv_b [512, 4096], cache view [512, n_kv]) with the cache rows of 576 values."""
    from mlaref.codegen.peers import ggml_ops as ggml_ops

    n_kv = 24
    w = _tensor(_values(rng, 4096, 512) * np.float32(0.05), tx, (512, 4096, 1, 1))
    cache = _tensor(_values(rng, n_kv, 512), ty, (512, n_kv, 1, 1), row_len=576)
    got = KM.mul_mat(w, cache, n_threads=2).to_numpy().reshape(n_kv, 4096)
    wv = w.to_numpy().reshape(4096, 512).astype(np.float64)
    truth = cache.to_numpy().reshape(n_kv, 512).astype(np.float64) @ wv.T  # float64 truth: any order is fine
    upstream_direct = (tx, ty) in (("f16", "f16"), ("q8_0", "f32"), ("q8_0", "q8_0"), ("q4_K", "f32"))
    b = cache if upstream_direct else ggml_ops.cast(cache, "f32")  # upstream cannot take a non-f32 src1 (#253)
    ref = ggml_ops.mul_mat(w, b).to_numpy().reshape(n_kv, 4096)
    assert nmse(got, truth) < NMSE_BOUND
    assert nmse(ref, truth) < NMSE_BOUND
    assert nmse(got, ref) < NMSE_BOUND
    if (tx, ty) == ("f16", "f16"):
        # f16 x f16 products are exact, only the summation order differs: far inside the bound
        assert nmse(got, truth) < 1e-12


def test_mul_mat_q8_0_src1_holding_minus_128(kt, rng):
    """Outside the valid domain: a q8_0 src1 value of -128 (no ggml quantizer writes it). The scalar and avx512vnni
    kernels multiply true integers, like the reference; the avx2 / avx512 sign trick (maddubs(|x|, sign(y, x)); the
    l8s1 tiles use it too)
    turns (-128)*(x < 0) into +128*|x| with the wrong sign, so only the columns holding -128 differ there."""
    from mlaref.codegen import cpu

    K = 64
    a = _tensor(_values(rng, 6, K), "q8_0", (K, 6, 1, 1))
    b = _tensor(_values(rng, 5, K), "q8_0", (K, 5, 1, 1))
    raw = b.storage()[0, 0]  # (5, 68) block bytes
    raw[1, 2:34] = 0x80  # column 1: every value of block 0 is -128
    raw[3, 40] = 0x80  # column 3: one value of block 1
    for plan, isas in (("mlaref_l16a1", ("scalar", "avx2", "avx512", "avx512vnni")), ("mlaref_l8s1", ("scalar", "avx2"))):
        want = MulMat_253(plan=plan)(a, b).storage()[0, 0]  # (5 columns, 6 rows)
        for isa in isas:
            if cpu.missing(isa):
                continue
            got = KM.mul_mat(a, b, plan=plan, isa=isa).storage()[0, 0]
            if isa in ("scalar", "avx512vnni"):
                kt.assert_same_bytes(got, want, 4, f"{isa} {plan} with -128 in src1")
            else:
                same = np.all(got.view(np.uint32) == want.view(np.uint32), axis=1)
                assert same.tolist() == [True, False, True, False, True], f"{isa} {plan}: columns equal {same}"


@pytest.mark.parametrize("plan", ["mlaref_l16a1", "mlaref_l8a1"])
@pytest.mark.parametrize("tx, ty", [("f16", "f16"), ("f16", "bf16"), ("f32", "f32"), ("bf16", "f16"),
                                    ("q8_0", "q8_0"), ("iq4_nl", "f16"), ("q5_1", "f32"), ("q4_K", "f16")])
def test_mul_mat_tile_edges(tx, ty, plan, kt):
    """Register and cache tiles at their edges, per ISA this CPU runs for the plan (l8a1: scalar and avx2): 11 rows
    (avx2 l16a1 element tiles: x tiles of 6 and 5 rows, row triples then a row pair; l16a1 block tiles: 8 and 3
    rows, row pairs then one; l8a1 element tiles: 8 and 3 rows, row quads then a triple; l8a1 block tiles: 9 and 2
    rows), 261 src1 columns (the 128- and 256-column blocks, column pairs or triples then a ragged group), ragged
    last steps (K = 40 elements: 2 steps of 16 + 8, the last 8-lane step absent; K = 45: 2 + 13, the last 8-lane
    step ragged; 3 32-blocks or super-blocks: an odd pair), a strided src1; 1, 2 and 3 threads give the reference's
    bytes. The two plans' references differ (the test cannot pass by running the other order)."""
    from mlaref.codegen import catalog, cpu

    block = tx not in ("f32", "f16", "bf16") or ty == "q8_0"
    for K in ((768,) if tx == "q4_K" else (96,) if block else (40, 45)):
        r = np.random.default_rng(zlib.crc32(repr(("edges", tx, ty, K)).encode()))
        a = _tensor(_values(r, 11, K), tx, (K, 11, 1, 1))
        b = _tensor(_values(r, 261, K), ty, (K, 261, 1, 1), row_len=K + 32)
        want = MulMat_253(plan=plan, variant="x86")(a, b)
        other = MulMat_253(plan="mlaref_l8a1" if plan == "mlaref_l16a1" else "mlaref_l16a1", variant="x86")(a, b)
        assert not np.array_equal(want.storage().view(np.uint32), other.storage().view(np.uint32))
        isas = catalog.MM_L8A1_ISAS if plan == "mlaref_l8a1" else ("scalar", "avx2", "avx512", "avx512vnni")
        for isa in isas:
            if cpu.missing(isa):
                continue
            for n_threads in (1, 2, 3):
                out, buf = _guarded_out(want.ne)
                KM.mul_mat(a, b, plan=plan, isa=isa, n_threads=n_threads, out=out)
                assert np.all(buf[-64:] == 0xA5), f"{tx} x {ty} {isa}: the kernel wrote past the output"
                kt.assert_same_bytes(out.storage(), want.storage(), 4,
                                     f"{tx} x {ty} K={K} {plan} {isa} threads={n_threads}")


def test_mul_mat_l8a1_hand_checked_row(kt):
    """The hand-checked row of tests/reference/test_mul_mat.py (K = 25, x[0] = 2**11, x[8] = x[16] = x[24] = 2**-13,
    src1 ones): l8a1 gives 2**11, l16a1 2**11 + 2**-12, on every ISA this CPU runs for the plan."""
    from mlaref.codegen import catalog, cpu

    x = np.zeros((1, 25), np.float32)
    x[0, 0], x[0, 8], x[0, 16], x[0, 24] = 2.0 ** 11, 2.0 ** -13, 2.0 ** -13, 2.0 ** -13
    for t in ("f32", "f16"):
        a, b = Tensor.from_numpy(x, t), Tensor.from_numpy(np.ones((1, 25), np.float32), t)
        for plan, isas, want in (("mlaref_l8a1", catalog.MM_L8A1_ISAS, 2.0 ** 11),
                                 ("mlaref_l16a1", catalog.MM_ISAS, 2.0 ** 11 + 2.0 ** -12)):
            for isa in isas:
                if not cpu.missing(isa) and isa != "avx512vnni":  # avx512vnni: block weights only
                    assert KM.mul_mat(a, b, plan=plan, isa=isa).to_numpy().item() == want, (t, plan, isa)


def test_mul_mat_fastest_plan():
    """The native plan per ISA (one named place: kernels.mm.fastest_plan): l8s1 on avx2, l16a1 on avx512 and
    scalar; with no ISA, the one dispatch picks here. The avx512 kernels implement l16a1 only (the catalog refuses
    an avx512 l8a1 spec); an avx512 cap runs l8a1 on the avx2 kernel it allows."""
    from mlaref.codegen import catalog, dispatch
    from mlaref.reference.plan import MLAREF_L8S1, MLAREF_L16A1

    assert KM.fastest_plan("avx2") is MLAREF_L8S1
    assert KM.fastest_plan("avx512") is MLAREF_L16A1 and KM.fastest_plan("avx512vnni") is MLAREF_L16A1
    assert KM.fastest_plan("scalar") is MLAREF_L16A1
    assert KM.fastest_plan() is KM.fastest_plan(dispatch.choose("mul_mat", "f16", "f16", "l16a1")[0].isa)
    assert KM.MM_PLAN is MLAREF_L16A1
    with pytest.raises(ValueError, match="l8a1 has mul_mat kernels for scalar, avx2 only"):
        catalog.KernelSpec("mul_mat", "f16", "f16", "avx512", "l8a1").validate()
    with pytest.raises(ValueError, match="l8a1 has flash_attn_ext kernels for scalar, avx2 only"):
        catalog.KernelSpec("flash_attn_ext", "f16", "f16", "avx512", "l8a1").validate()
    with pytest.raises(ValueError, match="l8s1 has mul_mat kernels for scalar, avx2 only"):
        catalog.KernelSpec("mul_mat", "q8_0", "f16", "avx512", "l8s1").validate()
    with pytest.raises(ValueError, match="l8s1 has kernels for the 32-block weights"):
        catalog.KernelSpec("mul_mat", "f16", "f16", "avx2", "l8s1").validate()


@pytest.mark.parametrize("tx, ty", [("q8_0", "q8_0"), ("q8_0", "f16"), ("q4_0", "f32"), ("q5_0", "bf16"),
                                    ("iq4_nl", "f16"), ("q4_1", "f16"), ("q5_1", "f32")])
def test_mul_mat_l8s1_edges(tx, ty, kt):
    """The l8s1 kernels of every 32-block weight at their edges, per ISA this CPU runs for the plan: 21 rows (x tiles
    of 16 and 5 rows: two full groups of 8 interleaved rows, then a group of 5 whose 3 zero rows are never stored),
    261 src1 columns (the 256-column block, column quads then a single column), 3 blocks, a strided src1; 1, 2 and 3
    threads give mlaref_l8s1's bytes, which differ from mlaref_l8a1's (so the test cannot pass by running the lane
    order). ggml_generic_gnu has the same per-block order for these pairs and runs on the same kernels."""
    from mlaref.codegen import catalog, cpu

    K = 96
    r = np.random.default_rng(zlib.crc32(repr(("l8s1", tx, ty)).encode()))
    a = _tensor(_values(r, 21, K), tx, (K, 21, 1, 1))
    b = _tensor(_values(r, 261, K), ty, (K, 261, 1, 1), row_len=K + 32)
    want = MulMat_253(plan="mlaref_l8s1", variant="x86")(a, b)
    lanes = MulMat_253(plan="mlaref_l8a1", variant="x86")(a, b)
    assert not np.array_equal(want.storage().view(np.uint32), lanes.storage().view(np.uint32))
    for isa in catalog.MM_L8S1_ISAS:
        if cpu.missing(isa):
            continue
        for n_threads in (1, 2, 3):
            out, buf = _guarded_out(want.ne)
            KM.mul_mat(a, b, plan="mlaref_l8s1", isa=isa, n_threads=n_threads, out=out)
            assert np.all(buf[-64:] == 0xA5), f"{tx} x {ty} {isa}: the kernel wrote past the output"
            kt.assert_same_bytes(out.storage(), want.storage(), 4, f"{tx} x {ty} K={K} l8s1 {isa} threads={n_threads}")
        got = KM.mul_mat(a, b, plan="ggml_generic_gnu", isa=isa)
        kt.assert_same_bytes(got.storage(), MulMat_253(plan="ggml_generic_gnu", variant="x86")(a, b).storage(), 4,
                             f"{tx} x {ty} ggml_generic_gnu {isa}")


@pytest.mark.parametrize("tx, ty", [("f16", "f16"), ("bf16", "f32"), ("q4_K", "f16"), ("q6_K", "q8_0")])
def test_mul_mat_l8s1_runs_l8a1_kernels_off_the_block_pairs(tx, ty, kt):
    """For element and k-quant weights mlaref_l8s1 is mlaref_l8a1 (reference/plan.py): the l8a1 kernels run it."""
    from mlaref.codegen import cpu

    K = 512 if tx in ("q4_K", "q6_K") else 40
    r = np.random.default_rng(zlib.crc32(repr(("l8s1 off", tx, ty)).encode()))
    a = _tensor(_values(r, 5, K), tx, (K, 5, 1, 1))
    b = _tensor(_values(r, 7, K), ty, (K, 7, 1, 1))
    want = MulMat_253(plan="mlaref_l8a1", variant="x86")(a, b)
    kt.assert_same_bytes(MulMat_253(plan="mlaref_l8s1", variant="x86")(a, b).storage(), want.storage(), 4, "reference")
    for isa in ("scalar", "avx2"):
        if cpu.missing(isa):
            continue
        got = KM.mul_mat(a, b, plan="mlaref_l8s1", isa=isa, n_threads=2)
        kt.assert_same_bytes(got.storage(), want.storage(), 4, f"{tx} x {ty} l8s1 on {isa}")
    with pytest.raises(ValueError, match=r"\[l8s1\], not .*\[l8a1\]"):
        KM.mul_mat(a, b, plan="mlaref_l8s1", kernel=f"mlaref_mul_mat_q8_0_{ty}__avx2_l8s1")


def test_mul_mat_l8s1_hand_checked_row():
    """The q8_0 row of tests/reference/test_mul_mat.py (three blocks, dx*dy = 2**11, 2**-13, 2**-13, one product 1
    each; src1 already q8_0): every l8s1 kernel gives 2**11 (each 2**-13 a tie to even), the l8a1 ones 2**11 +
    2**-12."""
    from mlaref.codegen import catalog, cpu

    a, b = serial_tie_pair()
    for isa in catalog.MM_L8S1_ISAS:
        if not cpu.missing(isa):
            assert KM.mul_mat(a, b, plan="mlaref_l8s1", isa=isa).to_numpy().item() == 2.0 ** 11, isa
            assert KM.mul_mat(a, b, plan="mlaref_l8a1", isa=isa).to_numpy().item() == 2.0 ** 11 + 2.0 ** -12, isa
