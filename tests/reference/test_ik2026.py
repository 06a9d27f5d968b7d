"""The q8_2_x4 format and the mul_mat models of the ik-llama-cpp-python 0.1.5 snapshot on hand-made inputs.

Every expected value is worked out in the test from the rules in docs/facts/ik-snapshot.md (bf16 scale, 1/d
multiplier, ties to even, int16 sum; the lane maps and folds of the kernels), never taken from the code under test.
The library itself is compared by the conformance runner.
"""

import numpy as np
import pytest

from mlaref.reference import dequantize, quantize
from mlaref.reference.ops.mul_mat_iqk import (PATHS, MulMat_ik2026, fold8, ik2026_path, mul_mat_ik2026,
                                              _q6_K_requant)
from mlaref.reference.tensor import Tensor


def _group(row: np.ndarray, g: int = 0):
    """(d bits (4,), s (4,), qs (4, 32)) of group g of a q8_2_x4 row."""
    grp = row[144 * g:144 * (g + 1)]
    return (grp[:8].copy().view("<u2"), grp[8:16].copy().view("<i2"), grp[16:].view(np.int8).reshape(4, 32))


def test_q8_2_x4_layout_bf16_scale_and_int_sum():
    # block 0: amax 127 -> d = 127/127 = 1.0 exactly (bf16 0x3F80), id = 1: the values are the rounded inputs,
    # ties to even (0.5 -> 0, 1.5 -> 2, -2.5 -> -2); block r (r = 1..3) = block 0 scaled by 2**r
    b0 = np.zeros(32, np.float32)
    b0[:6] = [127, 0.5, 1.5, -2.5, 3.25, -127]
    x = np.concatenate([b0 * np.float32(2.0**r) for r in range(4)])[None, :]
    row = quantize(x, "q8_2_x4", variant="iqk")[0]
    assert row.size == 4 * 36
    d, s, qs = _group(row)
    assert list(d) == [0x3F80, 0x4000, 0x4080, 0x4100]  # bf16 of 1, 2, 4, 8
    want = np.zeros(32, np.int8)
    want[:6] = [127, 0, 2, -2, 3, -127]
    for r in range(4):
        assert np.array_equal(qs[r], want)
    assert list(s) == [3] * 4  # 127 + 0 + 2 - 2 + 3 - 127


def test_q8_2_x4_uses_one_over_the_rounded_scale():
    # amax = 1: d = f32(1/127) = 0x3C010204 -> bf16 0x3C01 (round down), so d = 2**-7 * (1 + 1/128) and
    # id = 1/d = 127.0079...; x = 62.5/127 gives x*id = 62.5039... -> 63, whereas 127/amax would give the tie 62.5 -> 62
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = 1.0
    x[0, 1] = np.float32(62.5 / 127)
    row = quantize(x, "q8_2_x4", variant="iqk")[0]
    assert row[:2].view("<u2")[0] == 0x3C01
    assert row[4] == 127 and row[5] == 63
    assert row[2:4].view("<i2")[0] == 190
    back = dequantize(row[None, :], "q8_2_x4")[0]
    assert back[1] == np.float32(63 * 2.0**-7 * (1 + 1 / 128))


def test_q8_2_x4_zero_block_and_plain_tail():
    # 5 blocks: one group of 4 (144 bytes) then one plain block_q8_2 {d, s, qs[32]}; block 1 and the tail are 0
    x = np.zeros((1, 160), np.float32)
    x[0, :32] = 1.0  # amax 1 -> q = 127 everywhere, s = 32 * 127
    x[0, 128] = -4.0  # the tail block: d = bf16(4/127), q[0] = -127
    row = quantize(x, "q8_2_x4", variant="iqk")[0]
    assert row.size == 5 * 36
    d, s, qs = _group(row)
    assert list(d[1:]) == [0, 0, 0] and list(s[1:]) == [0, 0, 0] and not qs[1:].any()
    assert s[0] == 32 * 127 and (qs[0] == 127).all()
    tail = row[144:]
    assert tail[2:4].view("<i2")[0] == -127 and tail[4:].view(np.int8)[0] == -127 and not tail[5:].any()
    assert tail[:2].view("<u2")[0] == 0x3D01  # f32(4/127) = 0x3D010204 -> bf16 0x3D01


