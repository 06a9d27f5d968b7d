"""Argument checks for the C kernels: every rule is tested here, in Python, before a pointer reaches C.

A kernel sees rows: a base pointer, a row count, a row length and a byte stride between rows. So an array handed
to a kernel must be expressible that way:

* dtype exactly as the kernel reads it (float32 values, uint8 block bytes); never cast silently;
* at least one dimension; the last one (the row) of the right length: a positive multiple of the block size in
  values, or of the block bytes in bytes;
* no negative strides anywhere; the last axis contiguous; the leading axes collapse into one row axis with a
  single non-negative stride (inputs that do not are copied; outputs must);
* outputs writable (read-only buffers are refused), not self-overlapping (a zero stride over several rows), not
  sharing memory with any input;
* float32 arrays aligned to 4 bytes (row strides included): C may not read a float at an odd address;
* sizes below ``MAX_ELEMENTS`` and thread counts in ``1..MAX_THREADS``.

Every failure raises TypeError (wrong type/dtype) or ValueError naming the argument and the rule.

Cost: the checks run on every kernel call, so the common case (a C-contiguous, aligned array) takes a short path
whose row view is a plain ``reshape`` (a view, no copy) instead of ``as_strided``; the rules checked are the same.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_ELEMENTS", "MAX_THREADS", "Rows", "input_rows", "output_rows", "check_threads", "check_no_overlap",
           "fresh_rows"]

MAX_ELEMENTS = 1 << 40
MAX_THREADS = 256


class Rows:
    """A validated 2-D row view: ``array`` (n_rows, row_len), its byte ``stride`` between rows."""

    __slots__ = ("array", "stride", "n_rows")

    def __init__(self, array: np.ndarray, stride: int):
        self.array = array
        self.stride = stride
        self.n_rows = array.shape[0]


def _as_array(a, what: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        if isinstance(a, (bytes, bytearray, memoryview, list, tuple)) or hasattr(a, "__array__"):
            a = np.asarray(a)
        else:
            raise TypeError(f"{what}: expected a NumPy array, got {type(a).__name__}")
    return a


def _collapse(a: np.ndarray) -> int | None:
    """The single row stride of ``a``'s leading axes if they collapse into one, else None."""
    lead = [(n, s) for n, s in zip(a.shape[:-1], a.strides[:-1]) if n != 1]
    if not lead:
        return a.strides[0] if a.ndim > 1 else a.shape[-1] * a.itemsize
    stride = lead[-1][1]
    expect = stride
    for n, s in reversed(lead):
        if s != expect:
            return None
        expect = s * n
    return stride


def _common(a: np.ndarray, what: str, dtype, row_len: int | None, multiple: int, unit: str) -> None:
    if a.dtype != dtype:
        raise TypeError(f"{what}: dtype must be {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{what}: must have at least one dimension (rows along the last)")
    if a.size > MAX_ELEMENTS:
        raise ValueError(f"{what}: {a.size} elements exceed the limit {MAX_ELEMENTS}")
    n = a.shape[-1]
    if row_len is not None and n != row_len:
        raise ValueError(f"{what}: rows must hold {row_len} {unit}, got {n}")
    if n == 0 or n % multiple:
        raise ValueError(f"{what}: the last dim ({n} {unit}) must be a positive multiple of {multiple}")
    if any(s < 0 for s in a.strides):
        raise ValueError(f"{what}: negative strides are not accepted (strides {a.strides})")


def input_rows(a, what: str, dtype, *, multiple: int = 1, row_len: int | None = None, unit: str = "values") -> Rows:
    """An input as rows; copied when its layout is not rows-at-one-stride. ``a`` is never written."""
    a = _as_array(a, what)
    _common(a, what, dtype, row_len, multiple, unit)
    if a.size == 0:
        raise ValueError(f"{what}: has no rows")
    flags = a.flags
    if flags.c_contiguous and flags.aligned:
        n = a.shape[-1]
        rows = a.reshape(a.size // n, n)
        if rows.flags.writeable:
            rows.flags.writeable = False
        return Rows(rows, _collapse(a))
    if a.strides[-1] != a.itemsize or _collapse(a) is None or not a.flags.aligned:
        a = np.ascontiguousarray(a)
    stride = _collapse(a)
    rows = np.lib.stride_tricks.as_strided(a, (a.size // a.shape[-1], a.shape[-1]), (stride, a.itemsize),
                                           writeable=False)
    return Rows(rows, stride)


def output_rows(out, what: str, dtype, shape: tuple, inputs=()) -> Rows:
    """A caller-given output as rows; it is written in place, so every rule is enforced, nothing copied."""
    out = _as_array(out, what)
    if out.dtype != dtype:
        raise TypeError(f"{what}: dtype must be {np.dtype(dtype)}, got {out.dtype}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{what}: shape must be {tuple(shape)}, got {tuple(out.shape)}")
    _common(out, what, dtype, None, 1, "elements")
    if not out.flags.writeable:
        raise ValueError(f"{what}: the output buffer is read-only")
    if out.strides[-1] != out.itemsize:
        raise ValueError(f"{what}: the last axis must be contiguous (stride {out.itemsize}), got {out.strides[-1]}")
    stride = _collapse(out)
    if stride is None:
        raise ValueError(f"{what}: the leading axes must collapse into rows at one stride (strides {out.strides})")
    n_rows = out.size // out.shape[-1]
    row_bytes = out.shape[-1] * out.itemsize
    if n_rows > 1 and stride < row_bytes:
        raise ValueError(f"{what}: rows overlap (row stride {stride} < row bytes {row_bytes})")
    if out.itemsize > 1 and (not out.flags.aligned or stride % out.itemsize):
        raise ValueError(f"{what}: {out.dtype} data must be aligned to {out.itemsize} bytes")
    check_no_overlap(out, inputs, what)
    if out.flags.c_contiguous:
        return Rows(out.reshape(n_rows, out.shape[-1]), stride)
    rows = np.lib.stride_tricks.as_strided(out, (n_rows, out.shape[-1]), (stride, out.itemsize))
    return Rows(rows, stride)


def fresh_rows(out: np.ndarray) -> Rows:
    """Rows of an output the caller of a kernel has just allocated with ``np.empty`` (C-contiguous, aligned,
    sharing memory with nothing), so none of :func:`output_rows`' checks can fail and they are skipped."""
    n = out.shape[-1]
    return Rows(out.reshape(out.size // n, n), n * out.itemsize)


def check_no_overlap(out: np.ndarray, inputs, what: str) -> None:
    for name, a in inputs:
        try:
            shared = np.shares_memory(out, a, max_work=10**6)
        except np.exceptions.TooHardError:
            shared = True
        if shared:
            raise ValueError(f"{what}: the output overlaps the input {name}")


def check_threads(n_threads) -> int:
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)):
        raise TypeError(f"n_threads: expected an int, got {type(n_threads).__name__}")
    if not 1 <= n_threads <= MAX_THREADS:
        raise ValueError(f"n_threads: must be in 1..{MAX_THREADS}, got {n_threads}")
    return int(n_threads)
