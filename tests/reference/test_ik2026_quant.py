"""The ik2026 quantizers (reference/types/_ik2026.py) on small inputs whose bytes are worked out by hand.

Every expectation here is computed independently of the code under test (exact integer or rational arithmetic,
or a value derived in the comment); the bit-exactness against the snapshot's libggml.so was checked separately
(see docs/facts/ik-snapshot.md, "Quantizers").
"""

from fractions import Fraction

import numpy as np
import pytest

from mlaref.reference import fp, get_type, quantize
from mlaref.reference.types import _ik2026
from mlaref.reference.types._ik2026 import IK2026_VARIANTS, nearest_int_fma

F32 = np.float32
KV = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]


def _f16_bits(value: float) -> int:
    return int(np.array([value], dtype=np.float16).view(np.uint16)[0])


def _d(row: np.ndarray, block: int, size: int) -> int:
    return int(row[block * size]) | int(row[block * size + 1]) << 8


# -- nearest_int with the add fused --------------------------------------------------------------------------

def test_nearest_int_fma_rounds_the_exact_product():
    # a*b rounds to exactly 2.5 in float32, but the exact product is a little above 2.5 (checked with fractions):
    # ggml's unfused nearest_int sees 2.5 and rounds to even (2); the fused one sees the exact value (3).
    a = np.array([1070696438], dtype=np.uint32).view(F32)
    b = np.array([1069775855], dtype=np.uint32).view(F32)
    assert F32(a[0] * b[0]) == F32(2.5)
    assert Fraction(float(a[0])) * Fraction(float(b[0])) > Fraction(5, 2)
    assert int(fp.nearest_int(a * b)[0]) == 2
    assert int(nearest_int_fma(a, b)[0]) == 3


# -- q4_0: IQK's from_float ------------------------------------------------------------------------------------

def test_q4_0_x86_ramp_block():
    # x_j = j - 16: |min| = 16 > |max| = 15, so d = -16/-8 = 2 and id = 0.5; r = rint((j - 16)/2) half to even,
    # capped at 7. Every square, product and partial sum is an integer below 2**24, so the fused lane sums are
    # exact and d = sum x^3 r / sum x^2 r^2, one float32 division.
    x = np.arange(32, dtype=F32) - F32(16)
    r = [min(7, round((j - 16) / 2)) for j in range(32)]  # Python's round is half to even
    sumqx = sum((j - 16) ** 3 * r[j] for j in range(32))
    sumq2 = sum((j - 16) ** 2 * r[j] ** 2 for j in range(32))
    d = F32(sumqx) / F32(sumq2)
    L = [v + 8 for v in r]
    out = quantize(x[None, :], "q4_0", variant="ik2026_x86")[0]
    assert _d(out, 0, 18) == _f16_bits(float(d))
    assert out[2:].tolist() == [L[j] | L[j + 16] << 4 for j in range(16)]


def test_q4_0_x86_zero_blocks_take_the_sign_of_element_27():
    # All zeros: max = min = 0 and the else branch d = min/-8 runs, with min the zero of element 27.
    x = np.zeros((1, 64), dtype=F32)
    x[0, 32 + 27] = -0.0
    out = quantize(x, "q4_0", variant="ik2026_x86")[0]
    assert _d(out, 0, 18) == 0x8000  # +0 / -8 = -0
    assert _d(out, 1, 18) == 0x0000  # -0 / -8 = +0
    assert out[2:18].tolist() == [0x88] * 16 and out[20:36].tolist() == [0x88] * 16


def test_q4_0_x86_ties_of_magnitude_take_the_minimum():
    # max = 4, min = -4: equal magnitudes, so d = min/-8 = 0.5 (positive), id = 2; the sums are exact integers.
    x = np.zeros(32, dtype=F32)
    x[3], x[9] = 4, -4
    out = quantize(x[None, :], "q4_0", variant="ik2026_x86")[0]
    # r = min(7, 2x): x=4 -> 7, x=-4 -> -8; sumqx = 16*7*4 + 16*(-8)*(-4) = 960, sumq2 = 16*49 + 16*64 = 1808
    assert _d(out, 0, 18) == _f16_bits(float(F32(960) / F32(1808)))
    L = [8] * 32
    L[3], L[9] = 15, 0
    assert out[2:].tolist() == [L[j] | L[j + 16] << 4 for j in range(16)]