def test_q8_2_x4_overflowing_inverse_gives_the_integer_indefinite():
    # amax = 2**-125: amax/127 is a subnormal near 2**-132 whose bf16 is not 0, 1/d overflows to inf, every x*id is
    # +-inf (or NaN for x = 0), cvtps_epi32 gives -2**31 for each: stored int8 -128 (saturated), and s = the low
    # 16 bits of 32 * -2**31 = 0. (Below amax/127 < 2**-134 the bf16 of d is 0 and every q is 0.)
    x = np.full((1, 32), 2.0**-125, np.float32)
    x[0, 3] = 0.0
    row = quantize(x, "q8_2_x4", variant="iqk")[0]
    assert row[:2].view("<u2")[0] != 0
    assert (row[4:].view(np.int8) == -128).all()
    assert row[2:4].view("<i2")[0] == 0
    tiny = quantize(np.full((1, 32), 1e-40, np.float32), "q8_2_x4", variant="iqk")[0]
    assert not tiny.any()


def _q8_0_bytes(d16: float, qs: np.ndarray) -> np.ndarray:
    return np.concatenate([np.array([d16], np.float16).view(np.uint8), qs.astype(np.int8).view(np.uint8)])


def _lane_case():
    """q8_0 weight (K = 128, one row) and an f32 src1 row whose q8_2 values are the inputs themselves (d = 1).

    Products per half-block: block 0 elements 0..15 give 64*127 + 8*8 = 8192 with d = 2048 -> 2**24; block 1 and
    block 3 elements 0..15 give 1 each (d = 1); everything else 0.
    """
    y = np.ones(128, np.float32)
    y[::32] = 127  # every block has amax 127 -> d = 1, q = y
    q0 = np.zeros(32)
    q0[0], q0[1:9] = 64, 8
    q1 = np.zeros(32)
    q1[1] = 1
    blocks = [_q8_0_bytes(2048.0, q0), _q8_0_bytes(1.0, q1), _q8_0_bytes(1.0, np.zeros(32)), _q8_0_bytes(1.0, q1)]
    a = Tensor.from_bytes(np.concatenate(blocks)[None, :], "q8_0", (128, 1))
    b = Tensor.from_numpy(y[None, :])
    return a, b


def test_h16_lanes_and_fold():
    # lanes: l0 = 2**24 (block 0, first half), l1 = 1 (block 1), l3 = 1 (block 3); hsum_float_8:
    # ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)) = 2**24 + 2, exact. Block by block it would be 2**24 (1 lost twice).
    a, b = _lane_case()
    assert ik2026_path("q8_0", 1, 1) == "ik2026_q8_0_h16"
    assert mul_mat_ik2026(a, b).to_numpy().item() == 2.0**24 + 2
    assert MulMat_ik2026(path="ik2026_q8_0_r8")(a, b).to_numpy().item() == 2.0**24


def test_fold8_order():
    v = np.array([2.0**24, 1, 0, 1, 0, 0, 0, 0], np.float32)
    assert fold8(v) == 2.0**24 + 2  # (l0 + l2) + (l1 + l3) after the halves: 2**24 + 2
    assert fold8(np.array([1, 0, 0, 0, 2.0**24, 0, 0, 0], np.float32)) == 2.0**24  # l0 + l4 = 2**24 + 1 rounds to even


def test_f16_path_starts_with_a_product():
    # acc = x*y for the first 8 elements: (-0.0)*1 = -0.0 stays -0.0 through fma(.., .., -0.0) and the fold;
    # an accumulator started at +0 would give +0 (K = 16: two full steps).
    a16 = Tensor.from_numpy(np.ones((1, 16), np.float32), "f16")
    r = mul_mat_ik2026(a16, Tensor.from_numpy(np.full((1, 16), -0.0, np.float32))).to_numpy().item()
    assert r == 0 and np.signbit(r)
    # K = 12: the last 4 elements go to lanes 0..3 and lanes 4..7 get fma(0, 0, -0) = +0, so the sum is +0
    a = Tensor.from_numpy(np.ones((1, 12), np.float32), "f16")
    r = mul_mat_ik2026(a, Tensor.from_numpy(np.full((1, 12), -0.0, np.float32))).to_numpy().item()
    assert r == 0 and not np.signbit(r)
    y = np.zeros((1, 12), np.float32)
    y[0, 8:] = [1, 2, 3, 2.0**-24]  # the tail: lanes 0..3 -> (1 + 3) + (2 + 2**-24) = 4 + 2 (a quarter ulp lost) = 6
    assert mul_mat_ik2026(a, Tensor.from_numpy(y)).to_numpy().item() == 6.0


