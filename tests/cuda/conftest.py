"""CUDA test helpers: skips that name what is missing (nvcc to compile, a CUDA GPU to run)."""

import pytest

from mlaref.codegen.cuda import build as cuda_build


@pytest.fixture
def nvcc():
    """The nvcc path; the test skips, naming it, when this machine has none."""
    exe = cuda_build.nvcc()
    if exe is None:
        pytest.skip("nvcc not found (CUDA toolkit absent; set MLAREF_NVCC or put nvcc on PATH)")
    return exe


@pytest.fixture
def gpu(nvcc):
    """Skip with the reason "no CUDA GPU" (and the driver's detail) unless a GPU is there."""
    if not cuda_build.gpu_present():
        pytest.skip(f"no CUDA GPU ({cuda_build.gpu_status()})")
