"""ReductionPlan: validation, fingerprints, per-pair resolution of ggml's plans, and the fold orders by hand."""

import numpy as np
import pytest

from mlaref.reference import plan as P
from mlaref.reference.ops.vec_dot import vec_dot


def test_named_plans_and_fingerprints():
    assert P.get_plan("mlaref_l8a2") is P.MLAREF_L8A2
    assert [P.PLANS[n].fingerprint for n in ("mlaref_l8a1", "mlaref_l8a2", "mlaref_l16a1", "mlaref_l16a2")] == [
        "l8a1", "l8a2", "l16a1", "l16a2"]
    assert P.GGML_GENERIC.fingerprint == "s1m"
    assert P.GGML_GENERIC_GNU.fingerprint == "s1"
    assert P.GGML_GENERIC.for_pair("f16").fingerprint == "s1mx64"
    assert P.GGML_X86_AVX512.for_pair("f16.f16").fingerprint == "l32a4x16"
    assert P.GGML_X86_AVX2.for_pair("f32.f32").fingerprint == "l8a4h"
    assert P.GGML_X86_AVX.for_pair("f32.f32").fingerprint == "l8a4mh"


def test_flash_attention_fingerprint():
    assert P.MLAREF_L8A2.fa_fingerprint == "k64q64c1e0"
    assert P.MLAREF_L8A2.replace(k_step=32, kv_chunks=4, exp="v_expf_avx2").fa_fingerprint == "k32q64c4e2"


def test_plans_are_frozen_values():
    p = P.ReductionPlan(name="x", lanes=8, accs=2, fold="halves", int_to_float="lane4")
    assert p == P.ReductionPlan(name="x", lanes=8, accs=2, fold="halves", int_to_float="lane4")
    assert hash(p) == hash(P.ReductionPlan(name="x", lanes=8, accs=2, fold="halves", int_to_float="lane4"))
    with pytest.raises(AttributeError):
        p.lanes = 16  # type: ignore[misc]
    assert p.replace(accs=1).fingerprint == "l8a1"


def test_ggml_x86_resolves_per_pair():
    # iq4_nl alternates two accumulators (accum1/accum2 in ggml_vec_dot_iq4_nl_q8_0), q8_0 uses one.
    assert (P.GGML_X86_AVX512.for_pair("iq4_nl.q8_0").accs, P.GGML_X86_AVX512.for_pair("q8_0.q8_0").accs) == (2, 1)
    assert P.GGML_X86_AVX512.for_pair("f32.f32").lanes == 16
    assert P.GGML_X86_AVX2.for_pair("f32.f32").lanes == 8
    assert P.MLAREF_L8A2.for_pair("q8_0.q8_0") is P.MLAREF_L8A2


def test_ggml_x86_avx_is_unfused_with_two_blocks_per_register_where_ggml_says():
    """arch/x86/quants.c's __AVX__ branches: q8_0, q4_0, iq4_nl go through mul_sum_i8_quad_float (two blocks per
    __m256, an odd last block in scalar code); q5_0, q4_1, q5_1 and the k-quants one block per register."""
    quad = {p for p, _ in P.GGML_X86_AVX.by_pair if P.GGML_X86_AVX.for_pair(p).int_to_float == "lane8"}
    assert quad == {"q8_0.q8_0", "q4_0.q8_0", "iq4_nl.q8_0"}
    assert all(P.GGML_X86_AVX.for_pair(p).tail == "scalar_f32m" for p in quad)
    assert not any(plan.fma for _, plan in P.GGML_X86_AVX.by_pair)  # no -mfma: GCC cannot contract


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lanes=6, accs=1, fold="halves"), "lanes must be a power of two"),
        (dict(lanes=8, accs=3, fold="halves"), "accs must be a power of two"),
        (dict(lanes=8, accs=1, fold="zigzag"), "fold must be one of"),
        (dict(lanes=1, accs=1, fold="halves"), "fold 'serial' goes with lanes == accs == 1"),
        (dict(lanes=4, accs=1, fold="halves", int_to_float="lane4"), "lane4' needs lanes\\*accs >= 8"),
        (dict(lanes=2, accs=1, fold="halves", int_to_float="lane8"), "lane8' needs lanes\\*accs >= 4"),
        (dict(lanes=8, accs=1, fold="halves", exp="fastexp"), "exp must be one of"),
        (dict(k_step=0), "k_step, q_step and kv_chunks must be >= 1"),
        (dict(lanes=16, accs=2, fold="halves", acc_type="f64", tail="scalar_gcc"),
         "f64 accumulation of lane sums takes tail 'masked' or 'scalar_f64'"),
    ],
)
def test_bad_plans(kwargs, message):
    with pytest.raises(ValueError, match=message):
        P.ReductionPlan(name="bad", **kwargs)


def test_unknown_plan_name():
    with pytest.raises(ValueError, match="unknown plan 'l8a2'"):
        P.get_plan("l8a2")


def _f32_rows(values):
    return np.asarray(values, np.float32).reshape(1, -1).view(np.uint8)