def test_q4_0_offset_term_cancels_exactly():
    # q4_0 with every nibble 8 is the zero matrix; the kernel computes 8*sum(y) in the lanes and -8*d*dy*s in the
    # m accumulator: both exact here (integers), so the result is exactly 0 for any integer y with amax 127
    blk = np.concatenate([np.array([1.0], np.float16).view(np.uint8), np.full(16, 0x88, np.uint8)])
    a = Tensor.from_bytes(np.tile(blk, 8)[None, :], "q4_0", (256, 1))
    y = np.arange(256, dtype=np.float32) % 17 - 8
    y[::32] = 127
    for n_threads in (1, 2):
        assert mul_mat_ik2026(a, Tensor.from_numpy(y[None, :]), n_threads=n_threads).to_numpy().item() == 0.0


@pytest.mark.parametrize("wt,n,m,nth,want", [
    ("q8_0", 31, 64, 1, "ik2026_q8_0_h16"), ("q8_0", 32, 64, 1, "ik2026_q8_0_r8"),
    ("iq4_nl", 32, 64, 2, "ik2026_q8_0_r8"), ("q4_0", 7, 4096, 2, "ik2026_q4_0_h16m"),
    ("q4_0", 100, 4096, 2, "ik2026_q8_0_r8"), ("q4_K", 32, 64, 1, "ik2026_q4_K_r8"),
    ("q4_K", 31, 64, 1, "ik2026_q4_K_h16"), ("q6_K", 32, 64, 1, "ik2026_q6_K_h16"),
    ("q6_K", 64, 64, 2, "ik2026_q6_K_r8"), ("f16", 100, 64, 2, "ik2026_f16_l8"),
    # M/nth < 32: the tiled branch, which never repacks; M not a multiple of 8: no r8 layout
    ("q8_0", 100, 32, 2, "ik2026_q8_0_h16"), ("q8_0", 100, 36, 1, "ik2026_q8_0_h16"),
    # f32 / bf16 weights: one float kernel for every N; q5_0 repacks to q8_0_r8, q4_1 / q5_1 to q8_1_r8 at N >= 32
    ("f32", 100, 4096, 2, "ik2026_f32_l8"), ("bf16", 1, 64, 1, "ik2026_bf16_l8"),
    ("q5_0", 31, 64, 1, "ik2026_q5_0_h16m"), ("q5_0", 32, 64, 1, "ik2026_q8_0_r8"),
    ("q4_1", 31, 64, 2, "ik2026_q4_1_h16m"), ("q4_1", 32, 64, 2, "ik2026_q8_1_r8"),
    ("q5_1", 7, 4096, 2, "ik2026_q5_1_h16m"), ("q5_1", 64, 4096, 2, "ik2026_q8_1_r8"),
    ("q5_1", 100, 32, 2, "ik2026_q5_1_h16m"),
])
def test_path_choice(wt, n, m, nth, want):
    assert ik2026_path(wt, n, m, nth) == want
    assert want in PATHS


def test_q6_K_requantization_of_a_flat_block():
    # q6_K super-block with d = 1, every scale 1 and every 6-bit value 33 (so q - 32 = 1): per 32-block
    # max|v| = 1, mx = f32(1/127), d' = f16(mx); the values rint(1 * (1/mx)) = 127
    blk = np.zeros(210, np.uint8)
    blk[0:128] = 0x11  # low nibbles 1
    blk[128:192] = 0xAA  # high 2 bits 2 for all four quarters: 1 + 2*16 = 33
    blk[192:208] = 1
    blk[208:210] = np.array([1.0], np.float16).view(np.uint8)
    q8, dq = _q6_K_requant(blk[None, :], 256)
    assert (q8 == 127).all()
    assert (dq == np.float32(np.float16(np.float32(1) / np.float32(127)))).all()


def _f16_bytes(v: float) -> np.ndarray:
    return np.array([v], np.float16).view(np.uint8)


def _q4_1_block(d: float, m: float, nibbles: np.ndarray) -> np.ndarray:
    """block_q4_1 {d f16, m f16, qs[16]}: element j < 16 in the low nibble of qs[j], element 16 + j in the high."""
    nib = nibbles.astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _f16_bytes(m), nib[:16] | (nib[16:] << 4)])


def _rows(block_bytes: np.ndarray, m: int, k: int, type: str) -> Tensor:
    return Tensor.from_bytes(np.tile(block_bytes, (m, 1)), type, (k, m))


