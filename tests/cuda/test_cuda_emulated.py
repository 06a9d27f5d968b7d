"""The CUDA kernels' sources run on the CPU: every cuda-check case against the reference, before any GPU run.

Each family's translation unit (``build.source``) is compiled by the host C++ compiler against ``emu/`` (a CPU
stand-in for the CUDA runtime and intrinsics: threads of a block as OS threads with real barriers, warp shuffles
through a buffer, each intrinsic its IEEE operation; see emu/cuda_runtime.h), with ``kernel<<<grid, block>>>(...)``
rewritten to ``mla_emu_launch(grid, block, kernel, ...)``. The wrappers of codegen/cuda/kernels.py then call these
libraries through the same signatures, and the cases of codegen/cuda/cases.py compare bytes with the reference.

This proves the sources' indexing, strides, barriers and orders; it cannot prove nvcc's code or the GPU (the first
H100 run's q8_0 scale bytes, docs/cuda.md, would have passed here). tests/cuda/test_cuda_gpu.py does that on a GPU.
"""

import re
import shutil
import subprocess

import pytest

from mlaref.codegen import catalog
from mlaref.codegen.cuda import build as cuda_build
from mlaref.codegen.cuda import cases

EMU = __import__("pathlib").Path(__file__).resolve().parent / "emu"
_LAUNCH = re.compile(r"(\w+(?:<\w+>)?)<<<(.*), ([^,]*?)>>>\(")


def emulated_source(family: str) -> str:
    """The family's translation unit with every launch rewritten for the emulator."""
    src = cuda_build.source(family)
    out, n = _LAUNCH.subn(r"mla_emu_launch(\2, \3, \1, ", src)
    assert "<<<" not in out and n >= len([s for s in catalog.cuda_catalog() if s.family == family]), family
    return out


def build_emulated(cxx: str, tmp) -> dict:
    """The emulated library of every CUDA family, built in ``tmp``: family -> ``build.Library``."""
    libs = {}
    for fam in cuda_build.families():
        cu = tmp / f"{fam}.cc"
        cu.write_text(emulated_source(fam))
        so = tmp / f"libemu_{fam}.so"
        r = subprocess.run([cxx, "-std=c++20", "-O1", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC",
                            "-pthread", f"-I{EMU}", "-w", str(cu), "-o", str(so)], capture_output=True, text=True)
        assert r.returncode == 0, f"{fam}: {r.stderr[-3000:]}"
        sigs = [sig for s in catalog.cuda_catalog() if s.family == fam for sig in (s.signature(), s.signature(True))]
        libs[fam] = cuda_build.Library(so, sigs)
    return libs


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """Load the emulated library of each family (built once per test module) in place of the nvcc one."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler (g++ / c++) to build the emulated kernels")
    return build_emulated(cxx, tmp_path_factory.mktemp("cuda_emu"))


@pytest.fixture
def on_cpu(emulated, monkeypatch):
    monkeypatch.setattr(cuda_build, "load", lambda family, isa="sm90": emulated[family])
    monkeypatch.setattr(cuda_build, "gpu_present", lambda: True)


CASES = cases.cases(seed=11)
# the quick set: every flash-attention case and the first case of every other kernel. The #253 composition (about
# a minute emulated: a 256 x 256 mul_mat with a warp butterfly per output) is left to test_cuda_fa.py's CPU
# stand-ins and to the GPU; its kernels' sources are each covered here.
_QUICK = [i for i, (n, label, _) in enumerate(CASES) if "flash_attn_ext" in n and not label.startswith("#253")]
_QUICK += [next(i for i, (n, _, _) in enumerate(CASES) if n == s.name) for s in catalog.cuda_catalog()
           if s.family != "flash_attn_ext"]


@pytest.mark.parametrize("index", sorted(set(_QUICK)), ids=[f"{CASES[i][0]}[{CASES[i][1]}]"
                                                            for i in sorted(set(_QUICK))])
def test_the_sources_compute_the_reference_on_the_cpu(on_cpu, index):
    name, label, run = CASES[index]
    assert run() == "", f"{name} [{label}]"


if __name__ == "__main__":  # every cuda-check case, emulated: python tests/cuda/test_cuda_emulated.py (a few minutes)
    import tempfile
    import time

    built = build_emulated(shutil.which("g++") or "c++", __import__("pathlib").Path(tempfile.mkdtemp()))
    cuda_build.load = lambda family, isa="sm90": built[family]
    cuda_build.gpu_present = lambda: True
    n_ok = 0
    for name, label, run in CASES:
        t0 = time.perf_counter()
        detail = run()
        n_ok += not detail
        print(f"{'ok  ' if not detail else 'FAIL'} {name} [{label}] {time.perf_counter() - t0:.1f} s {detail}",
              flush=True)
    print(f"emulated: {n_ok} of {len(CASES)} cases bit-exact")
    raise SystemExit(0 if n_ok == len(CASES) else 1)
