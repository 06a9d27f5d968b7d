"""nvcc builds of the CUDA kernels: one shared library per (family, ISA) in a content-addressed cache; ctypes loading.

A family's kernel files (``generated/cuda/<family>/*.cu``) are compiled as **one** translation unit (their
shared helpers are include-guarded), so ``nvcc`` runs once per family. The library's key is the sha256 of

* the family's generated sources (paths and bytes), or ``runtime.cu`` for the runtime library,
* ``NVCC_FLAGS`` + the ISA's flags (``-arch=sm_90``),
* the first line of ``nvcc --version`` that names the release.

The library lives at ``<cache>/cuda/libmlaref_<family>_<isa>_<key16>.so``; ``<cache>`` is ``MLAREF_CACHE_DIR``, the
platformdirs user cache dir, or ``~/.cache/mlaref`` where platformdirs is absent (the GPU machine has no pip). A
``fcntl`` lock per library serialises concurrent builders (pytest-xdist workers); the finished file is moved into
place by an atomic rename.

Numerics: ``-fmad=false`` stops nvcc from contracting ``a*b + c`` on its own (it does by default), and the
templates spell every rounding (``__fmul_rn``, ``__fmaf_rn``, ``__fadd_rn``, ``__fdiv_rn``); ``-ftz=false
-prec-div=true -prec-sqrt=true`` keep IEEE behaviour (they are nvcc's defaults without ``--use_fast_math``, spelled
out). nvcc links the CUDA runtime statically, so a library loads without a driver; its calls then return
``cudaErrorInsufficientDriver`` (35) or ``cudaErrorNoDevice`` (100), which :mod:`.kernels` never reaches because it
asks :func:`gpu_present` first.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

from mlaref.codegen import build as _build
from mlaref.codegen import catalog as _catalog
from mlaref.codegen import isa as _isa

__all__ = ["NVCC_FLAGS", "BuildError", "NvccMissing", "nvcc", "nvcc_version", "families", "source", "library_path",
           "build", "build_all", "load", "runtime", "gpu_present", "gpu_status", "RUNTIME"]

NVCC_FLAGS = ("-O3", "-std=c++17", "-fmad=false", "-ftz=false", "-prec-div=true", "-prec-sqrt=true", "-shared",
              "-Xcompiler", "-fPIC")
GENERATED_DIR = pathlib.Path(__file__).resolve().parents[2] / "generated"
RUNTIME = pathlib.Path(__file__).resolve().parent / "runtime.cu"
_RUNTIME_SIGNATURES = (
    "int mlaref_cuda_device_count(int *n);",
    "int mlaref_cuda_device_name(char *buf, int64_t size, int *major, int *minor, int64_t *mem_bytes);",
    "int mlaref_cuda_memcpy_d2d_timed(int64_t bytes, int64_t iters, float *ms);",
)


class BuildError(RuntimeError):
    """nvcc failed; the message holds its output."""


class NvccMissing(BuildError):
    """No nvcc on this machine."""


def nvcc() -> str | None:
    """The nvcc to use: ``MLAREF_NVCC``, else ``nvcc`` on PATH, else ``/usr/local/cuda/bin/nvcc``; None if absent."""
    for cand in (os.environ.get("MLAREF_NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


@functools.cache
def nvcc_version() -> str:
    """The release line of ``nvcc --version`` (``Cuda compilation tools, release 13.0, V13.0.88``), or why not."""
    exe = nvcc()
    if exe is None:
        return "nvcc not found"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = [ln.strip() for ln in out.splitlines() if "release" in ln]
    return lines[0] if lines else "unknown"


def families(isa: str = "sm90") -> tuple[str, ...]:
    """The CUDA families of ``isa`` in the catalog."""
    return tuple(dict.fromkeys(s.family for s in _catalog.cuda_catalog() if s.isa == isa))


def _specs(family: str, isa: str) -> list:
    specs = [s for s in _catalog.cuda_catalog() if s.family == family and s.isa == isa]
    if not specs:
        raise LookupError(f"the CUDA catalog has no {family} kernels for {isa}")
    return specs


def source(family: str, isa: str = "sm90") -> str:
    """The one translation unit of a family: its generated files one after another (``runtime`` -> runtime.cu)."""
    if family == "runtime":
        return RUNTIME.read_text()
    parts = []
    for s in _specs(family, isa):
        try:
            parts.append(f"/* ---- generated/{s.path} ---- */\n" + (GENERATED_DIR / s.path).read_text())
        except FileNotFoundError:
            raise BuildError(f"generated/{s.path} is missing: generated/ is out of date; run "
                             f"`python -m mlaref.codegen.generate`") from None
    return "\n".join(parts)


def _flags(isa: str) -> tuple[str, ...]:
    return NVCC_FLAGS + _isa.get(isa).cflags


def _cache() -> pathlib.Path:
    try:
        base = _build.cache_dir()
    except ImportError:  # no platformdirs (the GPU machine): the XDG default
        base = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "mlaref"
    path = base / "cuda"
    path.mkdir(parents=True, exist_ok=True)
    return path


def library_path(family: str, isa: str = "sm90") -> pathlib.Path:
    """Where the library of (family, isa) lives in the cache (built or not)."""
    h = hashlib.sha256()
    h.update(source(family, isa).encode() + b"\0")
    h.update(" ".join(_flags(isa)).encode() + b"\0")
    h.update(nvcc_version().encode())
    return _cache() / f"libmlaref_{family}_{isa}_{h.hexdigest()[:16]}.so"


@contextlib.contextmanager
def _locked(path: pathlib.Path):
    import fcntl

    with open(str(path) + ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(family: str, isa: str = "sm90") -> pathlib.Path:
    """The library of (family, isa), compiled by nvcc if the cache lacks it; NvccMissing / BuildError otherwise."""
    exe = nvcc()
    if exe is None:
        raise NvccMissing("nvcc not found (set MLAREF_NVCC, put it on PATH, or install the CUDA toolkit)")
    final = library_path(family, isa)
    if final.exists():
        return final
    with _locked(final):
        if final.exists():
            return final
        with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
            src = pathlib.Path(tmp) / f"{family}.cu"
            src.write_text(source(family, isa))
            out = pathlib.Path(tmp) / final.name
            cmd = [exe, *_flags(isa), str(src), "-o", str(out)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if r.returncode != 0:
                raise BuildError(f"nvcc failed for {family}/{isa} ({' '.join(cmd)}):\n{r.stdout[-4000:]}"
                                 f"{r.stderr[-8000:]}")
            os.replace(out, final)
    return final


def build_all(isa: str = "sm90", jobs: int = 1) -> dict[str, pathlib.Path]:
    """Every CUDA family of ``isa`` and the runtime, ``jobs`` nvcc processes at a time: name -> library path."""
    from concurrent.futures import ThreadPoolExecutor

    names = ("runtime",) + families(isa)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(zip(names, pool.map(lambda f: build(f, isa), names)))


def _argtypes(signature: str) -> list:
    params = signature[signature.index("(") + 1: signature.rindex(")")].split(", ")
    return [ctypes.c_void_p if "*" in p else ctypes.c_int64 for p in params]


class Library:
    """A loaded CUDA library: ``fn(name)`` is the ctypes function of an entry with its argument types set."""

    def __init__(self, path: pathlib.Path, signatures):
        self.path = path
        self.dll = ctypes.CDLL(str(path))
        self.dll.mlaref_cuda_error_string.restype = ctypes.c_char_p
        self.dll.mlaref_cuda_error_string.argtypes = [ctypes.c_int]
        self._fns = {}
        for sig in signatures:
            name = sig.split("(")[0].split()[-1]
            fn = getattr(self.dll, name)
            fn.restype, fn.argtypes = ctypes.c_int, _argtypes(sig)
            self._fns[name] = fn

    def fn(self, name: str):
        return self._fns[name]

    def error(self, code: int) -> str:
        return f"CUDA error {code} ({self.dll.mlaref_cuda_error_string(code).decode()})"


@functools.cache
def load(family: str, isa: str = "sm90") -> Library:
    """The loaded library of (family, isa), built first if needed."""
    sigs = [sig for s in _specs(family, isa) for sig in (s.signature(), s.signature(timed=True))]
    return Library(build(family, isa), sigs)


@functools.cache
def runtime() -> Library:
    """The runtime library (device queries, the cudaMemcpy baseline)."""
    return Library(build("runtime"), _RUNTIME_SIGNATURES)


@functools.cache
def gpu_status() -> str:
    """``"ok: <n> device(s)"`` when the CUDA driver finds a GPU, else why not. Never raises: it asks the driver
    library (``libcuda.so.1``) directly, so it works without nvcc and without a built kernel."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return f"no CUDA GPU: the driver library libcuda.so.1 is absent ({exc})"
    try:
        rc = cuda.cuInit(0)
        if rc != 0:
            return f"no CUDA GPU: cuInit failed with CUresult {rc}"
        n = ctypes.c_int(0)
        rc = cuda.cuDeviceGetCount(ctypes.byref(n))
    except (AttributeError, OSError) as exc:
        return f"no CUDA GPU: the driver library is unusable ({exc})"
    if rc != 0 or n.value < 1:
        return f"no CUDA GPU: cuDeviceGetCount returned {rc} with {n.value} devices"
    return f"ok: {n.value} device(s)"


def gpu_present() -> bool:
    """True when a CUDA GPU and its driver are there (see :func:`gpu_status` for the reason when not)."""
    return gpu_status().startswith("ok")