def test_f32_weight_lanes_and_fold_with_f32_and_f16_src1():
    # element e in lane e % 8: lane 0 = 2**24 * 1 (a product), then fma(1, 1, 2**24) = 2**24 + 1 -> 2**24 (tie to
    # even); lanes 1 and 3 hold 1. fold8 = ((2**24 + 0) + (0 + 0)) + ((1 + 0) + (1 + 0)) = 2**24 + 2, exact.
    # Adding the elements in order would give 2**24 (each +1 lost).
    x = np.zeros((1, 16), np.float32)
    x[0, [0, 1, 3, 8]] = [2.0**24, 1, 1, 1]
    a = Tensor.from_numpy(x)
    for bt in ("f32", "f16"):
        b = Tensor.from_numpy(np.ones((1, 16), np.float32), bt)
        assert ik2026_path("f32", 1, 1) == "ik2026_f32_l8"
        assert mul_mat_ik2026(a, b).to_numpy().item() == 2.0**24 + 2
    with pytest.raises(ValueError, match="crashes the snapshot"):
        mul_mat_ik2026(a, Tensor.from_numpy(np.ones((1, 16), np.float32), "bf16"))


def test_bf16_weight_rounds_f16_src1_to_bf16_first():
    # an f16 src1 is converted to the vec_dot type bf16 (round to nearest even on the bits) before the kernel:
    # 1 + 2**-10 -> 1; 1 + 2**-8 is the tie between 1 and 1 + 2**-7 -> 1 (even); 1 + 3 * 2**-8 is the tie between
    # 1 + 2**-7 and 1 + 2**-6 -> 1 + 2**-6 (even). With a weight of ones the 8 lanes add exactly.
    a = Tensor.from_numpy(np.ones((1, 8), np.float32), "bf16")
    for v, want in ((1 + 2**-10, 1.0), (1 + 2**-8, 1.0), (1 + 3 * 2**-8, 1 + 2**-6)):
        y = np.full((1, 8), v, np.float32)
        assert mul_mat_ik2026(a, Tensor.from_numpy(y, "f16")).to_numpy().item() == 8 * want
        assert mul_mat_ik2026(a, Tensor.from_numpy(y)).to_numpy().item() == 8 * v  # f32 src1 taken as is
    with pytest.raises(ValueError, match="K = 12: the snapshot never writes dst"):
        mul_mat_ik2026(Tensor.from_numpy(np.ones((1, 12), np.float32), "bf16"),
                       Tensor.from_numpy(np.ones((1, 12), np.float32)))


def test_q5_0_values_with_high_bits_small_and_repacked():
    # one q5_0 block, d = 1, stored 5-bit value of element j = j (low nibble j % 16, high bit j >= 16), so its value
    # is j - 16; src1 integers with amax 127 quantize to themselves (d = 1). Every partial sum is a small integer,
    # so both paths (h16m: 16 * s in the m term, q8_0_r8: the signed values) give the exact dot product.
    j = np.arange(32)
    qs = ((j[:16] % 16) | ((j[16:] % 16) << 4)).astype(np.uint8)
    qh = np.packbits((j >= 16).astype(np.uint8), bitorder="little")  # bit j = high bit of element j
    blk = np.concatenate([_f16_bytes(1.0), qh, qs])
    y = np.zeros(32, np.float32)
    y[:8] = [127, -3, 5, 0, 7, -11, 2, 1]
    y[20:24] = [9, -6, 4, 100]
    want = float(sum(int(jj - 16) * int(v) for jj, v in zip(j, y)))
    for n, path in ((7, "ik2026_q5_0_h16m"), (32, "ik2026_q8_0_r8")):
        assert ik2026_path("q5_0", n, 64) == path
        r = mul_mat_ik2026(_rows(blk, 64, 32, "q5_0"), Tensor.from_numpy(np.tile(y, (n, 1)))).to_numpy()
        assert (r == want).all()


