"""Argument checks of the CUDA wrappers: every bad input raises a clear Python exception before a pointer reaches C.

``build.load`` (the only way to a kernel's host entry) is replaced by a tripwire, and the GPU probe by "present", so
a call that passes every check reaches the tripwire and one that does not raises TypeError / ValueError first."""

import numpy as np
import pytest

from mlaref.codegen.cuda import build as cuda_build
from mlaref.codegen.cuda import kernels
from mlaref.reference.tensor import Tensor




Q8 = np.zeros((3, 68), np.uint8)  # 3 q8_0 rows of 64 values
F16 = np.zeros((2, 128), np.uint8)  # 2 f16 rows of 64 values


@pytest.mark.parametrize("call,exc,match", [
    (lambda: kernels.mul_mat(Q8, "q8_0", Q8, "q8_0", 64), None, None),
    (lambda: kernels.mul_mat(Q8, "q8_0", F16, "f16", 64), ValueError, "vec_dot_type pairs"),
    (lambda: kernels.mul_mat(Q8, "q4_0", Q8, "q8_0", 64), ValueError, "vec_dot_type pairs"),
    (lambda: kernels.mul_mat(Q8, "q8_0", Q8, "q8_0", 48), ValueError, "multiple of 32"),
    (lambda: kernels.mul_mat(Q8, "q8_0", Q8, "q8_0", 0), ValueError, "positive int"),
    (lambda: kernels.mul_mat(Q8, "q8_0", Q8, "q8_0", True), ValueError, "positive int"),
    (lambda: kernels.mul_mat(Q8[:, :34], "q8_0", Q8, "q8_0", 64), ValueError, "rows must hold 68 bytes"),
    (lambda: kernels.mul_mat(Q8.astype(np.int8), "q8_0", Q8, "q8_0", 64), TypeError, "dtype must be uint8"),
    (lambda: kernels.mul_mat(Q8[None], "q8_0", Q8, "q8_0", 64), ValueError, "2-D"),
    (lambda: kernels.mul_mat(Q8, "q8_0", Q8, "q8_0", 64, plan="mlaref_l8a1"), ValueError, "plan"),
    (lambda: kernels.mul_mat(Q8, "q8_0", Q8, "q8_0", 64, out=np.zeros((3, 3), np.float64)), TypeError, "float32"),
    (lambda: kernels.mul_mat(Q8, "q8_0", Q8, "q8_0", 64, out=np.zeros((3, 2), np.float32)), ValueError, "shape"),
    (lambda: kernels.mul_mat(Q8, "q8_0", Q8, "q8_0", 64, iters=-1), ValueError, "iters"),
    (lambda: kernels.mul_mat(Q8, "q8_0", Q8, "q8_0", 64, kernel="mlaref_mul_mat_f16_f16__sm90_w32"), ValueError,
     "computes mul_mat f16"),
    (lambda: kernels.convert(np.zeros((2, 64), np.float32), "f32", "q8_0"), None, None),
    (lambda: kernels.convert(F16, "f16", "q8_0"), None, None),
    (lambda: kernels.convert(np.zeros((2, 48), np.float32), "f32", "q8_0"), ValueError, "block size 32"),
    (lambda: kernels.convert(np.zeros((2, 64), np.float32), "f32", "q8_1"), ValueError, "CUDA converts"),
    (lambda: kernels.convert(np.zeros((2, 64), np.float32), "f32", "q8_0", variant="ref"), ValueError, "x86"),
    (lambda: kernels.convert(np.zeros((2, 64), np.float16), "f16", "q8_0"), TypeError, "uint8"),
    (lambda: kernels.convert(np.zeros((2, 127), np.uint8), "f16", "f16"), ValueError, "CUDA converts"),
    (lambda: kernels.convert(np.zeros((2, 127), np.uint8), "bf16", "f16"), ValueError, "whole bf16 values"),
    (lambda: kernels.convert(np.zeros((2, 64), np.float32), "f32", "q8_0", out=np.zeros((2, 68), np.uint8)[:, ::-1]),
     ValueError, "negative strides"),
])
def test_checks_before_c(tripwire, call, exc, match):
    if exc is None:
        with pytest.raises(tripwire):  # a valid call passes every check and reaches the kernel
            call()
    else:
        with pytest.raises(exc, match=match):
            call()


def test_outputs_must_not_overlap_inputs(tripwire):
    x = np.zeros((2, 64 + 68), np.uint8)
    with pytest.raises(ValueError, match="overlaps"):
        kernels.convert(x[:, :128].view(np.uint8), "f16", "q8_0", out=x[:, 64:])
    a = Tensor.zeros("f16", (64, 4))
    with pytest.raises(ValueError, match="overlaps"):
        kernels.cpy(a, a)


def test_tensor_ops_check_types_and_shapes(tripwire):
    a, b = Tensor.zeros("f16", (128, 4, 2)), Tensor.zeros("f16", (64, 4, 2))
    with pytest.raises(tripwire):
        kernels.concat(a, b, 0)
    with pytest.raises(ValueError, match="dim 0"):
        kernels.concat(a, b, 1)
    with pytest.raises(ValueError, match="one type"):
        kernels.concat(a, Tensor.zeros("bf16", (64, 4, 2)), 0)
    with pytest.raises(ValueError, match="one type"):
        kernels.concat(a, Tensor.zeros("f16", (64, 3, 2)), 0)
    with pytest.raises(TypeError, match="Tensor"):
        kernels.concat(np.zeros(4), b, 0)
    with pytest.raises(tripwire):
        kernels.repeat(Tensor.zeros("q8_0", (64, 4, 1)), (64, 4, 16))
    with pytest.raises(ValueError, match="multiples"):
        kernels.repeat(b, (64, 4, 3))
    with pytest.raises(ValueError, match="whole"):
        kernels.repeat(Tensor.zeros("q8_0", (64, 4)), (128, 4))
    with pytest.raises(ValueError, match="one type and shape"):
        kernels.cpy(a, Tensor.zeros("f16", (64, 4, 2)))
    ro = Tensor.zeros("f16", (128, 4, 2))
    ro.data.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        kernels.cpy(a, ro)
    with pytest.raises(ValueError, match="packed"):
        kernels.cpy(a.view((64, 4, 2), (4, 256, 1024), 0), Tensor.zeros("f16", (64, 4, 2)))


def test_without_a_gpu_a_valid_call_says_why():
    if cuda_build.gpu_present():
        pytest.skip("a CUDA GPU is present here")
    with pytest.raises(kernels.CudaUnavailable, match="no CUDA GPU"):
        kernels.mul_mat(Q8, "q8_0", Q8, "q8_0", 64)
