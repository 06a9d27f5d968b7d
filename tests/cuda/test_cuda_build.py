"""Every CUDA kernel compiles with nvcc for sm_90 (one nvcc call per family, cached by content), and its library
exports both host entries of every kernel. What CI checks without a GPU: a library loads without a driver."""

import ctypes

import pytest

from mlaref.codegen import catalog
from mlaref.codegen.cuda import build as cuda_build


@pytest.mark.parametrize("family", ("runtime",) + cuda_build.families())
def test_family_compiles_and_exports_its_entries(nvcc, family):
    path = cuda_build.build(family)
    assert path.is_file() and path.name.startswith(f"libmlaref_{family}_sm90_")
    assert cuda_build.build(family) == path  # the cache: same content, same file, no second nvcc
    dll = ctypes.CDLL(str(path))  # nvcc links the CUDA runtime statically: loads without a driver
    names = ["mlaref_cuda_error_string"]
    names += [n for s in catalog.cuda_catalog() if s.family == family for n in (s.name, s.name + "_timed")]
    if family == "runtime":
        names += ["mlaref_cuda_device_count", "mlaref_cuda_memcpy_d2d_timed"]
    for n in names:
        assert hasattr(dll, n), f"{path.name} lacks {n}"


def test_the_cache_key_follows_the_sources_and_flags(nvcc, monkeypatch):
    before = cuda_build.library_path("mul_mat")
    monkeypatch.setattr(cuda_build, "NVCC_FLAGS", cuda_build.NVCC_FLAGS + ("-lineinfo",))
    assert cuda_build.library_path("mul_mat") != before
    assert "-fmad=false" in cuda_build.NVCC_FLAGS


def test_the_family_is_one_translation_unit():
    src = cuda_build.source("mul_mat")
    specs = [s for s in catalog.cuda_catalog() if s.family == "mul_mat"]
    assert all(f"generated/{s.path}" in src and f"{s.name}_k" in src for s in specs)
    assert src.count("#ifndef MLA_CUDA_COMMON") == len(specs)  # guarded: defined once per library


def test_gpu_probe_never_raises():
    status = cuda_build.gpu_status()
    assert isinstance(status, str) and (status.startswith("ok") or status.startswith("no CUDA GPU"))
    assert cuda_build.gpu_present() == status.startswith("ok")


def test_nvcc_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cuda_build, "nvcc", lambda: None)
    with pytest.raises(cuda_build.NvccMissing, match="nvcc not found"):
        cuda_build.build("copy_rows")
