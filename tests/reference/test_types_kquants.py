"""The k-quant formats q8_K, q4_K and q6_K against upstream ggml (ggml-python), gguf-py and hand-checked facts.

Oracles: the peer's ``quantize_row_<t>_ref`` (``from_float_ref``; q8_K has none in type_traits, so the
exported ``quantize_row_q8_K_ref`` is called by name), the CPU ``from_float``, ``ggml_quantize_chunk`` with and
without an imatrix, ``to_float`` (q8_K: the exported ``dequantize_row_q8_K``), gguf-py's Q4_K / Q6_K
dequantizers, and, for the iqk variant of q8_K, values stated by hand from upstream facts §5.
"""

import numpy as np
import pytest

from mlaref.reference import dequantize, fp, get_type, quantize

KQUANTS = ["q8_K", "q4_K", "q6_K"]
WEIGHT_TYPES = ["q4_K", "q6_K"]  # the ones ggml_quantize_chunk and gguf-py know


# -- helpers -------------------------------------------------------------------------------------------

def _assert_bytes_equal(mine, theirs, fmt, what):
    mine = np.ascontiguousarray(mine).view(np.uint8)
    theirs = np.ascontiguousarray(theirs).view(np.uint8)
    assert mine.shape == theirs.shape, (what, mine.shape, theirs.shape)
    if not np.array_equal(mine, theirs):
        blocks_m = mine.reshape(-1, fmt.type_size)
        blocks_t = theirs.reshape(-1, fmt.type_size)
        bad = np.nonzero((blocks_m != blocks_t).any(axis=1))[0]
        worst = bad[np.argmax((blocks_m[bad] != blocks_t[bad]).sum(axis=1))]
        raise AssertionError(
            f"{what}: {len(bad)} of {len(blocks_m)} blocks differ (first {bad[:8].tolist()}); worst block {worst}: "
            f"bytes {np.nonzero(blocks_m[worst] != blocks_t[worst])[0][:16].tolist()}"
        )


def _ggml_ref(ggml, t, x, fill=0xA5):
    if t == "q8_K":
        return ggml.quantize_row_symbol("quantize_row_q8_K_ref", t, x, fill=fill)
    return ggml.from_float_ref(t, x)


def _ggml_to_float(ggml, t, data, n):
    if t == "q8_K":
        return ggml.dequantize_row_symbol("dequantize_row_q8_K", data, n)
    return ggml.to_float(t, data, n)


def _q8_K_dont_care(x, theirs, mine):
    """Copy our bsums into ggml's output where ggml leaves them unwritten (all-zero blocks of the ref)."""
    theirs = theirs.copy()
    zero = ~(x.reshape(-1, 256) != 0).any(axis=1)
    tb = theirs.reshape(-1, 292)
    mb = mine.reshape(-1, 292)
    tb[zero, 260:] = mb[zero, 260:]
    return theirs


def _check_all_variants(ggml, t, x, imatrix=None):
    """ref / x86 / model (and model with imatrix) of ``t`` against the peer on float32 rows ``x``."""
    fmt = get_type(t)
    with np.errstate(all="ignore"):
        mine = quantize(x, t)
        mine_x86 = quantize(x, t, variant="x86")
    theirs = _ggml_ref(ggml, t, x)
    theirs_x86 = ggml.from_float(t, x)
    if t == "q8_K":
        theirs = _q8_K_dont_care(x, theirs, mine)
        theirs_x86 = _q8_K_dont_care(x, theirs_x86, mine_x86)
    _assert_bytes_equal(mine, theirs, fmt, f"{t} ref vs quantize_row_{t}_ref")
    _assert_bytes_equal(mine_x86, theirs_x86, fmt, f"{t} x86 vs CPU from_float")
    if t in WEIGHT_TYPES:
        with np.errstate(all="ignore"):
            mine_model = quantize(x, t, variant="model")
        _assert_bytes_equal(mine_model, ggml.quantize_chunk(t, x), fmt, f"{t} model vs ggml_quantize_chunk")
        if imatrix is not None:
            with np.errstate(all="ignore"):
                mine_im = quantize(x, t, variant="model", imatrix=imatrix)
            theirs_im = ggml.quantize_chunk(t, x, imatrix)
            _assert_bytes_equal(mine_im, theirs_im, fmt, f"{t} model+imatrix vs ggml_quantize_chunk")


