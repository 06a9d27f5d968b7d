"""The float and legacy block formats against upstream ggml (ggml-python), gguf-py and their definitions.

Formats: f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q8_1, iq4_nl and ik_llama.cpp's interleaved q8_0_x4 /
q8_1_x4. Oracles: the peer's ``from_float_ref`` (variant ``ref``), the CPU ``from_float`` (``x86``),
``ggml_quantize_chunk`` with and without an imatrix (``model``), ``to_float``; gguf-py's ``quants`` as an
independent second oracle; upstream facts §5 for the x4 layouts (which no peer implements).

Inputs where ggml's result is C undefined behaviour (a non-finite float converted to an integer: infinite
inputs or a block maximum so small that ``1/d`` overflows, in every reference quantizer) are not compared;
the x86 q8 paths define them (integer indefinite, saturated to -128) and are compared there.
"""

import numpy as np
import pytest

from mlaref.reference import dequantize, fp, get_type, quantize
from mlaref.reference.types import bf16, iq4_nl

PEER_TYPES = ["f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "iq4_nl"]
BLOCK_TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "iq4_nl"]
IMATRIX_TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]
TO_FLOAT_TYPES = ["f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl"]  # upstream has to_float
ROW_LENGTHS = [32, 192, 576]  # one block; 128 + 64; 512 + 64 (the MLA rows)
FLT_MAX = float(np.finfo(np.float32).max)


def _pairs():
    return [(t, v) for t in PEER_TYPES for v in get_type(t).variants]


# -- helpers -------------------------------------------------------------------------------------------

def _peer_quantize(ggml, t, variant, x, imatrix=None):
    if variant == "model" or (t == "f32" and variant == "ref"):  # upstream F32 has no from_float_ref
        return ggml.quantize_chunk(t, x, imatrix)
    return ggml.from_float_ref(t, x) if variant == "ref" else ggml.from_float(t, x)


def _assert_bytes_equal(mine, theirs, fmt, what, dont_care=None):
    """Equal bytes; ``dont_care`` (bool, same shape) masks bytes ggml leaves unspecified."""
    mine = np.ascontiguousarray(mine).view(np.uint8)
    theirs = np.ascontiguousarray(theirs).view(np.uint8)
    assert mine.shape == theirs.shape, (what, mine.shape, theirs.shape)
    diff = mine != theirs
    if dont_care is not None:
        diff &= ~dont_care
    if diff.any():
        blocks = diff.reshape(-1, fmt.type_size)
        bad = np.nonzero(blocks.any(axis=1))[0]
        worst = bad[np.argmax(blocks[bad].sum(axis=1))]
        bits = np.unpackbits((mine ^ theirs).reshape(-1, fmt.type_size)[worst]).sum()
        raise AssertionError(
            f"{what}: {len(bad)} of {blocks.shape[0]} blocks differ (first {bad[:8].tolist()}); worst block "
            f"{worst}: bytes {np.nonzero(blocks[worst])[0][:16].tolist()}, {bits} differing bits"
        )


def _iq4_nl_ref_dont_care(x):
    """ggml leaves the nibbles of iq4_nl ``ref`` blocks with amax < 1e-15 unspecified (stale scratch): mask them."""
    nb = x.shape[1] // 32
    tiny = (np.abs(x.reshape(x.shape[0], nb, 32)).max(axis=2) < np.float32(1e-15))
    mask = np.zeros((x.shape[0], nb, 18), dtype=bool)
    mask[:, :, 2:] = tiny[:, :, None]
    return mask.reshape(x.shape[0], -1)


def _check(ggml, t, variant, x, imatrix=None, what=""):
    fmt = get_type(t)
    with np.errstate(all="ignore"):
        mine = quantize(x, t, variant=variant, imatrix=imatrix)
    theirs = _peer_quantize(ggml, t, variant, x, imatrix)
    dont_care = _iq4_nl_ref_dont_care(x) if (t, variant) in (("iq4_nl", "ref"), ("iq4_nl", "x86")) else None
    _assert_bytes_equal(mine, theirs, fmt, f"{t}/{variant} {what}", dont_care)


