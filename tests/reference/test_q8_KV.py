"""q8_KV (reference/types/q8_KV.py): rows worked out by hand, the round-trip bound, the registry's row metadata, and
the bytes of ik_llama.cpp's own quantizer and to_float (the 2026 snapshot, through the peer harness)."""

import numpy as np
import pytest

from mlaref.reference import dequantize, get_type, quantize, registry
from mlaref.reference.types import q8_KV as m

F32 = np.float32


def _header(row: np.ndarray) -> tuple[float, int]:
    return float(row[:4].view("<f4")[0]), int(row[4:8].view("<i4")[0])


# -- the registry: geometry and row metadata -------------------------------------------------------------------

def test_geometry_is_iks_type_traits():
    fmt = get_type("q8_KV")
    assert registry()["q8_KV"] is fmt
    # type_traits[GGML_TYPE_Q8_KV] (ggml.c of the snapshot:1443-1454): blck 32, type_size 32, row_meta_size 8
    assert (fmt.ggml_type, fmt.block_size, fmt.type_size, fmt.row_meta_size) == (151, 32, 32, 8)
    assert fmt.vec_dot_type == "q8_KV" and not fmt.upstream and fmt.gguf_type is None
    assert [fmt.row_size(n) for n in (32, 512, 576)] == [40, 520, 584]  # 8 + n: not n/32*32
    assert [fmt.row_length(b) for b in (40, 520, 584)] == [32, 512, 576]
    for bad in (8, 32, 41, 583):
        with pytest.raises(ValueError, match="8 bytes of row metadata plus a positive multiple of the block bytes 32"):
            fmt.row_length(bad)
    assert m.row_dtype(576).itemsize == 584 and m.HEADER.itemsize == 8


def test_generic_consumers_size_rows_with_the_metadata():
    from mlaref.reference.graphs import geometry
    from mlaref.reference.tensor import Tensor, row_size

    assert row_size("q8_KV", 576) == 584 and geometry.row_size("q8_KV", 576) == 584
    # ggml_new_tensor_impl: nb1 = ggml_row_size (tests/reference/test_tensor_row_meta.py has the rest)
    assert Tensor.empty("q8_KV", (64, 2)).nb == (32, 72, 144, 144)
    assert geometry.type_traits("q8_KV") == (32, 32) and geometry.row_meta_size("q8_KV") == 8
    with pytest.raises(NotImplementedError, match="one scale per row"):
        get_type("q8_KV").quantize_blocks(np.zeros((1, 32), F32), "iqk", None)
    with pytest.raises(ValueError, match=r"dequantize: the last dim of data: q8_KV: a row of 64 bytes"):
        dequantize(np.zeros((1, 64), np.uint8), "q8_KV")


# -- hand-computed rows ----------------------------------------------------------------------------------------

def test_a_row_with_amax_127_has_d_1_and_rounds_ties_to_even():
    # amax = 127 -> d = 127/127 = 1 exactly, mul = 1/1 = 1: q = x rounded half to even, s = their sum
    x = np.zeros(32, F32)
    x[:8] = [127, -63.5, 0.5, 1.5, 2.5, -2.5, 3.49, -100.51]
    row = quantize(x[None], "q8_KV")[0]
    assert row.shape == (40,)
    assert row[:8].tobytes() == bytes.fromhex("0000803f") + (127 - 64 + 0 + 2 + 2 - 2 + 3 - 101).to_bytes(4, "little",
                                                                                                          signed=True)
    q = row[8:].view(np.int8)
    assert q[:8].tolist() == [127, -64, 0, 2, 2, -2, 3, -101] and not q[8:].any()
    assert np.array_equal(dequantize(row[None], "q8_KV")[0], q.astype(F32))  # d = 1: y = q


def test_the_scale_is_one_for_the_whole_row_not_per_block():
    # block 0 holds the row maximum 254 (d = 2, mul = 0.5); block 1 only small values, which share that scale
    x = np.zeros(64, F32)
    x[0], x[32], x[33], x[34] = 254, 3, -5, 1
    row = quantize(x[None], "q8_KV")[0]
    assert _header(row) == (2.0, 127 + 2 - 2 + 0)  # 3/2 = 1.5 -> 2, -5/2 = -2.5 -> -2, 1/2 = 0.5 -> 0
    assert row[8:].view(np.int8)[[0, 32, 33, 34]].tolist() == [127, 2, -2, 0]


def test_an_all_zero_row_and_the_tiny_amax_hazard():
    zero = quantize(np.zeros((1, 64), F32), "q8_KV")[0]
    assert not zero.any()  # d = 0, s = 0, qs = 0 (the early return)
    # amax = 2**-126 (the smallest normal): d = 2**-126/127 is subnormal, 1/d overflows to +inf, every product is
    # +-inf or NaN (0*inf) and converts to INT32_MIN: qs = -128 everywhere, s = 64 * INT32_MIN mod 2**32 = 0
    x = np.zeros((1, 64), F32)
    x[0, 5] = F32(2.0**-126)
    row = quantize(x, "q8_KV")[0]
    d, s = _header(row)
    assert d == float(F32(2.0**-126) / F32(127)) and 0 < d < 2.0**-126 and s == 0
    assert (row[8:].view(np.int8) == -128).all()
    # the scalar #else branch: nearest_int(+-inf) and nearest_int(NaN) have low byte 0, so qs = 0 and s = 0
    d2, s2, q2 = m.scalar_fields(x)
    assert d2[0] == F32(d) and s2[0] == 0 and not q2.any()