# -- quantization against upstream ggml --------------------------------------------------------------

@pytest.mark.parametrize("t", KQUANTS)
@pytest.mark.parametrize("n", [256, 512, 2048])
@pytest.mark.parametrize("scale", [1e-5, 1.0, 3e3])
@pytest.mark.ggml
def test_quantize_matches_ggml_on_normal_rows(ggml, rng, t, n, scale):
    x = (rng.standard_normal((24, n)) * scale).astype(np.float32)
    imatrix = (rng.random(n) ** 2 * 4).astype(np.float32)
    _check_all_variants(ggml, t, x, imatrix)


@pytest.mark.parametrize("t", KQUANTS)
@pytest.mark.ggml
def test_quantize_matches_ggml_on_many_distributions(ggml, rng, t):
    """3072 blocks of mixed shapes and row scales 1e-6..1e3, so rare branches of the solvers get taken."""
    n = 2048
    parts = [
        rng.standard_normal((96, n)),
        rng.laplace(size=(96, n)),
        rng.uniform(-1, 3, size=(96, n)),
        rng.standard_t(2, size=(96, n)),
    ]
    x = np.concatenate(parts) * 10.0 ** rng.integers(-6, 4, size=(384, 1))
    x = x.astype(np.float32)
    # An imatrix with exact zeros gives sub-blocks of zero weight (D = 0 and 0/0 paths in the solvers).
    imatrix = (rng.random(n) * (rng.random(n) > 0.2)).astype(np.float32)
    _check_all_variants(ggml, t, x, imatrix)


def _edge_rows(rng):
    """Named single-block rows (256 values) at the edges of the quantizers' domains."""
    z = np.zeros(256, np.float32)
    rows = {"all_zero": z}
    for pos, v in [(0, 1.0), (17, -3.0), (255, 2.5e-3), (100, 1e30)]:
        a = z.copy()
        a[pos] = v
        rows[f"one_nonzero_{pos}"] = a
    a = rng.standard_normal(256).astype(np.float32)
    a[77] = 1e4
    rows["huge_outlier"] = a
    a = rng.standard_normal(256).astype(np.float32)
    a[3] = -5e3
    rows["huge_negative_outlier"] = a
    a = rng.standard_normal(256).astype(np.float32)
    a[0:32] = 0
    a[96:128] = 0
    a[200:216] = 0
    rows["zero_sub_blocks"] = a
    rows["constant_positive"] = np.full(256, 0.7, np.float32)
    rows["constant_negative"] = np.full(256, -3.25, np.float32)
    rows["subnormal"] = (rng.standard_normal(256) * 1e-40).astype(np.float32)
    rows["tiny_normal"] = (rng.standard_normal(256) * 1e-37).astype(np.float32)
    rows["below_group_eps"] = (rng.standard_normal(256) * 1e-16).astype(np.float32)
    rows["near_group_eps"] = (rng.standard_normal(256) * 1e-14).astype(np.float32)
    rows["halves_ties"] = (rng.integers(-30, 30, 256) / 2).astype(np.float32)
    rows["f16_overflow_scale"] = (rng.standard_normal(256) * 1e6).astype(np.float32)
    rows["square_overflow"] = (rng.standard_normal(256) * 1e20).astype(np.float32)
    rows["all_positive"] = (rng.random(256) + 1).astype(np.float32)
    rows["all_negative"] = (-rng.random(256) - 1).astype(np.float32)
    return rows


EDGE_NAMES = list(_edge_rows(np.random.default_rng(0)))


@pytest.mark.parametrize("t", KQUANTS)
@pytest.mark.parametrize("case", EDGE_NAMES)
@pytest.mark.ggml
def test_quantize_matches_ggml_on_edge_cases(ggml, rng, t, case):
    row = _edge_rows(rng)[case]
    # The edge block alone, and between two normal blocks (state carried between blocks would show).
    normal = rng.standard_normal(256).astype(np.float32)
    x = np.stack([np.concatenate([row, row]), np.concatenate([normal, row])])
    for imatrix in [
        np.ones(512, np.float32),
        (rng.random(512) * (rng.random(512) > 0.5)).astype(np.float32),
        np.zeros(512, np.float32),
    ]:
        _check_all_variants(ggml, t, x, imatrix)


