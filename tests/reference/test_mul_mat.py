"""mul_mat: bytes equal to upstream ggml's mul_mat (plan ggml_x86_avx512), broadcasting and views, PR #253's
src1 conversion against the pre-#253 path, NMSE bounds against float64 math, bad inputs."""

import numpy as np
import pytest
from kernel_inputs import serial_tie_pair

from mlaref.reference import fp, quantize
from mlaref.reference.compare import nmse
from mlaref.reference.ops.mul_mat import VEC_DOT_TYPE, MulMat_253, MulMat_pre253, mul_mat
from mlaref.reference.tensor import Tensor

WEIGHTS = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "q4_K", "q6_K"]
SRC1 = ["f32", "f16", "bf16", "q8_0"]
NMSE_MUL_MAT = 5e-4  # test-backend-ops' mul_mat bound; measured <= 7e-5 (src1 -> q8_0/q8_1/q8_K dominates)


def _bits(t: Tensor):
    return t.to_numpy().view(np.uint32)


def _tensor(rng, shape, type, scale=1.0):
    return Tensor.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32), type)


@pytest.mark.parametrize("bt", ["f32", "vdt"])
@pytest.mark.parametrize("wt", WEIGHTS)
def test_pre253_equals_upstream_ggml(ggml_ops, rng, wt, bt, peer_plan):
    """Upstream ggml is pre-#253 (src1 f32 or the vec_dot type); broadcast a [K, M, 1, 3] over b [K, N, 2, 3]."""
    bt = VEC_DOT_TYPE[wt] if bt == "vdt" else bt
    K = 512 if wt in ("q4_K", "q6_K") else 96
    a = _tensor(rng, (3, 1, 24, K), wt, 0.1)
    b = _tensor(rng, (3, 2, 5, K), "f32")
    if bt != "f32":  # src1 already in the vec_dot type, as upstream's own from_float writes it
        b = Tensor.from_bytes(quantize(b.to_numpy(), bt, variant="x86"), bt, b.ne)
    got = MulMat_pre253(plan=peer_plan, variant="x86")(a, b)
    want = ggml_ops.mul_mat(a, b)
    assert got.ne == want.ne == (24, 5, 2, 3) and got.type == "f32"
    assert np.array_equal(_bits(got), _bits(want))


def test_views_and_strides_are_honoured(ggml_ops, rng, peer_plan):
    """src0 as a row subset with an offset, src1 as a permuted view (rows not adjacent), both vs ggml."""
    base_a = _tensor(rng, (1, 2, 40, 64), "q8_0", 0.1)
    a = base_a.view((64, 16, 2, 1), base_a.nb, base_a.nb[1] * 3)
    base_b = _tensor(rng, (1, 7, 2, 64), "f32")  # [64, 2, 7, 1] -> permute to [64, 7, 2, 1]
    b = base_b.permute(0, 2, 1, 3)
    assert not b.is_contiguous()
    got = mul_mat(a, b, plan=peer_plan)
    assert np.array_equal(_bits(got), _bits(ggml_ops.mul_mat(a, b)))
    assert np.array_equal(_bits(got), _bits(mul_mat(a.copy(), b.copy(), plan=peer_plan)))


def test_broadcast_is_integer_division():
    """dst matrix (i12, i13) uses src0 matrix (i12 // r2, i13 // r3): consecutive src1 matrices share one."""
    # a: two matrices of one row each, all ones and all twos; b: four matrices of one row of ones.
    a = Tensor.from_numpy(np.stack([np.full((1, 32), 1, np.float32), np.full((1, 32), 2, np.float32)])[None])
    b = Tensor.from_numpy(np.ones((1, 4, 1, 32), np.float32))
    out = mul_mat(a, b).to_numpy()[0, :, 0, 0]
    assert out.tolist() == [32.0, 32.0, 64.0, 64.0]


def test_mla_shape_against_upstream_ggml(ggml_ops, rng, peer_plan):
    """FlashMLA-2's kv = wkv_b · cache: [512, 4096] q8_0 weight x [512, 256] q8_0 cache, bit for bit."""
    a = _tensor(rng, (4096, 512), "q8_0", 0.05)
    b = _tensor(rng, (256, 512), "q8_0")
    assert np.array_equal(_bits(mul_mat(a, b, plan=peer_plan)), _bits(ggml_ops.mul_mat(a, b, n_threads=4)))


