"""The GPU plan cuda_w32 in the reference: its lane map and its shuffle-xor fold, checked on hand-computed cases."""

import numpy as np
import pytest

from mlaref.reference.ops.vec_dot import vec_dot
from mlaref.reference.plan import CUDA_W32, GPU_PLANS, PLANS, ReductionPlan, get_plan


def _f16_rows(*rows):
    return np.stack([np.asarray(r, np.float16).view(np.uint8) for r in rows])


def _q8_0_row(blocks):
    """A q8_0 row of (d, qs[0]) blocks: every other qs byte zero, so a block's int sum is qs[0] * y's qs[0]."""
    out = b""
    for d, q0 in blocks:
        qs = np.zeros(32, np.int8)
        qs[0] = q0
        out += np.array([d], "<f2").tobytes() + qs.tobytes()
    return np.frombuffer(out, np.uint8)[None, :]


def test_the_plan_is_named_and_separate_from_the_cpu_plans():
    assert get_plan("cuda_w32") is CUDA_W32 and GPU_PLANS["cuda_w32"] is CUDA_W32
    assert set(GPU_PLANS) == {"cuda_w32", "cuda_fa_w32"}
    assert "cuda_w32" not in PLANS
    assert (CUDA_W32.lanes, CUDA_W32.accs, CUDA_W32.fold, CUDA_W32.int_to_float, CUDA_W32.fma,
            CUDA_W32.tail) == (32, 1, "xor", "block", True, "masked")
    with pytest.raises(ValueError, match="unknown plan"):
        get_plan("cuda_w64")


def test_xor_fold_needs_one_accumulator():
    with pytest.raises(ValueError, match="xor"):
        ReductionPlan(name="bad", lanes=32, accs=2, fold="xor")
    with pytest.raises(ValueError, match="serial"):  # one lane is the serial plan
        ReductionPlan(name="bad", lanes=1, accs=1, fold="xor")


def test_f16_lane_map_and_butterfly_by_hand():
    """n = 64 f16: lane l takes elements l and l + 32. Products: element 0 -> 2**24 (2048 * 8192), 1 and 2 -> 1,
    3 -> -2**24, element 32 (lane 0 again) -> 1; every other product 0.

    lane 0: fma(2048, 8192, 0) = 2**24, then fma(1, 1, 2**24) = 2**24 + 1 -> 2**24 (tie to even)
    butterfly: o = 16, 8, 4 add zeros; o = 2: lane 0 + lane 2 = 2**24 + 1 -> 2**24, lane 1 + lane 3 = 1 - 2**24
    = -16777215 (exact); o = 1: 2**24 - 16777215 = 1. The exact dot product is 3, which ggml_generic's double sum
    gives.
    """
    x = np.zeros(64, np.float32)
    y = np.zeros(64, np.float32)
    x[[0, 1, 2, 3, 32]] = [2048, 1, 1, -2048, 1]
    y[[0, 1, 2, 3, 32]] = [8192, 1, 1, 8192, 1]
    xb, yb = _f16_rows(x), _f16_rows(y)
    assert vec_dot(xb, "f16", yb, "f16", 64, "cuda_w32")[0, 0] == np.float32(1.0)
    assert vec_dot(xb, "f16", yb, "f16", 64, "ggml_generic")[0, 0] == np.float32(3.0)


def test_q8_0_one_block_per_lane_by_hand():
    """34 q8_0 blocks (n = 1088): block b goes to lane b % 32, acc = fma(f32(dx*dy), float(sumi), acc).

    block 0: dx*dy = 2048*8192 = 2**24, sumi 1; block 2: 1*1, sumi 1; block 3: 2**24, sumi -1; block 32 (lane 0):
    1*1, sumi 1: fma(1, 1, 2**24) = 2**24 + 1 -> 2**24 (tie to even); every other block sumi 0.
    butterfly: o = 2: lane 0 + lane 2 = 2**24 + 1 -> 2**24, lane 1 + lane 3 = -2**24; o = 1: 0. Exact sum: 2.
    """
    xs = [(1.0, 0)] * 34
    ys = [(1.0, 0)] * 34
    xs[0], ys[0] = (2048.0, 1), (8192.0, 1)
    xs[2], ys[2] = (1.0, 1), (1.0, 1)
    xs[3], ys[3] = (2048.0, -1), (8192.0, 1)
    xs[32], ys[32] = (1.0, 1), (1.0, 1)
    x, y = _q8_0_row(xs), _q8_0_row(ys)
    assert vec_dot(x, "q8_0", y, "q8_0", 1088, "cuda_w32")[0, 0] == np.float32(0.0)
    # ggml_generic, blocks in index order: 2**24 + 1 -> 2**24, - 2**24 -> 0, + 1 -> 1
    assert vec_dot(x, "q8_0", y, "q8_0", 1088, "ggml_generic")[0, 0] == np.float32(1.0)


def test_xor_butterfly_equals_halves_on_every_input():
    """Float addition commutes exactly, so after each butterfly step lanes l and l ^ o hold equal values: the
    butterfly is the halves fold over 32 lanes (bytes compared on random lane values of wide magnitudes)."""
    rng = np.random.default_rng(7)
    for n in (32 * 7, 32 * 40 + 5):  # ragged: the last step leaves lanes untouched
        x = (rng.standard_normal((4, n)) * np.exp2(rng.integers(-8, 9, (4, n)))).astype(np.float16)
        y = (rng.standard_normal((3, n)) * np.exp2(rng.integers(-8, 9, (3, n)))).astype(np.float16)
        xb, yb = x.view(np.uint8), y.view(np.uint8)
        halves = CUDA_W32.replace(name="halves32", fold="halves")
        a = vec_dot(xb, "f16", yb, "f16", n, CUDA_W32)
        b = vec_dot(xb, "f16", yb, "f16", n, halves)
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_nmse_against_float64():
    """cuda_w32 is a float32 sum with FMA: NMSE below ggml's default 1e-7 against float64 math (f16 pair)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 576)).astype(np.float16)
    y = rng.standard_normal((5, 576)).astype(np.float16)
    got = vec_dot(x.view(np.uint8), "f16", y.view(np.uint8), "f16", 576, "cuda_w32").astype(np.float64)
    exact = x.astype(np.float64) @ y.astype(np.float64).T
    assert np.sum((got - exact) ** 2) / np.sum(exact ** 2) < 1e-7