def _q4_1_order_case():
    """q4_1 weight (K = 128, 64 equal rows) and src1 rows whose q8_2 values are the inputs (d = 1).

    Blocks 0 and 1: d = 1, m = 4096, nibble 1 at element 17 only; blocks 2 and 3 zero. src1 blocks 0 and 1:
    elements 0..15 = 127, element 16 = 15, element 17 = 1, so s = 2032 + 16 = 2048 and S = 1 (elements 16..31).
    """
    nib = np.zeros(32)
    nib[17] = 1
    blocks = [_q4_1_block(1.0, 4096.0, nib)] * 2 + [_q4_1_block(0.0, 0.0, np.zeros(32))] * 2
    yb = np.zeros(32, np.float32)
    yb[:16], yb[16], yb[17] = 127, 15, 1
    y = np.concatenate([yb, yb, np.zeros(64, np.float32)])
    return _rows(np.concatenate(blocks), 64, 128, "q4_1"), y


def test_q4_1_min_terms_separate_or_first():
    a, y = _q4_1_order_case()
    # h16m (N < 32): lanes 4 and 5 hold 1 (S of block 0 / 1), the m accumulator's lanes 0 and 1 hold
    # 4096 * (1 * 2048) = 2**23; t_k = (acc_k + acc_{4+k}) + accm_k: t0 = t1 = 2**23 + 1, t2 = t3 = 0;
    # (t0 + t2) + (t1 + t3) = 2**24 + 2 exactly, the true value.
    r = mul_mat_ik2026(a, Tensor.from_numpy(np.tile(y, (7, 1)))).to_numpy()
    assert (r == 2.0**24 + 2).all()
    # q8_1_r8 (N >= 32): one float, the 4 min terms first: 2**23, then 2**24; then each block's
    # fma(1 * 1, S = 1, 2**24) = 2**24 + 1 -> 2**24 (tie to even): the 2 is lost
    r = mul_mat_ik2026(a, Tensor.from_numpy(np.tile(y, (32, 1)))).to_numpy()
    assert ik2026_path("q4_1", 32, 64) == "ik2026_q8_1_r8"
    assert (r == 2.0**24).all()


def test_q8_1_r8_skips_blocks_after_the_last_group_of_4():
    # K = 160 (5 blocks); only block 4 is non-zero: d = 1, m = 0.5, every nibble 1; src1 all ones, so each q8_2
    # block has d = bf16(1/127) = 2**-7 * 129/128, q = 127, s = 4064.
    # h16m (N = 7): the tail block's 8 lanes get fma(dy, 4 * 127, 0) = 508 * dy = 3.999755859375 (exact), its m
    # term m * (dy * s) = 0.5 * 31.998046875, a quarter of it (3.999755859375) into each of the 4 m lanes:
    # t_k = 2 * 3.999755859375 + 3.999755859375 and the sum of the four, 47.9970703125 (= 1.5 * 4064 * dy).
    # q8_1_r8 (N = 32): mul_mat_q8_1_r8_q8_2 walks nb / 4 = 1 group only, so the result is 0.
    zero = _q4_1_block(0.0, 0.0, np.zeros(32))
    blk = np.concatenate([zero] * 4 + [_q4_1_block(1.0, 0.5, np.ones(32))])
    a = _rows(blk, 64, 160, "q4_1")
    assert (mul_mat_ik2026(a, Tensor.from_numpy(np.ones((7, 160), np.float32))).to_numpy() == 47.9970703125).all()
    assert (mul_mat_ik2026(a, Tensor.from_numpy(np.ones((32, 160), np.float32))).to_numpy() == 0.0).all()


def test_ragged_float_rows_run_ggml_vec_dot_or_are_refused():
    # K = 6 is not a multiple of 4: iqk declines and ggml_vec_dot_f32 runs: no full 32-element step, so the
    # 6 products are added one by one to 0: 2**24, then + 1 twice, each a tie that rounds to even: 2**24
    # (the iqk lane kernel would have kept both ones in separate lanes)
    x = np.array([[2.0**24, 1, 1, 0, 0, 0]], np.float32)
    y = np.ones((1, 6), np.float32)
    assert ik2026_path("f32", 1, 1, k=6) == "ik2026_vec_dot_avx2"
    assert mul_mat_ik2026(Tensor.from_numpy(x), Tensor.from_numpy(y)).to_numpy().item() == 2.0**24
    # src1 of another type than the weight: the snapshot converts it and then computes nothing (f16, bf16) or
    # crashes (f32: no from_float)
    with pytest.raises(ValueError, match="never writes dst"):
        mul_mat_ik2026(Tensor.from_numpy(x, "f16"), Tensor.from_numpy(y))
    with pytest.raises(ValueError, match="crashes the snapshot"):
        mul_mat_ik2026(Tensor.from_numpy(x), Tensor.from_numpy(y, "f16"))