def test_f16_weight_rounds_f32_src1_to_f16(ggml_ops, rng, peer_plan):
    """vec_dot_type F16: an f32 src1 is rounded to f16 first (non-IQK ggml), matching ggml on [512, 512] x 64."""
    a = _tensor(rng, (512, 512), "f16", 0.05)
    b = _tensor(rng, (64, 512), "f32")
    got = mul_mat(a, b, plan=peer_plan)
    assert np.array_equal(_bits(got), _bits(ggml_ops.mul_mat(a, b, n_threads=4)))
    b16 = Tensor.from_numpy(fp.f16_to_f32(fp.f32_to_f16(b.to_numpy())), "f32")
    assert np.array_equal(_bits(got), _bits(mul_mat(a, b16, plan=peer_plan)))


@pytest.mark.parametrize("plan", ["ggml_generic", "mlaref_l8a2"])
@pytest.mark.parametrize("wt", WEIGHTS)
def test_nmse_every_weight_and_src1_type(rng, wt, plan):
    a = _tensor(rng, (2, 16, 512), wt, 0.1)
    for bt in SRC1:
        b = _tensor(rng, (2, 6, 512), bt)
        exact = a.to_numpy().astype(np.float64)[0] @ np.swapaxes(b.to_numpy().astype(np.float64)[0], -1, -2)
        got = mul_mat(a, b, plan=plan).to_numpy()[0]
        assert nmse(np.swapaxes(got, -1, -2), exact) < NMSE_MUL_MAT, (wt, bt)


@pytest.mark.parametrize("wt", ["q8_0", "q4_0", "iq4_nl", "q4_1", "q5_1"])
def test_253_on_f16_src1_equals_pre253_on_its_f32_cast(rng, wt):
    """Upstream facts §0.10: f16 -> f32 is exact and from_float sees the same f32 values, so the bytes agree."""
    a = _tensor(rng, (32, 128), wt, 0.1)
    b16 = _tensor(rng, (2, 9, 128), "f16")
    b32 = Tensor.from_numpy(b16.to_numpy(), "f32")
    assert np.array_equal(_bits(MulMat_253(plan="mlaref_l8a2")(a, b16)),
                          _bits(MulMat_pre253(plan="mlaref_l8a2")(a, b32)))


def test_q8_0_cache_requantized_to_x4_is_exact_for_ggml_blocks(rng):
    """A q8_0 block written by ggml's quantizer has max |q| = 127, so dequantize -> quantize (x4, 127/amax,
    RNE) returns the same d and q: amax' = 127·d exactly, 127/amax' = 1/d rounded, and q·d·(1/d) rounds to q.
    So MulMat_253 with the iqk layout q8_0_x4 equals the direct q8_0 product."""
    a = _tensor(rng, (16, 256), "q8_0", 0.1)
    b = Tensor.from_bytes(quantize(rng.standard_normal((8, 256)).astype(np.float32), "q8_0", variant="x86"),
                          "q8_0", (256, 8))
    direct = MulMat_253(plan="mlaref_l8a2")(a, b)
    via_x4 = MulMat_253(plan="mlaref_l8a2", variant="iqk", vec_dot_type="q8_0_x4")(a, b)
    assert np.array_equal(_bits(direct), _bits(via_x4))


def test_q8_0_cache_with_small_max_is_not_preserved(rng):
    """A q8_0 block whose largest |q| is 100 (not what ggml writes) is rescaled by the re-quantization:
    d' = 100·d/127 and q' = rint(q·127/100), so the iqk-layout product differs from the direct one."""
    one = np.array([1.0], "<f2").tobytes()
    a = Tensor.from_bytes(np.frombuffer(one + np.ones(32, np.int8).tobytes(), np.uint8), "q8_0", (32, 1))
    qs = np.zeros(32, np.int8)
    qs[0], qs[1] = 100, 1
    blk = np.frombuffer(one + qs.tobytes(), np.uint8)
    b = Tensor.from_bytes(blk, "q8_0", (32, 1))
    direct = MulMat_253()(a, b).to_numpy().ravel()[0]
    via_x4 = MulMat_253(variant="iqk", vec_dot_type="q8_0_x4")(a, b).to_numpy().ravel()[0]
    assert direct == np.float32(101.0)
    # re-quantized: amax = 100, d' = f16(100/127) = 0.7871094, q = rint([100, 1]*1.27) = [127, 1]
    d2 = np.float32(np.float16(np.float32(100) / np.float32(127)))
    assert via_x4 == np.float32(np.float32(128) * d2)
    assert via_x4 != direct