@pytest.mark.ggml
def test_q8_K_ref_leaves_bsums_of_zero_blocks_unwritten(ggml, rng):
    """Upstream's quantize_row_q8_K_ref skips bsums of all-zero blocks; mlaref writes 0 there (documented)."""
    x = rng.standard_normal((1, 768)).astype(np.float32)
    x[0, 256:512] = 0
    a = _ggml_ref(ggml, "q8_K", x, fill=0xA5).reshape(3, 292)
    b = _ggml_ref(ggml, "q8_K", x, fill=0x5A).reshape(3, 292)
    assert np.all(a[1, 260:] == 0xA5) and np.all(b[1, 260:] == 0x5A)  # untouched
    assert np.array_equal(np.delete(a, np.s_[260:], axis=1)[1], np.zeros(260, np.uint8))  # d = 0, qs = 0
    assert np.array_equal(a[[0, 2]], b[[0, 2]])
    mine = quantize(x, "q8_K").reshape(3, 292)
    assert np.all(mine[1] == 0)
    _assert_bytes_equal(mine[[0, 2]], a[[0, 2]], get_type("q8_K"), "q8_K ref, non-zero blocks")


# -- dequantization ---------------------------------------------------------------------------------

@pytest.mark.parametrize("t", KQUANTS)
@pytest.mark.ggml
def test_dequantize_matches_ggml_on_random_blocks(ggml, rng, t):
    fmt = get_type(t)
    data = fmt.random_blocks(rng, 4096).view(np.uint8).reshape(64, -1)
    n = 64 * 256
    mine = dequantize(data, t)
    theirs = _ggml_to_float(ggml, t, data, n)
    assert np.array_equal(fp.f32_bits(mine), fp.f32_bits(theirs))


@pytest.mark.parametrize("t", KQUANTS)
@pytest.mark.ggml
def test_dequantize_matches_ggml_on_quantized_data(ggml, rng, t):
    x = (rng.standard_normal((16, 1024)) * 10.0 ** rng.integers(-4, 4, size=(16, 1))).astype(np.float32)
    data = quantize(x, t)
    assert np.array_equal(fp.f32_bits(dequantize(data, t)), fp.f32_bits(_ggml_to_float(ggml, t, data, 1024)))


@pytest.mark.parametrize("t", KQUANTS)
def test_random_blocks_lie_in_the_documented_domain(rng, t):
    blocks = get_type(t).random_blocks(rng, 512)
    if t == "q8_K":
        assert np.isfinite(blocks["d"]).all()
        sums = blocks["qs"].astype(np.int32).reshape(512, 16, 16).sum(axis=2)
        assert np.array_equal(blocks["bsums"], sums)
    else:
        for field in ["d", "dmin"] if t == "q4_K" else ["d"]:
            assert np.isfinite(fp.f16_to_f32(blocks[field])).all()


@pytest.mark.parametrize("t", WEIGHT_TYPES)
def test_dequantize_matches_gguf_py(rng, t):
    gguf_quants = pytest.importorskip("gguf.quants", reason="gguf-py (package gguf) is not installed")
    import gguf  # noqa: PLC0415

    data = get_type(t).random_blocks(rng, 2048).view(np.uint8).reshape(32, -1)
    theirs = gguf_quants.dequantize(data, getattr(gguf.GGMLQuantizationType, t.upper()[:-1] + "K"))
    assert np.array_equal(fp.f32_bits(dequantize(data, t)), fp.f32_bits(theirs))