# -- iq4_nl ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", IK2026_VARIANTS)
def test_iq4_nl_block_on_the_table(variant):
    # x_j = kvalues[j % 16] / 64: max = -127/64, d = 1/64 exactly; id*x are the table values, L_j = j % 16. The
    # weighted sums of the x are those of the q scaled by the power of two 1/64, so sumqx/sumq2 = 1/64 exactly,
    # every gradient of the greedy search is 0, and the tries cannot beat it.
    x = np.array([KV[j % 16] / 64 for j in range(32)], dtype=F32)
    im = np.linspace(0.5, 1.5, 32).astype(F32) if variant == "ik2026_model" else None
    out = quantize(x[None, :], "iq4_nl", variant=variant, imatrix=im)[0]
    assert _d(out, 0, 18) == _f16_bits(1 / 64)
    assert out[2:].tolist() == [j | j << 4 for j in range(16)]


def test_iq4_nl_model_zero_block():
    # amax < 1e-15: scale 0, and ntry > 0 recomputes the indices with id = 0: best_index(0) = 8 (value 1).
    out = quantize(np.zeros((1, 32), dtype=F32), "iq4_nl", variant="ik2026_model")[0]
    assert _d(out, 0, 18) == 0 and out[2:].tolist() == [0x88] * 16


# -- k-quants ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_", ["q4_K", "q6_K"])
@pytest.mark.parametrize("variant", IK2026_VARIANTS)
def test_k_quants_zero_superblock(type_, variant):
    # q6_K: max_abs_scale < 1e-15 -> the block is memset to 0 (ggml-quants.c:3178-3182). q4_K: every sub-block is
    # flat (max - min < 1e-10), scales and mins 0, d = dmin = 0, and the L of the flat groups are 0.
    out = quantize(np.zeros((1, 256), dtype=F32), type_, variant=variant)[0]
    assert not out.any()


def test_q6_K_constant_subblocks():
    # Each 16-group constant c > 0: make_qx_quants takes max = c, iscale = -32/c, l = -32 for all 16 values
    # (sumlx = -32*16c^3, suml2 = 1024*16c^2, scale = -c/32 exactly); no try improves on the exact fit and the
    # greedy search sees g = 0. Then max_scale = -1/32 (c = 1), iscale = -128/max_scale = 4096, d = f16(1/4096),
    # sc = MIN(127, nearest_int(4096 * -c/32)) = -128c; re-quantization: l = nearest_int(c / (d*sc)) = -32.
    cs = [2.0 ** -(k % 4) for k in range(16)]  # 1, 1/2, 1/4, 1/8: powers of two keep every step exact
    x = np.repeat(np.array(cs, dtype=F32), 16)[None, :]
    out = quantize(x, "q6_K", variant="ik2026_x86")[0]
    assert int(out[208]) | int(out[209]) << 8 == _f16_bits(1 / 4096)
    assert out[192:208].view(np.int8).tolist() == [int(-128 * c) for c in cs]
    assert not out[:192].any()  # every L = l + 32 = 0
    dec = get_type("q6_K").dequantize_rows(out[None, :])[0]
    assert np.array_equal(dec, x[0])


# -- legacy imatrix path: weights ------------------------------------------------------------------------------

def test_legacy_row_weights_sum_then_fused_square_root():
    # Row of 32 values: sum_x2 = sum of squares (exact integers here), sigma2 = sum_x2/32, weights
    # qw * sqrt(sigma2 + x^2) with the inner sum fused (exact here as well, so only the formula is checked).
    x = (np.arange(32, dtype=F32) - 10)[None, :]
    im = np.full(32, 2.0, dtype=F32)
    w = _ik2026.legacy_row_weights(x, im, 32)
    s = sum((j - 10) ** 2 for j in range(32)) / 32
    want = np.array([2 * np.sqrt(np.float32(s + (j - 10) ** 2)) for j in range(32)], dtype=F32)
    assert np.array_equal(w[0], want)


