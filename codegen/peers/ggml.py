"""The executable peer: upstream ggml's own C, reached through the optional ``ggml-python`` package.

Everything here is a thin ctypes call with the buffers prepared in NumPy; it is used by the tests (as an
oracle), the benchmarks (as the speed to beat) and ``mlaref conform``. ``available()`` says whether the
package imports; callers skip with ``unavailable_reason()`` when it does not.
"""

from __future__ import annotations

import ctypes
import functools
from types import MappingProxyType

import numpy as np

from mlaref.codegen import cpu
from mlaref.codegen.peers import build as peer_build
from mlaref.reference.builds import GgmlBuild
from mlaref.reference.types import registry

# enum ggml_type of every registered format upstream ggml has (the format registry's numbers; read-only)
GGML_TYPE = MappingProxyType({name: fmt.ggml_type for name, fmt in sorted(registry().items()) if fmt.upstream})


@functools.cache
def _module():
    try:
        from ggml import ggml as g
    except Exception as exc:  # ImportError, or OSError when the shared library fails to load
        return None, f"ggml-python is not usable here ({type(exc).__name__}: {exc}); install mlaref[ggml]"
    # The CPU back-end fills its f16 -> f32 table here; without it its kernels read zeros for every f16
    # scale (ggml-cpu.c: ggml_cpu_init). Idempotent.
    g.ggml_cpu_init()
    return g, ""


def available() -> bool:
    return _module()[0] is not None


def unavailable_reason() -> str:
    return _module()[1]


# ggml_cpu_has_<name>() -> the builds.FEATURES it stands for (ggml-cpu.c: each returns whether the macro was set
# when the CPU back-end was compiled, not what this CPU can do).
_HAS = {"sse3": ("sse3",), "ssse3": ("ssse3",), "avx": ("avx",), "avx2": ("avx2",), "fma": ("fma",),
        "f16c": ("f16c",), "bmi2": ("bmi2",), "avx512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
        "avx512_vnni": ("avx512_vnni",), "avx512_bf16": ("avx512_bf16",), "llamafile": ("llamafile",)}


@functools.cache
def build():
    """The :class:`mlaref.reference.builds.GgmlBuild` of the loaded library: the features it was *compiled* with,
    read from its ``ggml_cpu_has_*`` (never from this CPU), and its tuning.

    A library built by ``mlaref peer build`` carries ``lib/mlaref-build.json`` (level, tuning ``generic``). Any
    other is taken as ggml-python's default, a native build (``GGML_NATIVE=ON``) made on this machine: its tuning
    is GCC's ``-mtune`` for ``-march=native`` here, and AVX512-FP16 (which ggml does not report) is read from the
    CPU. ``sse4_2`` is not reported either; every level that has AVX was compiled with it."""
    import json
    import pathlib



    g = lib()
    feats = set()
    for name, stands_for in _HAS.items():
        fn = getattr(g, f"ggml_cpu_has_{name}", None)
        if fn is not None and fn():
            feats.update(stands_for)
    if "avx" in feats:
        feats.add("sse4_2")
    record = pathlib.Path(g.__file__).parent / "lib" / "mlaref-build.json"
    if record.exists():
        info = json.loads(record.read_text())
        tune = info.get("tune", "generic")
        return GgmlBuild(frozenset(feats), tune, info["level"] if tune == "generic" else f"{info['level']}/{tune}")
    if "avx512f" in feats and "avx512_fp16" in cpu.features():
        feats.add("avx512_fp16")
    tune = peer_build.native_tune()
    return GgmlBuild(frozenset(feats), tune, f"native/{tune}")


def vec_dot_plan() -> str:
    """The reduction plan (``mlaref.reference.plan``) that the loaded library's ``vec_dot`` follows:
    ``build().vec_dot_plan`` (see :mod:`mlaref.reference.builds`)."""
    return build().vec_dot_plan


def lib():
    g, reason = _module()
    if g is None:
        raise RuntimeError(reason)
    return g


def ggml_type(name: str) -> int:
    if name not in GGML_TYPE:
        raise ValueError(f"ggml has no type {name!r} (known to the peer: {', '.join(GGML_TYPE)})")
    return GGML_TYPE[name]


def _f32_ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def _row_bytes(name: str, n: int) -> int:
    g = lib()
    return int(g.ggml_row_size(ggml_type(name), n))