def test_halves_fold_by_hand():
    """8 lanes: products x_i*1 land in lane i; the fold is (l0+l4 + l2+l6) + (l1+l5 + l3+l7) (hsum_float_8).

    Lanes: l0 = 2**24, l4 = 1, l1 = -2**24, l5 = 1, others 0.5 / 0.5 / 0.5 / 0.5 at 2, 3, 6, 7.
    halves: l0+l4 = 2**24 (the 1 is lost: ties to even), l2+l6 = 1, sum 2**24 + 1 -> 2**24;
            l1+l5 = -2**24 + 1 = -16777215, l3+l7 = 1, sum -16777214; total 2**24 - 16777214 = 2.
    Serial order would give 2**24 - 2**24 + ... = 4 (1 + 1 + 4*0.5). hadd order: halves to 4 lanes
    t = (2**24, -16777215, 1, 1), then (t0+t1) + (t2+t3) = 1 + 2 = 3.
    """
    x = [2.0**24, -(2.0**24), 0.5, 0.5, 1.0, 1.0, 0.5, 0.5]
    y = [1.0] * 8
    plan = P.ReductionPlan(name="t", lanes=8, accs=1, fold="halves")
    assert vec_dot(_f32_rows(x), "f32", _f32_rows(y), "f32", 8, plan)[0, 0] == np.float32(2.0)
    hadd = plan.replace(fold="hadd")
    assert vec_dot(_f32_rows(x), "f32", _f32_rows(y), "f32", 8, hadd)[0, 0] == np.float32(3.0)
    assert vec_dot(_f32_rows(x), "f32", _f32_rows(y), "f32", 8, "ggml_generic")[0, 0] == np.float32(4.0)


def test_accumulators_fold_before_lanes_by_hand():
    """l8a2: elements 0..7 go to acc0, 8..15 to acc1; acc0 + acc1 lane-wise first.

    acc0 lane 0 = 2**24, acc1 lane 0 = 1, acc0 lane 4 = 1: acc fold gives lane0 = 2**24 (1 lost), lane 4 = 1,
    then lanes: 2**24 + 1 -> 2**24. If lanes folded first inside acc0, 2**24 + 1 + 1 = 2**24 + 2 would survive.
    """
    x = np.zeros(16, np.float32)
    x[0], x[8], x[4] = 2.0**24, 1.0, 1.0
    y = np.ones(16, np.float32)
    got = vec_dot(_f32_rows(x), "f32", _f32_rows(y), "f32", 16, "mlaref_l8a2")[0, 0]
    assert got == np.float32(2.0**24)
    assert vec_dot(_f32_rows(x), "f32", _f32_rows(y), "f32", 16, "ggml_generic")[0, 0] == np.float32(2.0**24 + 2)


def _q8_0_row(blocks) -> np.ndarray:
    """One q8_0 row from (d, {index: value}) per block: d as its f16 bits, 32 int8 values (zero elsewhere)."""
    out = b""
    for d, vals in blocks:
        qs = np.zeros(32, np.int8)
        for i, v in vals.items():
            qs[i] = v
        out += np.float16(d).tobytes() + qs.tobytes()
    return np.frombuffer(out, np.uint8).reshape(1, -1)


def test_l8s1_is_block_serial_by_hand():
    """mlaref_l8s1 on q8_0.q8_0: ``acc = fma(sumi, dx*dy, acc)`` per block, blocks in order, no lanes.

    Three blocks, x and y each with one value 1: block 0 at element 0 with dx*dy = 2**6 * 2**5 = B = 2**11, blocks 1
    and 2 at element 4 (lane 1 of a lane plan) with dx*dy = 2**-7 * 2**-6 = e = 2**-13, half an f32 ulp of B.
    Float64 truth B + 2e. Serial: B, then B + e twice, each a tie that rounds to even: B. mlaref_l8a1: lane 0
    holds B, lane 1 holds e + e = 2e (exact), the halves fold gives B + 2e exactly (2e is one ulp of B)."""
    x = _q8_0_row([(2.0 ** 6, {0: 1}), (2.0 ** -7, {4: 1}), (2.0 ** -7, {4: 1})])
    y = _q8_0_row([(2.0 ** 5, {0: 1}), (2.0 ** -6, {4: 1}), (2.0 ** -6, {4: 1})])
    assert vec_dot(x, "q8_0", y, "q8_0", 96, "mlaref_l8s1")[0, 0] == np.float32(2.0 ** 11)
    assert vec_dot(x, "q8_0", y, "q8_0", 96, "mlaref_l8a1")[0, 0] == np.float32(2.0 ** 11 + 2.0 ** -12)


def test_l8s1_resolves_per_pair():
    """The six 32-block pairs run serial with FMA (ggml_generic_gnu's per-block formulas, f32 sum); element and
    k-quant pairs keep the l8a1 lanes."""
    serial = ("q8_0.q8_0", "q4_0.q8_0", "q5_0.q8_0", "iq4_nl.q8_0", "q4_1.q8_1", "q5_1.q8_1")
    for pair in serial + ("q8_0.q8_0_x4", "q4_1.q8_1_x4"):
        p = P.MLAREF_L8S1.for_pair(pair)
        assert (p.fold, p.fma, p.acc_type, p.block_pairs, p.fingerprint) == ("serial", True, "f32", False, "s1"), pair
        assert p.replace(name="g") == P.GGML_GENERIC_GNU.for_pair(pair).replace(name="g", by_pair=()), pair
    for pair in ("f32.f32", "f16.f16", "bf16.bf16", "q4_K.q8_K", "q6_K.q8_K"):
        assert P.MLAREF_L8S1.for_pair(pair).fingerprint == "l8a1", pair
    assert P.get_plan("mlaref_l8s1") is P.MLAREF_L8S1
