"""The C thread pool (codegen/kernels/pool.c) behind n_threads > 1: every job kind runs the function it names with the
arguments given, more jobs than cores still give the reference bytes, and bad job arrays are refused in Python
or by the C side before anything runs. Concurrent callers: tests/kernels/test_overhead.py."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from mlaref import reference as R
from mlaref.codegen import kernels as K
from mlaref.codegen.kernels import pool as pool


def _kernel(family, type_x, type_y, plan):
    spec, fn, ffi = K.resolve(family, type_x, type_y, plan)
    return K.address(ffi, fn)


@pytest.fixture
def x(rng):
    return rng.standard_normal((12, 256)).astype(np.float32)


@pytest.mark.parametrize("n_jobs", [1, 2, 3, 7])
def test_quantize_jobs_give_the_reference_bytes(x, n_jobs):
    want = R.quantize(x, "q8_0")
    out = np.zeros_like(want)
    fa = _kernel("quantize_row", "q8_0", None, "ref")
    b = [len(x) * k // n_jobs for k in range(n_jobs + 1)]
    pool.run([pool.job("quantize", fa, pool.address(x) + r0 * x.strides[0], pool.address(out) + r0 * out.strides[0],
                       r1 - r0, 256, x.strides[0], out.strides[0]) for r0, r1 in zip(b, b[1:])])
    assert np.array_equal(out, want)


def test_dequantize_convert_and_vec_dot_jobs(x):
    data = R.quantize(x, "q4_0")
    y = np.full(x.shape, np.nan, np.float32)
    fa = _kernel("dequantize_row", "q4_0", None, "ref")
    pool.run([pool.job("dequantize", fa, pool.address(data) + r0 * data.strides[0], pool.address(y) + r0 * y.strides[0],
                       6, 256, data.strides[0], y.strides[0]) for r0 in (0, 6)])
    assert np.array_equal(y.view(np.uint32), R.dequantize(data, "q4_0").view(np.uint32))

    f16 = R.quantize(x, "f16")
    want = R.quantize(R.dequantize(f16, "f16"), "q8_0")
    out = np.zeros_like(want)
    scratch = np.empty((2, 256), np.float32)
    fa = _kernel("convert_rows", "f16", "q8_0", "ref")
    pool.run([pool.job("convert", fa, pool.address(f16) + r0 * f16.strides[0], pool.address(out) + r0 * out.strides[0],
                       pool.address(scratch) + k * 1024, 6, 256, f16.strides[0], out.strides[0])
              for k, r0 in enumerate((0, 6))])
    assert np.array_equal(out, want)

    yq = R.quantize(x[:3], "q8_0", variant="x86")
    dots = np.full((12, 3), np.nan, np.float32)
    fa = _kernel("vec_dot", "q4_0", "q8_0", "l8a2")
    pool.run([pool.job("vec_dot", fa, pool.address(data) + r0 * data.strides[0], data.strides[0], 6,
                       pool.address(yq), yq.strides[0], 3, 256, pool.address(dots) + r0 * dots.strides[0],
                       dots.strides[0]) for r0 in (0, 6)])
    want = K.vec_dot(data, "q4_0", yq, "q8_0", 256, plan="mlaref_l8a2")
    assert np.array_equal(dots.view(np.uint32), want.view(np.uint32))


def test_memcpy_job(rng):
    src = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    dst = np.zeros_like(src)
    pool.run([pool.job("memcpy", 0, pool.address(dst) + h, pool.address(src) + h, 1 << 15) for h in (0, 1 << 15)])
    assert np.array_equal(dst, src)


def test_bad_job_arrays_are_refused():
    with pytest.raises(ValueError, match="takes 6 arguments"):
        pool.job("quantize", 0, 1, 2)
    with pytest.raises(KeyError):
        pool.job("sort", 0)
    with pytest.raises(ValueError, match=f"rows of {pool.WORDS}"):
        pool.run(np.zeros((2, 5), np.int64))
    with pytest.raises(ValueError, match="1..256 rows"):
        pool.run(np.zeros((257, pool.WORDS), np.int64))
    with pytest.raises(ValueError, match="int64"):
        pool.run(np.zeros((1, pool.WORDS), np.int32))
    bad = np.zeros((2, pool.WORDS), np.int64)
    bad[:, 0] = (1, 99)  # the C side checks every kind before running any job
    with pytest.raises(ValueError, match="unknown kind"):
        pool.run(bad)
    with pytest.raises(ValueError, match="unknown kind"):
        pool.run(np.zeros((1, pool.WORDS), np.int64))


def test_ggml_from_and_to_float_jobs(ggml, x):
    """The peer kinds call ggml's from_float / to_float with (x, y, k) as ggml declares them."""
    traits = ggml.lib().ggml_get_type_traits_cpu(ggml.ggml_type("q8_0")).contents
    want = R.quantize(x, "q8_0", variant="x86")
    out = np.zeros_like(want)
    addr = ctypes.cast(traits.from_float, ctypes.c_void_p).value
    pool.run([pool.job("from_float", addr, pool.address(x) + r0 * x.strides[0], pool.address(out) + r0 * out.strides[0],
                       6 * 256) for r0 in (0, 6)])
    assert np.array_equal(out, want)
    back = np.full(x.shape, np.nan, np.float32)
    to = ggml.lib().ggml_get_type_traits(ggml.ggml_type("q8_0")).contents.to_float
    pool.run([pool.job("to_float", ctypes.cast(to, ctypes.c_void_p).value, pool.address(out), pool.address(back),
                       12 * 256)])
    assert np.array_equal(back.view(np.uint32), R.dequantize(out, "q8_0").view(np.uint32))
