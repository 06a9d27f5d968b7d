"""quantize_row kernels against mlaref.reference.quantize of the same variant: bit-exact, guarded, strided."""

import numpy as np

from mlaref import reference as R
from mlaref.codegen import cpu
from mlaref.codegen import kernels as K

FAMILY = "quantize_row"


def test_quantize_row(kernel_name, kt, rng):
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    fmt = kt.require_reference(k["type_x"])
    variant = kt.variant_for(fmt, k["plan"])
    n_rows = 6
    for n in kt.row_sizes(fmt.block_size):
        x_big = np.full((n_rows, n + 3), np.nan, dtype=np.float32)
        x_big[:, :n] = kt.quant_inputs(rng, n_rows, n)
        x = x_big[:, :n]  # strided rows; the NaN padding must never be read
        want = R.quantize(np.ascontiguousarray(x), fmt.name, variant=variant)
        out = kt.Guarded(n_rows, want.shape[1], np.uint8)
        K.quantize(x, fmt.name, variant=variant, kernel=kernel_name, out=out.array)
        out.check()
        kt.assert_same_bytes(out.array, want, fmt.type_size, f"{kernel_name} n={n}")


def test_f16_bf16_special_values(kt):
    """f16/bf16 quantizers on NaNs with payloads, infinities, overflow and subnormal boundaries, ties."""
    from mlaref.reference import fp

    bits = np.array([
        0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FBFFFFF, 0xFFFFE000, 0x7F812345,  # NaNs (quiet, signalling, payloads)
        0x7F800000, 0xFF800000, 0x477FEFFF, 0x477FF000, 0x477FE000, 0xC77FF000,  # inf, 65519.99.., 65520, 65504
        0x33000000, 0x33000001, 0x32FFFFFF, 0x387FE000, 0x38800000, 0x387FF000,  # 2^-25 ties, f16 subnormal edges
        0x00000001, 0x80000001, 0x00000000, 0x80000000, 0x3F801000, 0x3F803000,  # f32 subnormals, zeros, RNE ties
        0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x3F7FFFFF, 0x00800000, 0x807FFFFF,
    ], dtype=np.uint32)
    x = np.tile(fp.bits_f32(bits), 3).reshape(3, -1)
    names = [n for n, k in kt.manifest_kernels("quantize_row").items() if k["type_x"] in ("f16", "bf16")]
    assert names
    ran = 0
    for name in names:
        k = kt.manifest_kernels()[name]
        if not cpu.supported(k["isa"]):
            continue
        ran += 1
        fmt = R.get_type(k["type_x"])
        variant = kt.variant_for(fmt, k["plan"])
        want = R.quantize(x, fmt.name, variant=variant)
        got = K.quantize(x, fmt.name, variant=variant, kernel=name)
        kt.assert_same_bytes(got, want, 2, name)
    assert ran >= 3  # f16 ref, f16 x86, bf16 ref at least on scalar
