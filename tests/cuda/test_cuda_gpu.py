"""Every CUDA kernel, run on a GPU, is bit-exact against the reference (codegen/cuda/cases.py: strided inputs,
guard bytes around every output). Skips with the reason "no CUDA GPU" elsewhere."""

import pytest

from mlaref.codegen.cuda import cases

CASES = cases.cases(seed=11)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{n}[{label}]" for n, label, _ in CASES])
def test_bit_exact_on_the_gpu(gpu, index):
    name, label, run = CASES[index]
    detail = run()
    assert detail == "", f"{name} [{label}]: {detail}"