def test_scalar_branch_writes_the_same_bytes_for_finite_input(rng):
    x = (rng.standard_normal((64, 576)) * rng.uniform(1e-3, 1e3, (64, 1))).astype(F32)
    x[3, :7] = np.arange(7) + F32(0.5)  # ties
    for got, want in zip(m.scalar_fields(x), m.iqk_fields(x)):
        assert np.array_equal(got, want)


def test_round_trip_error_is_half_a_step(rng):
    # |x - d*q| <= d/2 plus the roundings of d, 1/d, x*mul and d*q (a few ulp of amax)
    x = (rng.standard_normal((200, 576)) * rng.uniform(1e-4, 1e4, (200, 1))).astype(F32)
    y = dequantize(quantize(x, "q8_KV"), "q8_KV")
    d = np.abs(x).max(axis=1, keepdims=True).astype(np.float64) / 127
    err = np.abs(y.astype(np.float64) - x)
    assert (err <= 0.5 * d + 127 * d * 2.0**-21).all()
    assert (err.max(axis=1) > 0.4 * d[:, 0]).all()  # and the bound is not loose


def test_dot_rows_is_the_scaled_exact_integer_dot():
    x = np.zeros((2, 32), F32)
    x[0, :3] = [127, 64, -1]  # d = 1: q = x
    x[1, :3] = [254, 2, 2]  # d = 2: q = 127, 1, 1
    y = np.zeros((1, 32), F32)
    y[0, :3] = [-63.5, 127, 3]  # d = 1: q = -64, 127, 3
    qx, qy = quantize(x, "q8_KV"), quantize(y, "q8_KV")
    out = m.dot_rows(qx, qy)
    assert out.dtype == F32 and out.shape == (2, 1)
    assert out[0, 0] == 127 * -64 + 64 * 127 - 3 and out[1, 0] == 2 * (127 * -64 + 127 + 3)
    with pytest.raises(ValueError, match="not q8_KV rows of one length"):
        m.dot_rows(qx, qy[:, :-32])


def test_dot_rows_rounds_the_scale_product_first():
    # dx = dy = 1 + 2**-12: dx*dy = 1 + 2**-11 + 2**-24 rounds (a tie) to even 1 + 2**-11 in float32;
    # with sumi = 3 the result is f32(3 * (1 + 2**-11)) = 3 + 3*2**-11 exactly, not 3*(1 + 2**-11 + 2**-24)
    x = np.zeros((1, 40), np.uint8)
    x[0, :4] = np.array([1 + 2.0**-12], F32).view(np.uint8)
    x[0, 8:11] = [1, 1, 1]
    out = m.dot_rows(x, x)[0, 0]
    assert out == F32(3 + 3 * 2.0**-11)


# -- bit-exact against ik_llama.cpp (the 2026 snapshot's own from_float, from_float_ref, quantize_chunk, to_float)

def _peer_bytes(x: np.ndarray, data: np.ndarray, n: int):
    """Run in the peer's child process: the type row of q8_KV and its four row routines."""
    from mlaref.codegen.peers import harness as h  # noqa: PLC0415

    H = h.loaded()
    t = H.types["q8_KV"]
    return ({k: t[k] for k in ("blck_size", "type_size", "row_4096", "to_float", "from_float", "from_float_ref")},
            H.from_float("q8_KV", x), H.from_float("q8_KV", x, ref=True), H.quantize_chunk("q8_KV", x),
            H.to_float("q8_KV", data, n))


def _cases(rng, n):
    x = (rng.standard_normal((12, n)) * rng.uniform(1e-3, 1e3, (12, 1))).astype(F32)
    x[0] = 0
    x[1] = 0
    x[1, 7] = F32(2.0**-126)  # the hazard: qs = -128, s = 0
    x[2] = (np.arange(n) % 128 - 64).astype(F32) + F32(0.5)
    x[2, 0] = 127  # amax 127: d = 1, every other value a tie
    x[3] = -np.abs(x[3])  # amax from a negative value
    x[4, 1::2] = 0
    return x


@pytest.mark.parametrize("n", [32, 512, 576])
def test_bit_exact_with_ik_llama_cpp(rng, n):
    from mlaref.codegen.peers import harness

    x = _cases(rng, n)
    data = get_type("q8_KV").random_rows(rng, 6, n)
    traits, ff, ffr, chunk, tof = harness.call("ik-llama-cpp-python", "native", "tests.reference.test_q8_KV:_peer_bytes",
                                               x, data, n)
    assert traits == {"blck_size": 32, "type_size": 32, "row_4096": 4104, "to_float": 1, "from_float": 1,
                      "from_float_ref": 1}
    want = quantize(x, "q8_KV")
    for variant in ("ref", "model", "iqk", "ik2026_ref", "ik2026_x86", "ik2026_model"):
        assert np.array_equal(quantize(x, "q8_KV", variant=variant), want), variant
    for name, got in (("from_float", ff), ("from_float_ref", ffr), ("quantize_chunk", chunk)):
        bad = np.nonzero((got != want).any(axis=1))[0]
        assert bad.size == 0, f"{name}: rows {bad.tolist()} differ"
    assert np.array_equal(tof.view(np.uint32), dequantize(data, "q8_KV").view(np.uint32))