def test_q4_K_dequantize_on_a_hand_built_block():
    """d = 0.5, dmin = 0.25, sc_j = j + 1, m_j = 2j (j >= 4 use the split 6-bit packing), nibble = l % 16."""
    b = np.zeros(1, dtype=get_type("q4_K").dtype)
    b["d"] = 0x3800  # 0.5
    b["dmin"] = 0x3400  # 0.25
    sc = np.arange(1, 9)
    m = 2 * np.arange(8) + 48  # 48..62: the high 2 bits are set, so the j >= 4 packing matters
    s = np.zeros(12, np.int64)
    s[0:4] = sc[0:4] | ((sc[4:8] >> 4) << 6)
    s[4:8] = m[0:4] | ((m[4:8] >> 4) << 6)
    s[8:12] = (sc[4:8] & 15) | ((m[4:8] & 15) << 4)
    b["scales"] = s.astype(np.uint8)
    nib = np.arange(256) % 16  # element e of sub-block j is nibble (32j + e) % 16 = e % 16
    qs = np.zeros(128, np.int64)
    for c in range(4):
        qs[32 * c:32 * c + 32] = nib[64 * c:64 * c + 32] | (nib[64 * c + 32:64 * c + 64] << 4)
    b["qs"] = qs.astype(np.uint8)
    y = dequantize(b.view(np.uint8)[None, :], "q4_K")[0]
    j = np.arange(256) // 32
    expect = 0.5 * (j + 1) * (np.arange(256) % 16) - 0.25 * (2 * j + 48)  # exact in float64 and float32
    assert np.array_equal(y, expect.astype(np.float32))