# -- float64 fused multiply-add --------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b, c", [
    (1 + 2.0 ** -30, 1 + 2.0 ** -30, -1.0),  # exact 2**-29 + 2**-60: the unfused product loses the 2**-60
    (0.1, 3.0, -0.30000000000000004),  # a product's rounding error, recovered
    (1e300, 1e-300, 1.0),
    (3.0, 5.0, 7.0),
])
def test_fma_double_rounds_once(a, b, c):
    want = float(Fraction(a) * Fraction(b) + Fraction(c))  # Fraction -> float rounds to nearest, ties to even
    assert float(_ik2026.fma(np.float64(a), np.float64(b), np.float64(c))) == want


# -- make_qkx3_quants (q4_1, q5_1, q4_K with an imatrix) ------------------------------------------------------

def test_qkx3_exact_fit():
    # x_j = (j % 16)/4 with integer weights: min = 0, max = 3.75, iscale = 15/3.75 = 4, scale = 0.25 and L = j % 16
    # fit exactly, so best_mad = 0. Every float64 sum is an exact integer or quarter: a try's this_min is exactly
    # 0 (not > 0), its mad is >= 0 and never < 0, and every gradient x - scale*L - min of the greedy search is 0.
    # The min stays the +0 of the prologue, returned as the_min = -min = -0.
    x = np.array([(j % 16) / 4 for j in range(32)], dtype=F32)[:, None]
    w = np.array([1 + j % 3 for j in range(32)], dtype=F32)[:, None]
    scale, the_min, L = _ik2026.make_qkx3_quants(x, w, 15)
    assert scale.tolist() == [0.25]
    assert the_min.tolist() == [0.0] and np.signbit(the_min[0])
    assert L[:, 0].tolist() == [j % 16 for j in range(32)]


@pytest.mark.parametrize("type_, size, levels", [("q4_1", 20, 16), ("q5_1", 24, 32)])
def test_legacy_min_quants_with_imatrix(type_, size, levels):
    # Block 0: x_j = (j % levels)/4 fits exactly (min 0, scale 0.25; with these weights the solver keeps it):
    # d = f16(0.25) = 0x3400, m = f16(+0), L_j = j % levels. Block 1: constant -2 is flat (max - min < 1e-10):
    # d = 0, m = f16(min) = 0xC000, L = 0. Block 2: zeros are flat with min = +0: every byte 0.
    x = np.array([[(j % levels) / 4 for j in range(32)] + [-2.0] * 32 + [0.0] * 32], dtype=F32)
    im = np.linspace(0.5, 1.5, 96).astype(F32)
    out = quantize(x, type_, variant="ik2026_model", imatrix=im)[0]
    assert _d(out, 0, size) == 0x3400 and out[2:4].tolist() == [0, 0]
    assert out[size - 16:size].tolist() == [(j & 15) | (j & 15) << 4 for j in range(16)]
    if type_ == "q5_1":
        assert out[4:8].tolist() == [0, 0, 0xFF, 0xFF]  # bit 4 is set for j = 16..31
    assert _d(out, 1, size) == 0 and out[size + 2:size + 4].tolist() == [0x00, 0xC0]
    assert not out[size + 4:].any()


def test_qp_quants_exact_multiples():
    # x = 0.5*L with max 31.5: iscale = 63/31.5 = 2, L exact, mse 0 (no try is strictly smaller); in the sweeps
    # new_l = nearest_int(x*sl2/slx) = nearest_int(2x) = L, so nothing changes and scale = sumlx/suml2 = 0.5.
    L = [63, 1, 2, 10, 20, 30, 40, 50]
    x = (np.array(L, dtype=F32) * F32(0.5))[:, None]
    scale, q = _ik2026.make_qp_quants(x, 63, np.ones((8, 1), dtype=F32))
    assert scale.tolist() == [0.5] and q[:, 0].tolist() == L


