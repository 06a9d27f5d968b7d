"""The verdict arithmetic: NMSE, first differing element and bits, block bytes, bounds (hand-built outputs)."""

import numpy as np

from mlaref.codegen.conform.caseset import default_cases
from mlaref.codegen.conform.outputs import Output
from mlaref.codegen.conform.verdict import compare
from mlaref.reference.compare import nmse


def _f32(values):
    a = np.asarray(values, np.float32)
    return Output("f32", a.view(np.uint8).reshape(-1), a.shape, a)


def test_equal_bits_are_bit_exact_even_for_nan():
    a = np.array([1.0, np.nan, -0.0], np.float32)
    assert compare(_f32(a), _f32(a.copy()), "exact", 1e-7)["status"] == "bit-exact"
    # +0 and -0 are equal values but different bits
    r = compare(_f32([0.0]), _f32([-0.0]), "exact", 1e-7)
    assert r["status"] == "mismatch"
    assert r["first"]["spec_bits"] == "0x00000000" and r["first"]["lib_bits"] == "0x80000000"


def test_one_ulp_is_reported_with_index_and_bits():
    spec = np.ones((2, 3), np.float32)
    lib = spec.copy()
    lib[1, 2] = np.nextafter(np.float32(1), np.float32(2))
    r = compare(_f32(spec), _f32(lib), "exact", 1e-7)
    assert r["status"] == "mismatch"
    assert r["first"] == {"index": [1, 2], "spec_bits": "0x3f800000", "lib_bits": "0x3f800001", "ulps": 1}
    assert "1 of 6 elements differ" in r["text"]
    # NMSE = (2^-23)^2 / 6
    assert abs(r["nmse"] - 2.0**-46 / 6) < 1e-30
    ok = compare(_f32(spec), _f32(lib), "nmse", 1e-7)
    assert ok["status"] == "within NMSE bound" and ok["text"] == f"within NMSE bound ({2.0**-46 / 6:.3g} <= 1e-07)"


def test_ulps_across_zero():
    r = compare(_f32([np.float32(2.0**-149)]), _f32([-np.float32(2.0**-149)]), "exact", 1e-7)
    assert r["first"]["ulps"] == 2


def test_above_the_bound_is_a_mismatch_with_the_bound_named():
    r = compare(_f32([1.0, 2.0]), _f32([1.0, 2.5]), "nmse", 1e-7)
    assert r["status"] == "mismatch" and "NMSE 0.05 > bound 1e-07" in r["text"]
    assert nmse(np.array([1.0, 2.5]), np.array([1.0, 2.0])) == 0.25 / 5


def test_non_finite_differences_are_infinite_nmse():
    assert nmse(np.array([np.inf, 1.0]), np.array([1.0, 1.0])) == float("inf")
    assert nmse(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == 0.0
    r = compare(_f32([np.inf]), _f32([1.0]), "nmse", 1.0)
    assert r["status"] == "mismatch"


def test_block_bytes_report_row_block_and_byte():
    # two rows of two q8_0 blocks (34 bytes each); flip 3 bits of byte 5 of block 1 of row 1
    spec = np.zeros((2, 68), np.uint8)
    lib = spec.copy()
    lib[1, 34 + 5] = 0b0000_0111
    vals = np.zeros((2, 64), np.float32)
    r = compare(Output("q8_0", spec.reshape(-1), spec.shape, vals), Output("q8_0", lib.reshape(-1), lib.shape, vals),
                "exact", 1e-7)
    assert r["status"] == "mismatch"
    assert r["first"] == {"row": 1, "block": 1, "byte": 5, "spec_byte": "0x00", "lib_byte": "0x07", "bits": 3}


def test_f16_outputs_compare_16_bit_patterns():
    s = np.array([0x3C00, 0x3C00], np.uint16)
    lb = np.array([0x3C00, 0x3C01], np.uint16)
    v = np.ones(2, np.float32)
    r = compare(Output("f16", s.view(np.uint8), (2,), v), Output("f16", lb.view(np.uint8), (2,), v), "exact", 1e-7)
    assert r["first"] == {"index": [1], "spec_bits": "0x3c00", "lib_bits": "0x3c01", "ulps": 1}


def test_shape_disagreement_is_a_mismatch():
    r = compare(_f32([1.0, 2.0]), _f32([1.0]), "exact", 1e-7)
    assert r["status"] == "mismatch" and "spec gives f32 (2,)" in r["text"]


def test_op_bounds_follow_test_backend_ops():
    cases = {c.op: c for c in default_cases()}
    assert cases["mul_mat"].nmse_bound == 5e-4 and cases["flash_attn_ext"].nmse_bound == 5e-4
    assert cases["rope"].nmse_bound == 1e-7 and cases["soft_max"].nmse_bound == 1e-7
