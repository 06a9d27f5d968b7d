"""vec_dot kernels against mlaref.reference.ops.vec_dot under the kernel's plan: bit-exact for every pair."""

import importlib

import numpy as np

from mlaref import reference as R
from mlaref.codegen import catalog
from mlaref.codegen import kernels as K

FAMILY = "vec_dot"
ref_vec_dot = importlib.import_module("mlaref.reference.ops.vec_dot").vec_dot


def vec_dot_operands(rng, x_type, y_type, m, n_y, n):
    """x rows (weights) and y rows (activations) as ggml would hold them: quantized with the reference."""
    xf = rng.standard_normal((m, n)).astype(np.float32)
    yf = rng.standard_normal((n_y, n)).astype(np.float32)
    if x_type in ("f32", "f16", "bf16"):
        x = xf.view(np.uint8) if x_type == "f32" else R.quantize(xf, x_type)
        y = yf.view(np.uint8) if y_type == "f32" else R.quantize(yf, y_type)
        return np.ascontiguousarray(x).reshape(m, -1), np.ascontiguousarray(y).reshape(n_y, -1)
    y_variant = "iqk" if y_type.endswith("_x4") else "x86"
    return R.quantize(xf, x_type), R.quantize(yf, y_type, variant=y_variant)


def test_vec_dot(kernel_name, kt, rng):
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    plan = catalog.VEC_DOT_PLANS[k["plan"]]
    element = k["type_x"] in ("f32", "f16", "bf16")
    # element pairs: tile 8*A and its neighbours, odd tails, MLA rows; blocks: 1..7 blocks (odd for the iq4_nl
    # tail, 4-block groups and their tails for the x4 layouts), 192 and 576
    # (super-blocks of 256 for the k-quants: 1..5 of them, and the 7168 of a DeepSeek-V2 hidden row)
    if element:
        sizes = [1, 7, 8, 9, 15, 16, 17, 37, 192, 576]
    elif k["type_y"] == "q8_K":
        sizes = [256, 512, 768, 1024, 1280, 7168]
    else:
        sizes = [32, 64, 96, 128, 160, 224, 192, 576]
    # y row counts: the 4-row tile of the x86 kernels, tile + 1 / tile + 3 (the leftover-row path), and 1
    for n_y in (4, 5, 7, 1):
        for n in sizes if n_y == 4 else sizes[-3:]:
            x, y = vec_dot_operands(rng, k["type_x"], k["type_y"], 3, n_y, n)
            want = ref_vec_dot(x, k["type_x"], y, k["type_y"], n, plan=plan)
            out = kt.Guarded(3, n_y, np.float32)
            K.vec_dot(x, k["type_x"], y, k["type_y"], n, plan=plan, kernel=kernel_name, out=out.array)
            out.check()
            kt.assert_same_bytes(out.array, want, 4, f"{kernel_name} n={n} y rows={n_y}")


def test_vec_dot_threads_and_dispatch(rng):
    x, y = vec_dot_operands(rng, "q8_0", "q8_0_x4", 13, 5, 576)
    base = K.vec_dot(x, "q8_0", y, "q8_0_x4", 576, plan="mlaref_l8a2")
    for t in (2, 3, 8):
        assert np.array_equal(K.vec_dot(x, "q8_0", y, "q8_0_x4", 576, plan="mlaref_l8a2", n_threads=t), base)
    assert np.array_equal(base, ref_vec_dot(x, "q8_0", y, "q8_0_x4", 576, plan="mlaref_l8a2"))