def test_qp_quants_zero_threshold_is_1e_16():
    # max = 5e-16 is below upstream's 1e-15 but above the snapshot's 1e-16: the group is quantized, L_0 = 63,
    # the others 0, and scale = (w x 63)/(w 63^2) ~ x/63.
    x = np.zeros((8, 1), dtype=F32)
    x[0, 0] = 5e-16
    scale, q = _ik2026.make_qp_quants(x, 63, np.ones((8, 1), dtype=F32))
    assert q[:, 0].tolist() == [63] + [0] * 7
    assert abs(float(scale[0]) - 5e-16 / 63) < 1e-22


def test_q4_K_imatrix_exact_subblocks():
    # Every sub-block is (l % 16)/4: scale 0.25 each. make_qp_quants on eight equal scales: iscale = 63/0.25 = 252,
    # every code 63, scale = sumlx/suml2 ~ 0.25/63, d = f16(0.25/63) = 0x1c10 (not near an f16 tie). The mins are
    # 0 up to float64 rounding residue; whatever their codes, dmin = f16(< 1e-10) = 0, so the re-quantization
    # round((x + 0)/(d*63)) = round(l * (1 +- 1e-3)) gives back l.
    x = np.tile(np.array([(i % 16) / 4 for i in range(32)], dtype=F32), 8)[None, :]
    out = quantize(x, "q4_K", variant="ik2026_model", imatrix=np.linspace(0.5, 1.5, 256).astype(F32))[0]
    assert _d(out, 0, 144) == 0x1C10 and out[2:4].tolist() == [0, 0]
    blocks = out.view(get_type("q4_K").dtype)
    from mlaref.reference.types.q4_K import unpack_scales
    sc, _ = unpack_scales(blocks["scales"])
    assert sc[:, 0].tolist() == [63] * 8
    assert out[16:].tolist() == [(l % 16) * 17 for l in range(32)] * 4


# -- the entry point ---------------------------------------------------------------------------------------------

def test_variant_tables():
    assert get_type("q4_0").ik2026_variants == {
        "ik2026_ref": "ref", "ik2026_x86": "ik2026_x86", "ik2026_model": "ik2026_model"}
    for t in ("q4_1", "q5_0", "q5_1"):
        assert get_type(t).ik2026_variants == {"ik2026_ref": "ref", "ik2026_x86": "ref", "ik2026_model": "ik2026_model"}
    assert get_type("iq4_nl").ik2026_variants["ik2026_ref"] == get_type("iq4_nl").ik2026_variants["ik2026_x86"]
    assert get_type("q8_0").ik2026_variants == {}


def test_ik2026_ref_of_unchanged_formats_is_ref(rng):
    x = rng.standard_normal((3, 64)).astype(F32)
    for t in ("q4_0", "q4_1", "q5_0", "q5_1"):
        assert np.array_equal(quantize(x, t, variant="ik2026_ref"), quantize(x, t, variant="ref"))


def test_variant_argument_checks():
    x = np.ones((1, 256), dtype=F32)
    im = np.ones(256, dtype=F32)
    with pytest.raises(ValueError):
        quantize(x, "q4_0", variant="ik2026_x86", imatrix=im)
    with pytest.raises(ValueError):
        quantize(x, "q8_0", variant="ik2026_ref")


def test_inputs_left_alone(rng):
    x = rng.standard_normal((2, 256)).astype(F32)
    x0 = x.copy()
    im = rng.random(256).astype(F32)
    for t in ("q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "q4_K", "q6_K"):
        for v in IK2026_VARIANTS:
            quantize(x, t, variant=v)
        quantize(x, t, variant="ik2026_model", imatrix=im)
    assert np.array_equal(x.view(np.uint32), x0.view(np.uint32))
