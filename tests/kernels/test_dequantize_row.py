"""dequantize_row kernels against mlaref.reference.dequantize: bit-exact on every size class, strided rows."""

import numpy as np

from mlaref import reference as R
from mlaref.codegen import kernels as K

FAMILY = "dequantize_row"


def test_dequantize_row(kernel_name, kt, rng):
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    fmt = kt.require_reference(k["type_x"])
    n_rows = 3
    for n in kt.row_sizes(fmt.block_size):
        nb = n // fmt.block_size
        blocks = fmt.random_blocks(rng, n_rows * nb).view(np.uint8).reshape(n_rows, nb * fmt.type_size)
        # strided input rows: every row followed by 5 unrelated bytes
        big = rng.integers(0, 256, size=(n_rows, nb * fmt.type_size + 5), dtype=np.uint8)
        big[:, : nb * fmt.type_size] = blocks
        data = big[:, : nb * fmt.type_size]
        want = R.dequantize(np.ascontiguousarray(data), fmt.name)
        out = kt.Guarded(n_rows, n, np.float32)
        got = K.dequantize(data, fmt.name, kernel=kernel_name, out=out.array)
        assert got is out.array
        out.check()
        kt.assert_same_bytes(out.array, want, 4 * fmt.block_size, f"{kernel_name} n={n}")


def test_every_half_widens_exactly(kt):
    """All 65536 f16 bit patterns (NaN payloads, subnormals, Inf) through every native f16 dequantizer."""
    from mlaref.codegen import cpu

    h = np.arange(65536, dtype=np.uint16).view(np.uint8).reshape(4, -1)
    want = R.dequantize(h, "f16")
    ran = 0
    for name, k in kt.manifest_kernels("dequantize_row").items():
        if k["type_x"] == "f16" and cpu.supported(k["isa"]):
            kt.assert_same_bytes(K.dequantize(h, "f16", kernel=name), want, 4, name)
            ran += 1
    assert ran >= 1