def _normal_rows(rng, n_rows, n):
    """Standard normal rows, each scaled by 10**k for k in -3..3 (cycled over the rows)."""
    x = rng.standard_normal((n_rows, n)).astype(np.float32)
    return x * (np.float32(10.0) ** (np.arange(n_rows) % 7 - 3).astype(np.float32))[:, None]


def _tie_block(t, scale):
    """A block whose scaled values hit exact rounding ties of ``t``'s quantizer (scale: a power of two).

    The anchor value makes ``d`` (and so ``id``) an exact power of two times 1, so ``x * id`` is exact:
    q8: amax 127 -> id 1, values k + 1/2; q4_0 / q5_0: max -8 / -16 -> id -1, values k + 1/2 (+8.5 / +16.5 then
    sit exactly on integers); q4_1 / q5_1: min 0, max 15 / 31 -> id 1, values k + 1/2; iq4_nl: max -127 ->
    id 1, values halfway between neighbouring table entries (best_index ties).
    """
    if t in ("q8_0", "q8_1"):
        anchor, vals = 127.0, np.arange(-60, 62, 4) + 0.5
    elif t in ("q4_0", "q5_0"):
        half = 8 if t == "q4_0" else 16
        anchor, vals = -float(half), np.arange(-half, half - 1) + 0.5
    elif t in ("q4_1", "q5_1"):
        top = 15 if t == "q4_1" else 31
        anchor, vals = float(top), np.concatenate([[0.0], np.arange(0, top) + 0.5])
    elif t == "iq4_nl":
        kv = iq4_nl.KVALUES.astype(np.float64)
        anchor, vals = -127.0, (kv[:-1] + kv[1:]) / 2
    else:
        anchor, vals = 1.5, np.linspace(-3, 3, 31)
    block = np.resize(np.concatenate([[anchor], vals]), 32)
    return (block * scale).astype(np.float32)


def _edge_rows(t, variant):
    """Blocks where ggml defines the result for ``t``/``variant``, 32 values each, concatenated into one row."""
    blocks = [
        np.zeros(32),  # all zero
        np.where(np.arange(32) % 3 == 0, -0.0, 0.0),  # signed zeros only
        np.full(32, -0.0),  # ggml's maximum starts at +0: d = +0 / -8 = -0 for q4_0
        np.eye(32)[0] * 3.0,  # one non-zero, first position
        np.eye(32)[31] * -0.25,  # one non-zero, last position
        np.eye(32)[17] * 1e-3,
        np.concatenate([[1.0], np.full(31, 1e-40)]),  # subnormals next to a normal maximum
        np.concatenate([[-2.0], -np.full(31, 1.4e-45)]),  # the smallest subnormal
        np.concatenate([[5.0, -5.0], np.linspace(-1, 1, 30)]),  # |max| tie of opposite signs: first wins
        np.concatenate([[-5.0, 5.0], np.linspace(-1, 1, 30)]),
        np.full(32, 7.0),  # constant
        np.full(32, -7.0),
        np.linspace(FLT_MAX / 2, FLT_MAX, 32),  # the largest magnitudes (max - min stays finite)
        -np.linspace(FLT_MAX / 2, FLT_MAX, 32),
        np.linspace(1e-30, 1e-29, 32),  # tiny but normal: 1/d stays finite
        np.full(32, 1e-16),  # below iq4_nl's 1e-15 zero threshold
    ]
    for e in (-20, -3, 0, 5, 20):
        blocks.append(_tie_block(t, 2.0**e))
    if variant == "x86" and t in ("q8_0", "q8_1") or t in ("f32", "f16", "bf16"):
        # defined on these paths only: Inf elements (-128 on x86 q8), subnormal maxima (1/d = Inf)
        blocks.append(np.concatenate([[np.inf], np.linspace(-1, 1, 31)]))
        blocks.append(np.concatenate([[-np.inf], np.zeros(31)]))
        blocks.append(np.full(32, 1e-39))
    if t in ("f32", "f16", "bf16"):
        nan = np.full(32, np.nan)
        blocks.append(nan)
        blocks.append(np.array([65504, 65519.99, 65520, 6e-8, 3e-8, 2.9e-8, -6.1e-5, 1e38] * 4))
    row = np.concatenate(blocks).astype(np.float32)
    if t in ("f32", "f16", "bf16"):
        bits = row.view(np.uint32)
        nanpos = np.isnan(row)
        bits[nanpos] = 0x7F800001 + np.arange(nanpos.sum(), dtype=np.uint32) * 0x1357 | (
            (np.arange(nanpos.sum(), dtype=np.uint32) & 1) << 31
        )
    return row[None, :]


