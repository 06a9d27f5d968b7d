"""convert_rows kernels (#253's iqk_quantize_any: to_float then from_float per row) against the reference."""

import numpy as np

from mlaref import reference as R
from mlaref.codegen import kernels as K

FAMILY = "convert_rows"


def test_convert_rows(kernel_name, kt, rng):
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    src = kt.require_reference(k["type_x"])
    dst = kt.require_reference(k["type_y"])
    variant = kt.variant_for(dst, k["plan"])
    src_variant = "ref"
    n_rows = 5
    block = max(src.block_size, dst.block_size)
    for n in kt.row_sizes(block):
        x = kt.quant_inputs(rng, n_rows, n)
        data = R.quantize(x, src.name, variant=src_variant)
        want = R.quantize(R.dequantize(data, src.name), dst.name, variant=variant)
        out = kt.Guarded(n_rows, want.shape[1], np.uint8)
        K.convert(data, src.name, dst.name, variant=variant, kernel=kernel_name, out=out.array, n_threads=2)
        out.check()
        kt.assert_same_bytes(out.array, want, dst.type_size, f"{kernel_name} n={n}")