def test_pre253_rejects_other_src1_types(rng):
    a = _tensor(rng, (4, 64), "q8_0")
    b = _tensor(rng, (2, 64), "f16")
    with pytest.raises(ValueError, match="src1 must be f32 or the vec_dot type q8_0, got f16"):
        MulMat_pre253()(a, b)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: (_tensor(r, (4, 64), "f32"), _tensor(r, (2, 32), "f32")),
         "a.ne\\[0\\] \\(64\\) must equal b.ne\\[0\\]"),
        (lambda r: (_tensor(r, (2, 4, 64), "f32"), _tensor(r, (3, 2, 64), "f32")), "must be multiples of a.ne"),
        (lambda r: (_tensor(r, (4, 64), "f32").transpose(), _tensor(r, (2, 4), "f32")), "must not be transposed"),
        (lambda r: (_tensor(r, (4, 256), "q8_K"), _tensor(r, (2, 256), "f32")), "src0 type q8_K is not supported"),
        (lambda r: (np.zeros((4, 64), np.float32), _tensor(r, (2, 64), "f32")), "must be an mlaref Tensor"),
    ],
)
def test_bad_inputs(rng, make, message):
    a, b = make(rng)
    with pytest.raises((ValueError, TypeError), match=message):
        mul_mat(a, b)


def test_bad_vec_dot_type_and_variant(rng):
    a = _tensor(rng, (4, 64), "q8_0")
    b = _tensor(rng, (2, 64), "f32")
    with pytest.raises(ValueError, match="vec_dot_type 'q8_1' does not go with src0 type q8_0"):
        mul_mat(a, b, vec_dot_type="q8_1")
    with pytest.raises(ValueError, match="q8_0 has no from_float variant 'iqk'"):
        mul_mat(a, b, variant="iqk")


def test_l8a1_and_l16a1_orders_on_a_hand_checked_row():
    """One row of K = 25 against ones: x[0] = B = 2**11, x[8] = x[16] = x[24] = e = 2**-13 (half an f32 ulp of B),
    the rest 0 (float64 truth B + 3e). mlaref_l8a1 (8 lanes, one accumulator): lane 0 takes x[0], x[8], x[16],
    x[24] in that order, and each fma(e, 1, B) is a tie that rounds to even, B; the fold adds zeros: B.
    mlaref_l16a1: lane 0 holds x[0] + x[16] = B (the same tie), lane 8 holds x[8] + x[24] = 2e, and the fold's
    lane 0 + lane 8 gives B + 2e exactly. Every value is exact in f16 too, so f16 operands give the same."""
    x = np.zeros((1, 25), np.float32)
    x[0, 0], x[0, 8], x[0, 16], x[0, 24] = 2.0 ** 11, 2.0 ** -13, 2.0 ** -13, 2.0 ** -13
    ones = np.ones((1, 25), np.float32)
    for t in ("f32", "f16"):
        a, b = Tensor.from_numpy(x, t), Tensor.from_numpy(ones, t)
        assert MulMat_253(plan="mlaref_l8a1")(a, b).to_numpy().item() == 2.0 ** 11
        assert MulMat_253(plan="mlaref_l16a1")(a, b).to_numpy().item() == 2.0 ** 11 + 2.0 ** -12


def test_l8s1_block_serial_order_on_a_hand_checked_row():
    """The q8_0 row of tests/reference/test_plan.py through MulMat_253 (src1 already q8_0: used as it is): blocks
    0, 1, 2 with dx*dy = 2**11, 2**-13, 2**-13 and one product 1 each (block 0 at element 0, blocks 1 and 2 at
    element 4). mlaref_l8s1 adds the blocks serially, each 2**-13 a tie to even: 2**11; mlaref_l8a1 keeps them
    in lane 1 (2**-12) until the fold: 2**11 + 2**-12, the float64 truth."""
    a, b = serial_tie_pair()
    assert MulMat_253(plan="mlaref_l8s1")(a, b).to_numpy().item() == 2.0 ** 11
    assert MulMat_253(plan="mlaref_l8a1")(a, b).to_numpy().item() == 2.0 ** 11 + 2.0 ** -12
