"""NEON kernels, cross-compiled with aarch64-linux-gnu-gcc and run under qemu-aarch64 through codegen/neon_driver.c.

A NEON kernel counts as verified only when it ran: these tests skip (naming the missing tool) without the cross
compiler or qemu, and CI installs both. The same checks as in-process: bit-exact against the reference, poisoned
outputs, gaps between rows and guard bytes unchanged.
"""

import numpy as np
import pytest

from mlaref import reference as R
from mlaref.codegen import build

# the families the row driver runs; mul_mat and flash_attn_ext have their own file (test_neon_mm.py)
FAMILY = ("dequantize_row", "quantize_row", "convert_rows", "vec_dot")
NATIVE_ONLY = False
ISAS = ("neon", "neondot")



def test_neon_kernel(kernel_name, driver, kt, rng):
    k = kt.manifest_kernels()[kernel_name]
    family = k["family"]
    if family == "dequantize_row":
        fmt = kt.require_reference(k["type_x"])
        block, out_fmt = fmt.block_size, None
    elif family == "quantize_row":
        fmt = out_fmt = kt.require_reference(k["type_x"])
        block = fmt.block_size
    elif family == "convert_rows":
        fmt = kt.require_reference(k["type_x"])
        out_fmt = kt.require_reference(k["type_y"])
        block = max(fmt.block_size, out_fmt.block_size)
    elif family == "vec_dot":
        _neon_vec_dot(kernel_name, k, kt, rng)
        return
    else:
        pytest.skip(f"the qemu driver runs row kernels and vec_dot; {family} has no NEON variant")
    n_rows = 5
    for n in kt.row_sizes(block):
        if family == "dequantize_row":
            nb = n // fmt.block_size
            data = fmt.random_blocks(rng, n_rows * nb).view(np.uint8).reshape(n_rows, -1)
            want = R.dequantize(data, fmt.name)
            inp, xs = data.tobytes(), data.shape[1]
            out = kt.Guarded(n_rows, n, np.float32)
            unit = 4 * fmt.block_size
        else:
            x = kt.quant_inputs(rng, n_rows, n)
            variant = kt.variant_for(out_fmt, k["plan"])
            if family == "quantize_row":
                want = R.quantize(x, fmt.name, variant=variant)
                inp, xs = x.tobytes(), 4 * n
            else:
                data = R.quantize(x, fmt.name)
                want = R.quantize(R.dequantize(data, fmt.name), out_fmt.name, variant=variant)
                inp, xs = data.tobytes(), data.shape[1]
            out = kt.Guarded(n_rows, want.shape[1], np.uint8)
            unit = out_fmt.type_size
        after = build.run_cross(kernel_name, inp, out.raw.tobytes(), n_rows, n, xs, out.stride)
        out.raw[...] = np.frombuffer(after, dtype=np.uint8)
        out.check()
        kt.assert_same_bytes(out.array, want, unit, f"{kernel_name} n={n} (qemu-aarch64)")


def _neon_vec_dot(kernel_name, k, kt, rng):
    import importlib

    from mlaref.codegen import catalog

    ref_vec_dot = importlib.import_module("mlaref.reference.ops.vec_dot").vec_dot
    plan = catalog.VEC_DOT_PLANS[k["plan"]]
    element = k["type_x"] in ("f32", "f16", "bf16")
    if element:
        sizes = [1, 7, 8, 9, 17, 37, 576]
    elif k["type_y"] == "q8_K":
        sizes = [256, 512, 768, 1280]
    else:
        sizes = [32, 96, 128, 160, 192, 576]
    for n in sizes:
        xf = rng.standard_normal((3, n)).astype(np.float32)
        yf = rng.standard_normal((4, n)).astype(np.float32)
        if element:
            enc = (lambda a: a.view(np.uint8)) if k["type_x"] == "f32" else (lambda a: R.quantize(a, k["type_x"]))
            x, y = enc(xf).reshape(3, -1), enc(yf).reshape(4, -1)
        else:
            x = R.quantize(xf, k["type_x"])
            y = R.quantize(yf, k["type_y"], variant="iqk" if k["type_y"].endswith("_x4") else "x86")
        want = ref_vec_dot(x, k["type_x"], y, k["type_y"], n, plan=plan)
        out = kt.Guarded(3, 4, np.float32)
        inp = x.tobytes() + y.tobytes()
        after = build.run_cross(kernel_name, inp, out.raw.tobytes(), 3, n, x.shape[1], out.stride,
                                extra=(4, y.shape[1], x.nbytes))
        out.raw[...] = np.frombuffer(after, dtype=np.uint8)
        out.check()
        kt.assert_same_bytes(out.array, want, 4, f"{kernel_name} n={n} (qemu-aarch64)")


def test_neon_f16_special_values_and_every_half(driver):
    """vcvt_f16_f32 / vcvt_f32_f16 on qemu follow the F16C rules: NaN payloads, Inf, ties, subnormals; every one
    of the 65536 halves widens exactly."""
    from mlaref.reference import fp

    bits = np.array([0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FBFFFFF, 0xFFFFE000, 0x7F812345, 0x7F800000, 0xFF800000,
                     0x477FEFFF, 0x477FF000, 0x477FE000, 0xC77FF000, 0x33000000, 0x33000001, 0x32FFFFFF, 0x387FE000,
                     0x38800000, 0x387FF000, 0x00000001, 0x80000001, 0x00000000, 0x80000000, 0x3F801000, 0x3F803000],
                    dtype=np.uint32)
    x = fp.bits_f32(bits).reshape(1, -1)
    for plan in ("x86", "ref"):
        want = R.quantize(x, "f16", variant=plan)
        out = build.run_cross(f"mlaref_quantize_row_f16__neon_{plan}", x.tobytes(), b"\0" * want.nbytes, 1,
                              x.shape[1], x.nbytes, want.nbytes)
        assert np.array_equal(np.frombuffer(out, np.uint8), want.reshape(-1)), plan
    h = np.arange(65536, dtype=np.uint16).reshape(1, -1)
    want = R.dequantize(h.view(np.uint8), "f16")
    out = build.run_cross("mlaref_dequantize_row_f16__neon_ref", h.tobytes(), b"\0" * want.nbytes, 1, 65536, h.nbytes,
                          want.nbytes)
    assert np.array_equal(np.frombuffer(out, np.uint32), want.view(np.uint32).reshape(-1))