# -- quantize: bytes equal to ggml -----------------------------------------------------------------------

@pytest.mark.ggml
@pytest.mark.parametrize("t,variant", _pairs())
@pytest.mark.parametrize("n", ROW_LENGTHS)
def test_quantize_matches_ggml_on_normal_rows(ggml, rng, t, variant, n):
    x = _normal_rows(rng, 14, n)
    _check(ggml, t, variant, x, what=f"normal n={n}")


@pytest.mark.ggml
@pytest.mark.parametrize("t,variant", _pairs())
def test_quantize_matches_ggml_on_edge_cases(ggml, t, variant):
    x = _edge_rows(t, variant)
    _check(ggml, t, variant, x, what="edge cases")
    # each edge block alone, so a block is also the first of a row (iq4_nl's uninitialised scratch case)
    _check(ggml, t, variant, x.reshape(-1, 32), what="edge blocks as rows")


@pytest.mark.ggml
@pytest.mark.parametrize("t,variant", _pairs())
def test_quantize_matches_ggml_on_heavy_tails(ggml, rng, t, variant):
    """Student-t and uniform data, sparse rows and rows with an outlier: other extremes and tie patterns."""
    rows = [
        rng.standard_t(2, size=576),
        rng.uniform(-1, 1, size=576),
        np.where(rng.random(576) < 0.9, 0, rng.standard_normal(576)),
        np.concatenate([[1e4], rng.standard_normal(575)]),
        np.round(rng.standard_normal(576) * 8) / 8,  # coarse grid: many exact ties
    ]
    _check(ggml, t, variant, np.array(rows, dtype=np.float32), what="heavy tails")


@pytest.mark.ggml
@pytest.mark.parametrize("t", IMATRIX_TYPES)
@pytest.mark.parametrize("n", ROW_LENGTHS)
def test_model_with_imatrix_matches_ggml(ggml, rng, t, n):
    """``ggml_quantize_chunk`` with importance weights (the ``_impl`` quantizers), zero weights included."""
    x = _normal_rows(rng, 7, n)
    imatrix = rng.random(n).astype(np.float32) * np.float32(4)
    imatrix[::5] = 0
    _check(ggml, t, "model", x, imatrix, what=f"imatrix n={n}")


@pytest.mark.ggml
@pytest.mark.parametrize("t", IMATRIX_TYPES)
def test_model_with_imatrix_matches_ggml_on_edge_cases(ggml, rng, t):
    """Edge blocks with an imatrix, and a block whose weights are all zero (upstream then stores d = 0)."""
    x = _edge_rows(t, "model")
    imatrix = rng.random(x.shape[1]).astype(np.float32)
    imatrix[64:96] = 0
    _check(ggml, t, "model", x, imatrix, what="imatrix edge cases")


@pytest.mark.ggml
@pytest.mark.parametrize("n", [1, 3, 7, 13, 20])
def test_f16_x86_row_tail_drops_nan_payloads(ggml, rng, n):
    """Upstream's CPU ``from_float`` for F16 uses F16C (payload kept) except on the last ``n % 4`` values."""
    bits = (0x7F800001 + rng.integers(0, 0x7FFFFF, size=(5, n), dtype=np.uint32)) | (
        rng.integers(0, 2, size=(5, n), dtype=np.uint32) << 31
    )
    x = fp.bits_f32(bits.astype(np.uint32)).reshape(5, n)
    mine = quantize(x, "f16", variant="x86")
    assert np.array_equal(mine, ggml.from_float("f16", x))
    assert np.array_equal(mine.view(np.uint16)[:, : n - n % 4], fp.f32_to_f16(x[:, : n - n % 4]))
    assert np.array_equal(mine.view(np.uint16)[:, n - n % 4 :], fp.f32_to_f16_soft(x[:, n - n % 4 :]))