def quantize_chunk(name: str, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """``ggml_quantize_chunk`` on float32 rows ``(n_rows, n)`` -> uint8 ``(n_rows, row_bytes)``."""
    g = lib()
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_rows, n = x.shape
    out = np.zeros((n_rows, _row_bytes(name, n)), dtype=np.uint8)
    im = None if imatrix is None else _f32_ptr(np.ascontiguousarray(imatrix, dtype=np.float32))
    g.ggml_quantize_chunk(ggml_type(name), _f32_ptr(x), out.ctypes.data, 0, n_rows, n, im)
    return out


def from_float_ref(name: str, x: np.ndarray) -> np.ndarray:
    """``type_traits[type].from_float_ref`` (``quantize_row_<type>_ref``) applied row by row."""
    g = lib()
    fn = g.ggml_get_type_traits(ggml_type(name)).contents.from_float_ref
    return _rowwise(name, x, fn)


def from_float(name: str, x: np.ndarray) -> np.ndarray:
    """The CPU back-end's ``type_traits_cpu[type].from_float`` applied row by row."""
    g = lib()
    fn = g.ggml_get_type_traits_cpu(ggml_type(name)).contents.from_float
    return _rowwise(name, x, fn)


def _rowwise(name, x, fn):
    if not fn:
        raise NotImplementedError(f"ggml has no such conversion for {name}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_rows, n = x.shape
    out = np.zeros((n_rows, _row_bytes(name, n)), dtype=np.uint8)
    for r in range(n_rows):
        fn(_f32_ptr(x[r]), out[r].ctypes.data, n)
    return out


def to_float(name: str, data: np.ndarray, n: int) -> np.ndarray:
    """``type_traits[type].to_float`` on uint8 rows ``(n_rows, row_bytes)`` of ``n`` values each."""
    g = lib()
    fn = g.ggml_get_type_traits(ggml_type(name)).contents.to_float
    if not fn:
        raise NotImplementedError(f"ggml has no to_float for {name}")
    data = np.ascontiguousarray(data, dtype=np.uint8)
    out = np.zeros((data.shape[0], n), dtype=np.float32)
    for r in range(data.shape[0]):
        fn(data[r].ctypes.data, _f32_ptr(out[r]), n)
    return out


def vec_dot(name: str, x: np.ndarray, y: np.ndarray, n: int) -> np.float32:
    """The CPU back-end's ``vec_dot`` for ``name`` on one row of ``name`` and one row of its vec_dot_type."""
    g = lib()
    traits = g.ggml_get_type_traits_cpu(ggml_type(name)).contents
    x = np.ascontiguousarray(x, dtype=np.uint8)
    y = np.ascontiguousarray(y, dtype=np.uint8)
    s = np.zeros(1, dtype=np.float32)
    traits.vec_dot(n, _f32_ptr(s), 0, x.ctypes.data, 0, y.ctypes.data, 0, 1)
    return s[0]


def vec_dot_rows(name: str, X: np.ndarray, Y: np.ndarray, n: int) -> np.ndarray:
    """:func:`vec_dot` of every row of ``X`` (uint8 ``(M, row_bytes)`` of ``name``) with every row of ``Y`` (its
    vec_dot_type) -> float32 ``(M, N)``: one call of a child process (``peer_build.call``) for a whole batch."""
    X = np.asarray(X, dtype=np.uint8)
    Y = np.asarray(Y, dtype=np.uint8)
    out = np.empty((X.shape[0], Y.shape[0]), dtype=np.float32)
    for i in range(X.shape[0]):
        for j in range(Y.shape[0]):
            out[i, j] = vec_dot(name, X[i], Y[j], n)
    return out


def vec_dot_type(name: str) -> int:
    g = lib()
    return int(g.ggml_get_type_traits_cpu(ggml_type(name)).contents.vec_dot_type)


def symbol(name: str):
    """An exported C function of ggml's libraries by its symbol name (e.g. ``quantize_row_q8_K_ref``)."""
    try:
        return getattr(lib().lib, name)
    except AttributeError:
        raise NotImplementedError(f"ggml exports no function {name!r}") from None


def quantize_row_symbol(func: str, name: str, x: np.ndarray, fill: int = 0) -> np.ndarray:
    """Call the exported row quantizer ``func`` (``void f(const float *, void *, int64_t)``) row by row.

    The output rows of type ``name`` are pre-filled with the byte ``fill``, so callers can see which bytes
    the C code leaves unwritten (e.g. ``quantize_row_q8_K_ref``'s bsums of all-zero blocks).
    """
    fn = symbol(func)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_rows, n = x.shape
    out = np.full((n_rows, _row_bytes(name, n)), fill, dtype=np.uint8)
    for r in range(n_rows):
        fn(_f32_ptr(x[r]), ctypes.c_void_p(out[r].ctypes.data), ctypes.c_int64(n))
    return out


def dequantize_row_symbol(func: str, data: np.ndarray, n: int) -> np.ndarray:
    """Call the exported row dequantizer ``func`` (``void f(const void *, float *, int64_t)``) row by row."""
    fn = symbol(func)
    data = np.ascontiguousarray(data, dtype=np.uint8)
    out = np.zeros((data.shape[0], n), dtype=np.float32)
    for r in range(data.shape[0]):
        fn(ctypes.c_void_p(data[r].ctypes.data), _f32_ptr(out[r]), ctypes.c_int64(n))
    return out
