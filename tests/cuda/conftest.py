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


class ReachedC(Exception):
    """Raised by the tripwire: the call passed every Python check and would have loaded a kernel."""


@pytest.fixture
def tripwire(monkeypatch):
    """``build.load`` (the only way to a kernel's host entry) raises :class:`ReachedC`, and the GPU probe says
    "present": a call that passes every check reaches the tripwire, one that does not raises TypeError /
    ValueError first. The fixture's value is the exception class, for ``pytest.raises(tripwire)``."""
    def load(*a, **k):
        raise ReachedC

    monkeypatch.setattr(cuda_build, "load", load)
    monkeypatch.setattr(cuda_build, "gpu_present", lambda: True)
    return ReachedC