@pytest.mark.ggml
def test_q8_0_model_ignores_the_imatrix(ggml, rng):
    """``quantize_q8_0`` ignores its quant_weights: with or without an imatrix the bytes are ``ref``'s."""
    x = _normal_rows(rng, 5, 576)
    imatrix = rng.random(576).astype(np.float32)
    mine = quantize(x, "q8_0", variant="model", imatrix=imatrix)
    assert np.array_equal(mine, ggml.quantize_chunk("q8_0", x, imatrix))
    assert np.array_equal(mine, quantize(x, "q8_0"))


@pytest.mark.ggml
def test_q8_0_ref_and_x86_differ_on_ties_and_each_matches_ggml(ggml):
    """A block of exact .5 ties: roundf (ref) rounds away from zero, the AVX2 path to even; ggml agrees with both."""
    x = _tie_block("q8_0", 1.0)[None, :]
    ref = quantize(x, "q8_0", variant="ref")
    x86 = quantize(x, "q8_0", variant="x86")
    assert not np.array_equal(ref, x86)
    qs_ref = ref[0, 2:].view(np.int8)[1:].astype(int)
    qs_x86 = x86[0, 2:].view(np.int8)[1:].astype(int)
    vals = x[0, 1:].astype(np.float64)
    assert np.array_equal(qs_ref, np.sign(vals) * np.floor(np.abs(vals) + 0.5))
    assert np.array_equal(qs_x86, np.round(vals))  # NumPy's round is half to even
    assert np.array_equal(ref, ggml.from_float_ref("q8_0", x))
    assert np.array_equal(x86, ggml.from_float("q8_0", x))


@pytest.mark.ggml
def test_iq4_nl_ref_writes_the_documented_index_in_zero_blocks(ggml):
    """Blocks with amax < 1e-15 get d = 0 and nibbles 8 (0x88) here; ggml's nibbles there are stale scratch."""
    x = np.zeros((1, 96), dtype=np.float32)
    x[0, 32:64] = np.linspace(-1, 1, 32)  # a real block between two zero blocks
    x[0, 64:96] = 1e-16
    mine = quantize(x, "iq4_nl").reshape(3, 18)
    assert np.array_equal(mine[[0, 2], :2], np.zeros((2, 2), np.uint8))
    assert np.all(mine[[0, 2], 2:] == 0x88)
    theirs = ggml.from_float_ref("iq4_nl", x).reshape(3, 18)
    assert np.array_equal(mine[:, :2], theirs[:, :2])
    # the stale case: block 2's nibbles in ggml are block 1's indices (same call, same scratch array)
    assert np.array_equal(theirs[2, 2:], theirs[1, 2:])
    assert np.array_equal(mine[1], theirs[1])


# -- dequantize: bits equal to ggml ----------------------------------------------------------------------

