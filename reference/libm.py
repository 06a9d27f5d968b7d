"""The C math library through ctypes, vectorised over NumPy float32 arrays: an oracle for the reference.

``fmaf``, ``expf``, ``logf``, ``cosf``, ``sinf``, ``tanhf``, ``sqrtf``, ``roundf`` and ``rintf`` of the
platform's libm (glibc on Linux), called element by element. Each call converts float32 -> C ``float``
-> float32 exactly (a Python float holds any float32 value), so the results are libm's own bits. The cost is
one ctypes call per element, about 0.5 us: 10^6 elements take about half a second.

These functions are oracles (tests compare mlaref's NumPy models with them) and the source of the
transcendental values the op reference needs where ggml calls libm (``expf`` in soft_max, ``cosf``/``sinf``
in rope). They do not depend on NumPy's own ufuncs, whose SIMD implementations may differ from libm in the
last bit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np

__all__ = ["available", "fmaf", "expf", "logf", "cosf", "sinf", "tanhf", "sqrtf", "roundf", "rintf"]


@functools.cache
def _libm():
    name = ctypes.util.find_library("m")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def available() -> bool:
    """Is a C math library loadable here?"""
    return _libm() is not None


@functools.cache
def _function(name: str, nargs: int):
    lib = _libm()
    if lib is None:
        raise RuntimeError("libm: no C math library found by ctypes.util.find_library('m')")
    fn = getattr(lib, name)
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float] * nargs
    return fn


def _apply(name: str, *args) -> np.ndarray:
    arrays = [np.asarray(a) for a in args]
    for i, a in enumerate(arrays):
        if a.dtype != np.float32:
            raise TypeError(f"libm.{name}: argument {i} must be float32, got {a.dtype}")
    arrays = np.broadcast_arrays(*arrays)
    shape = arrays[0].shape
    fn = _function(name, len(arrays))
    # map() over Python lists is the fastest pure-ctypes loop (faster than np.frompyfunc).
    flat = [a.reshape(-1).tolist() for a in arrays]
    out = np.fromiter(map(fn, *flat), dtype=np.float32, count=arrays[0].size)
    return out.reshape(shape)


def fmaf(a, b, c) -> np.ndarray:
    """C ``fmaf(a, b, c)``: ``a*b + c`` rounded once to float32."""
    return _apply("fmaf", a, b, c)


def expf(x) -> np.ndarray:
    """C ``expf``."""
    return _apply("expf", x)


def logf(x) -> np.ndarray:
    """C ``logf``."""
    return _apply("logf", x)


def cosf(x) -> np.ndarray:
    """C ``cosf``."""
    return _apply("cosf", x)


def sinf(x) -> np.ndarray:
    """C ``sinf``."""
    return _apply("sinf", x)


def tanhf(x) -> np.ndarray:
    """C ``tanhf``."""
    return _apply("tanhf", x)


def sqrtf(x) -> np.ndarray:
    """C ``sqrtf`` (correctly rounded by IEEE 754)."""
    return _apply("sqrtf", x)


def roundf(x) -> np.ndarray:
    """C ``roundf``: nearest integer, halfway cases away from zero."""
    return _apply("roundf", x)


def rintf(x) -> np.ndarray:
    """C ``rintf`` in the default rounding mode: nearest integer, halfway cases to even."""
    return _apply("rintf", x)