def test_q6_K_dequantize_on_a_hand_built_block():
    """d = 0.5, scale of sub-block b = b - 8, code of element e = e % 64: y = 0.5 * (b - 8) * (e % 64 - 32).

    Packing per upstream facts §5: for half h and l < 32, ql[64h + l] = c[128h + l] | c[128h + 64 + l] << 4 (low
    nibbles), ql[64h + 32 + l] = c[128h + 32 + l] | c[128h + 96 + l] << 4, and qh[32h + l] holds bits 4-5 of
    c[128h + l], c[128h + 32 + l], c[128h + 64 + l], c[128h + 96 + l] at bit 0, 2, 4, 6.
    """
    code = np.arange(256) % 64
    ql = np.zeros(128, np.int64)
    qh = np.zeros(64, np.int64)
    for h in range(2):
        c = code[128 * h:128 * h + 128]
        for l in range(32):
            ql[64 * h + l] = (c[l] & 15) | ((c[64 + l] & 15) << 4)
            ql[64 * h + 32 + l] = (c[32 + l] & 15) | ((c[96 + l] & 15) << 4)
            qh[32 * h + l] = (c[l] >> 4) | ((c[32 + l] >> 4) << 2) | ((c[64 + l] >> 4) << 4) | ((c[96 + l] >> 4) << 6)
    b = np.zeros(1, dtype=get_type("q6_K").dtype)
    b["ql"] = ql.astype(np.uint8)
    b["qh"] = qh.astype(np.uint8)
    b["scales"] = (np.arange(16) - 8).astype(np.int8)
    b["d"] = 0x3800  # 0.5
    y = dequantize(b.view(np.uint8)[None, :], "q6_K")[0]
    expect = 0.5 * (np.arange(256) // 16 - 8) * (code - 32)  # exact
    assert np.array_equal(y, expect.astype(np.float32))


def test_q8_K_dequantize_on_a_hand_built_block():
    b = np.zeros(1, dtype=get_type("q8_K").dtype)
    b["d"] = -0.375
    b["qs"] = (np.arange(256) - 128).astype(np.int8)
    y = dequantize(b.view(np.uint8)[None, :], "q8_K")[0]
    assert np.array_equal(y, (-0.375 * (np.arange(256) - 128)).astype(np.float32))


# -- the iqk variant of q8_K (ik_llama.cpp's iqk_quantize_row_q8_K), upstream facts §5 ------------------------

def _unpack_q8_K(data):
    b = np.ascontiguousarray(data).reshape(-1).view(get_type("q8_K").dtype)
    return b["d"], b["qs"].astype(np.int32), b["bsums"].astype(np.int32)


def test_q8_K_iqk_hand_built_block():
    """amax = 127 gives d = 1 and multiplier 1 exactly, so qs = rint(x) with ties to even; ref has d = -1."""
    x = np.zeros(256, np.float32)
    x[:8] = [127, 0.5, 1.5, 2.5, -0.5, -1.5, 3.5, -126.7]
    x[16:19] = [100, 27.5, -64.49]
    d, qs, bs = _unpack_q8_K(quantize(x, "q8_K", variant="iqk"))
    assert d[0] == 1.0
    assert qs[0, :8].tolist() == [127, 0, 2, 2, 0, -2, 4, -127]
    assert qs[0, 16:19].tolist() == [100, 28, -64]
    assert np.all(qs[0, 19:] == 0) and np.all(qs[0, 8:16] == 0)
    assert bs[0].tolist() == [6, 64] + [0] * 14
    d_ref, qs_ref, bs_ref = _unpack_q8_K(quantize(x, "q8_K", variant="ref"))
    assert d_ref[0] == -1.0  # d = 1/iscale with iscale = -127/max
    assert qs_ref[0, :8].tolist() == [-127, 0, -2, -2, 0, 2, -4, 127]
    assert bs_ref[0].tolist() == [-6, -64] + [0] * 14


def test_q8_K_iqk_zero_and_tiny_blocks():
    """All-zero block: d = 0, qs = 0, bsums = 0. 0 < amax < 127/FLT_MAX: 127/amax = +inf, every value
    converts to INT32_MIN, so qs = -128 (saturated) and bsums = 16 * INT32_MIN mod 2**16 = 0."""
    x = np.zeros((1, 512), np.float32)
    x[0, 256 + 5] = 1e-38  # a normal float below 127/FLT_MAX ~ 3.7e-37
    x[0, 256 + 9] = -2e-45  # and a subnormal
    d, qs, bs = _unpack_q8_K(quantize(x, "q8_K", variant="iqk"))
    assert d[0] == 0 and np.all(qs[0] == 0) and np.all(bs[0] == 0)
    assert np.all(qs[1] == -128) and np.all(bs[1] == 0)
    assert d[1] == np.float32(1e-38) / np.float32(127) and d[1] > 0


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_q8_K_iqk_is_ref_with_the_sign_of_max(rng, scale):
    """|iscale| is the same float (127/amax vs -127/max) and both round ties to even, so
    qs_iqk = -sign(max) * qs_ref and bsums likewise; d agrees in magnitude to 1 ulp (amax/127 vs 1/iscale)."""
    x = (rng.standard_normal((64, 1024)) * scale).astype(np.float32)
    d_i, qs_i, bs_i = _unpack_q8_K(quantize(x, "q8_K", variant="iqk"))
    d_r, qs_r, bs_r = _unpack_q8_K(quantize(x, "q8_K", variant="ref"))
    blocks = x.reshape(-1, 256)
    sign = np.sign(blocks[np.arange(len(blocks)), np.argmax(np.abs(blocks), axis=1)]).astype(np.int32)
    assert np.array_equal(qs_i, -sign[:, None] * qs_r)
    assert np.array_equal(bs_i, -sign[:, None] * bs_r)
    assert np.all(d_i >= 0) and np.array_equal(np.sign(d_r), -sign)
    ulps = np.abs(fp.f32_bits(d_i).astype(np.int64) - fp.f32_bits(np.abs(d_r)).astype(np.int64))
    assert ulps.max() <= 1
    assert np.all(qs_i >= -127)  # finite, normal-range data never saturates


def test_q8_K_x86_is_ref(rng):
    x = rng.standard_normal((8, 512)).astype(np.float32)
    assert np.array_equal(quantize(x, "q8_K", variant="x86"), quantize(x, "q8_K", variant="ref"))


# -- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", WEIGHT_TYPES)
def test_imatrix_of_the_wrong_length_is_rejected(t):
    x = np.zeros((2, 512), np.float32)
    with pytest.raises(ValueError, match="imatrix"):
        quantize(x, t, variant="model", imatrix=np.ones(256, np.float32))


@pytest.mark.parametrize("t", KQUANTS)
def test_rows_not_a_multiple_of_256_are_rejected(t):
    with pytest.raises(ValueError, match="256"):
        quantize(np.zeros((2, 320), np.float32), t)
    with pytest.raises(ValueError, match=str(get_type(t).type_size)):
        dequantize(np.zeros((2, get_type(t).type_size + 1), np.uint8), t)


def test_q8_K_has_no_model_variant():
    """ggml_quantize_chunk has no case for Q8_K (it aborts), so there is nothing to reproduce."""
    with pytest.raises(ValueError, match="no variant 'model'"):
        quantize(np.zeros((1, 256), np.float32), "q8_K", variant="model")