@pytest.mark.ggml
@pytest.mark.parametrize("t", TO_FLOAT_TYPES)
@pytest.mark.parametrize("n", ROW_LENGTHS)
def test_dequantize_matches_ggml_on_random_blocks(ggml, rng, t, n):
    fmt = get_type(t)
    data = fmt.random_rows(rng, 9, n)
    mine = dequantize(data, t)
    theirs = ggml.to_float(t, data, n)
    assert np.array_equal(mine.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.ggml
@pytest.mark.parametrize("t", ["f16", "bf16"])
def test_dequantize_matches_ggml_on_every_16_bit_pattern(ggml, t):
    """All 65536 patterns, Inf and NaN included (f16: NaN quieted with its payload; bf16: bits kept)."""
    data = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.uint8).reshape(64, -1)
    mine = dequantize(data, t)
    theirs = ggml.to_float(t, data, 1024)
    assert np.array_equal(mine.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.ggml
def test_q8_1_dequantize_is_q8_0_of_its_d_and_qs(ggml, rng):
    """Upstream has no Q8_1 to_float; its values are ``qs * d`` as Q8_0's, so ggml's Q8_0 dequantizer is the oracle."""
    fmt = get_type("q8_1")
    data = fmt.random_rows(rng, 5, 576)
    blocks = data.reshape(5, 18, 36)
    as_q8_0 = np.concatenate([blocks[:, :, :2], blocks[:, :, 4:]], axis=2).reshape(5, -1)
    assert np.array_equal(dequantize(data, "q8_1").view(np.uint32), ggml.to_float("q8_0", as_q8_0, 576).view(np.uint32))


@pytest.mark.parametrize("t", BLOCK_TYPES + ["f16", "bf16", "f32", "q8_0_x4", "q8_1_x4"])
def test_random_blocks_lie_in_the_documented_domain(rng, t):
    fmt = get_type(t)
    blocks = fmt.random_blocks(rng, 4096)
    assert blocks.dtype == fmt.dtype and blocks.shape == (4096,)
    if fmt.dtype.names is None:
        assert np.isfinite(dequantize(blocks.view(np.uint8).reshape(1, -1), t)).all()
        return
    for f in ("d", "m", "s"):
        if f in fmt.dtype.names:
            assert np.isfinite(fp.f16_to_f32(blocks[f])).all(), f
    if fmt.dtype["qs"].base == np.int8:
        assert blocks["qs"].min() >= -127
    if "s" in fmt.dtype.names:
        total = blocks["qs"].astype(np.int64).sum(axis=1).astype(np.float32)
        assert np.array_equal(blocks["s"], fp.f32_to_f16(total * fp.f16_to_f32(blocks["d"])))


# -- gguf-py, an independent second oracle --------------------------------------------------------------

GGUF_QUANT = ["f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]
GGUF_DEQUANT = GGUF_QUANT + ["iq4_nl"]


def _gguf():
    return pytest.importorskip("gguf", reason="gguf-py (pip package gguf) is not installed")


@pytest.mark.parametrize("t", GGUF_QUANT)
@pytest.mark.parametrize("n", ROW_LENGTHS)
def test_quantize_matches_gguf_py(rng, t, n):
    gguf = _gguf()
    x = _normal_rows(rng, 14, n)
    theirs = gguf.quants.quantize(x, gguf.GGMLQuantizationType[t.upper()])
    mine = quantize(x, t)
    assert np.array_equal(mine, np.ascontiguousarray(theirs).view(np.uint8).reshape(mine.shape))


@pytest.mark.parametrize("t", GGUF_DEQUANT)
def test_dequantize_matches_gguf_py(rng, t):
    gguf = _gguf()
    data = get_type(t).random_rows(rng, 8, 576)
    theirs = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[t.upper()])
    assert np.array_equal(dequantize(data, t).view(np.uint32), theirs.astype(np.float32).view(np.uint32))


# -- the x4 layouts (no peer: upstream facts §5 and ggml's plain q8 blocks) -------------------------------------

def _deinterleave(data, n, plain_size, n_scales):
    """Plain q8 blocks from interleaved rows, written from upstream facts §5: groups of four blocks store their
    ``n_scales`` f16 fields per block (``d[4]``, then ``s[4]`` for q8_1) and then ``qs[128]`` (block r at 32r);
    the last ``nb % 4`` blocks are plain. Byte loops on purpose: independent of the reference's NumPy views.
    """
    nb = n // 32
    out = np.zeros((data.shape[0], nb * plain_size), dtype=np.uint8)
    for r in range(data.shape[0]):
        pos = 0
        for g in range(nb // 4):
            for k in range(4):
                dst = (4 * g + k) * plain_size
                for f in range(n_scales):
                    out[r, dst + 2 * f : dst + 2 * f + 2] = data[r, pos + 8 * f + 2 * k : pos + 8 * f + 2 * k + 2]
                qs0 = pos + 8 * n_scales + 32 * k
                out[r, dst + 2 * n_scales : dst + plain_size] = data[r, qs0 : qs0 + 32]
            pos += 4 * plain_size
        out[r, (nb // 4) * 4 * plain_size :] = data[r, pos:]
    return out


@pytest.mark.ggml
@pytest.mark.parametrize("t,plain,n_scales", [("q8_0_x4", "q8_0", 1), ("q8_1_x4", "q8_1", 2)])
@pytest.mark.parametrize("n", [32, 128, 192, 576, 640])
def test_x4_rows_deinterleave_to_ggml_x86_blocks(ggml, rng, t, plain, n_scales, n):
    """De-interleaving an x4 row gives exactly upstream ggml's x86 ``from_float`` blocks of the plain type.

    Why this is the right oracle: ik_llama.cpp@676f0e71b's ``quantize_row_q8_0_x4`` / ``quantize_row_q8_1_x4``
    (iqk_quantize.cpp, AVX2 branch) run, per block, the same instructions as upstream's x86
    ``quantize_row_q8_0`` / ``quantize_row_q8_1`` (``max_ps`` tree, ``d = amax/127``, ``id = 127/amax``,
    ``_mm256_round_ps(NEAREST)``, saturating packs, ``s = d * hsum``); only the store addresses differ. The
    f16 stores differ (F16C there, the software routine upstream) only for a NaN scale, which finite inputs
    cannot produce. So the plain blocks must equal ggml's, byte for byte, and the layout is checked by a
    de-interleaver written from upstream facts §5, not by the reference's own views.
    """
    fmt = get_type(t)
    x = np.concatenate([_normal_rows(rng, 7, n), _edge_rows("q8_0", "x86")[:, :n]])
    x = x[np.isfinite(x).all(axis=1)]
    mine = quantize(x, t, variant="iqk")
    assert mine.shape == (x.shape[0], fmt.row_size(n)) and fmt.row_size(n) == get_type(plain).row_size(n)
    plain_size = get_type(plain).type_size
    assert np.array_equal(_deinterleave(mine, n, plain_size, n_scales), ggml.from_float(plain, x))


@pytest.mark.ggml
@pytest.mark.parametrize("t,plain,n_scales", [("q8_0_x4", "q8_0", 1), ("q8_1_x4", "q8_1", 2)])
def test_x4_dequantize_is_plain_dequantize_of_the_deinterleaved_row(ggml, rng, t, plain, n_scales):
    n = 576
    data = get_type(t).random_rows(rng, 6, n)
    flat = _deinterleave(data, n, get_type(plain).type_size, n_scales)
    if plain == "q8_1":  # ggml has no q8_1 to_float: drop s, leaving q8_0 blocks
        b = flat.reshape(6, -1, 36)
        flat = np.concatenate([b[:, :, :2], b[:, :, 4:]], axis=2).reshape(6, -1)
    assert np.array_equal(dequantize(data, t).view(np.uint32), ggml.to_float("q8_0", flat, n).view(np.uint32))


def test_x4_layout_on_a_hand_built_row():
    """Five blocks whose values identify them: block b holds b+1 at element 0 and -(b+1) elsewhere."""
    x = np.zeros((1, 160), dtype=np.float32)
    for b in range(5):
        x[0, 32 * b] = 127.0 * 2.0**b
        x[0, 32 * b + 1 : 32 * b + 32] = -(b + 1) * 2.0**b
    row = quantize(x, "q8_1_x4", variant="iqk")[0]
    assert row.size == 5 * 36
    d = row[:8].view(np.uint16)
    s = row[8:16].view(np.uint16)
    assert np.array_equal(d, fp.f32_to_f16(np.float32(2.0) ** np.arange(4, dtype=np.float32)))
    for b in range(4):
        qs = row[16 + 32 * b : 48 + 32 * b].view(np.int8)
        assert qs[0] == 127 and np.all(qs[1:] == -(b + 1))
        assert s[b] == fp.f32_to_f16(np.float32(2.0**b) * np.float32(127 - 31 * (b + 1)))[()]
    tail = row[144:].view(np.uint8)
    assert tail[:2].view(np.uint16)[0] == fp.f32_to_f16(np.float32(16.0))[()]
    assert tail[4] == 127 and np.all(tail[5:].view(np.int8) == -5)
    row0 = quantize(x, "q8_0_x4", variant="iqk")[0]
    assert row0.size == 5 * 34 and np.array_equal(row0[:8], row[:8]) and np.array_equal(row0[8:136], row[16:144])


# -- the f16 / bf16 formats on long rows ---------------------------------------------------------------------

def test_f16_and_bf16_rows_follow_numpy_float16_and_the_bf16_formula(rng):
    """The F16 / BF16 formats on rows longer than one conversion chunk, against oracles written here: NumPy's
    float16 cast for non-NaN values (every f16 rounding boundary and its neighbours included), ggml's NaN rules,
    and the bf16 rounding formula in uint64; dequantize against NumPy's widening and ``bits << 16``."""
    bits = np.concatenate([
        rng.integers(0, 2**32, size=300000, dtype=np.uint64).astype(np.uint32),
        (np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32).view(np.uint32).astype(np.int64)
         + (1 << 12) + np.array([-1, 0, 1])[:, None]).reshape(-1).astype(np.uint32),
    ])
    bits = bits[: bits.size - bits.size % 96]
    rng.shuffle(bits)
    x = fp.bits_f32(bits).reshape(-1, 96)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    with np.errstate(over="ignore", invalid="ignore"):
        want16 = np.where(nan, ((bits >> 16) & 0x8000) | 0x7E00, x.reshape(-1).astype(np.float16).view(np.uint16))
    assert np.array_equal(quantize(x, "f16").view(np.uint16).reshape(-1), want16.astype(np.uint16))
    u = bits.astype(np.uint64)
    want_bf = np.where(nan, (u >> 16) | 0x40, (u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    assert np.array_equal(quantize(x, "bf16").view(np.uint16).reshape(-1), want_bf)
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    h16 = h[((h & 0x7C00) != 0x7C00)]
    y = dequantize(h16.view(np.uint8)[None, :], "f16")[0]
    assert np.array_equal(y.view(np.uint32), h16.view(np.float16).astype(np.float32).view(np.uint32))
    assert np.array_equal(dequantize(h.view(np.uint8)[None, :], "bf16")[0].view(np.uint32), h.astype(np.uint32) << 16)


def test_bf16_avx512_row_flushes_subnormals_only_in_full_chunks():
    """ik_llama.cpp's AVX512-BF16 row conversion: 32-chunks flush subnormal inputs to +-0, the tail rounds them."""
    sub = np.float32(3e-39)  # a float32 subnormal whose bf16 rounding is a non-zero subnormal
    assert fp.f32_to_bf16(sub)[()] != 0
    x = np.full(70, sub, dtype=np.float32)
    x[1::2] *= -1
    out = bf16.convert_row_avx512bf16(x)
    assert np.array_equal(out[:64], np.where(np.arange(64) % 2 == 1, 0x8000, 0).astype(np.uint16))
    assert np.array_equal(out[64:], fp.f32_to_bf16(x[64:]))
    y = np.linspace(-3, 3, 70).astype(np.float32)
    assert np.array_equal(bf16.convert_row_avx512bf16(y), fp.f32_to_bf16(y))


def test_iq4_nl_best_index_is_nearest_with_ties_up(rng):
    """On a 1/64 grid over [-140, 130] (every midpoint included) and random floats: the nearest table value,
    ties to the higher index, computed here in float64 (exact for these inputs)."""
    x = np.concatenate([np.arange(-140 * 64, 130 * 64) / 64.0, rng.uniform(-135, 125, 200000)]).astype(np.float32)
    kv = iq4_nl.KVALUES.astype(np.float64)
    dist = np.abs(x.astype(np.float64)[:, None] - kv[None, :])
    best = dist.min(axis=1, keepdims=True)
    expect = np.where(dist == best, np.arange(16), -1).max(axis=1)
    assert np.array_equal(iq4_nl.best_index(x), expect)
