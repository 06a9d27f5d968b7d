"""concat: join two tensors along one dimension (``ggml_concat``), before and after PR #253.

Shape: every ``ne[k]`` of ``a`` and ``b`` must agree except ``k == dim``, where the result has
``a.ne[dim] + b.ne[dim]``. The result is a new contiguous tensor of a's type; ``b`` must have the same type.

Two paths, chosen by type (``ggml_compute_forward_concat``, ggml.c@676f0e71b):

* **element path** (``f32``, ``i32``; ``ggml_compute_forward_concat_f32``), any ``dim`` in 0..3: for every
  destination index (i0, i1, i2, i3), the element of ``a`` if every ``i_k < a.ne[k]``, otherwise the element of
  ``b`` at that index with ``a.ne[dim]`` subtracted along ``dim``. Elements are read through the strides
  ``nb[1..3]`` of each source (views and permutations are fine), but ik_llama.cpp asserts ``nb[0] == 4`` for both
  sources. The shortcut for contiguous inputs (4096-byte block copies when ``dim`` is the outermost non-trivial
  dimension) writes the same bytes. A 4-byte copy is exact, so the result is bit for bit the sources' bits.
* **row path** (every other type, new in #253: ``ggml_compute_forward_concat_any``), ``dim == 0`` only: for each
  destination row (i1, i2, i3), ``row_size(a.ne0)`` bytes are copied from a's row (i1, i2, i3), then
  ``row_size(b.ne0)`` bytes from b's row. For block types both ``ne0`` are block multiples (``ggml_row_size``
  asserts it in debug builds; mlaref tensors cannot be built otherwise). Each row's bytes must be contiguous
  (``nb[0] == type size``): upstream does not check this and would copy unrelated bytes; mlaref refuses.

Before #253 (fc6a65dda) every type other than f32/i32 aborted (``GGML_ABORT``); ``Concat_pre253`` raises
TypeError there. ``concat(a, b, dim)`` is ``Concat_253``.

Upstream ggml, two versions, each a class (``ggml_compute_forward_concat``, ggml-cpu/ops.cpp):

* ``Concat_ggml015`` (ggml 0.15.3, ggml-python 0.0.45): element paths for f32/i32 (4 bytes) and f16/bf16
  (2 bytes, ``ggml_compute_forward_concat_f16``), along **any** dim, each element read through all four strides
  (any ``nb[0]``); block types go to a ``concat_any`` that copies ``ne0`` units of one *block* per row
  (``ne0`` counts elements, the stride is a block: ops.cpp:1897-1938 of ggml-python 0.0.45's sdist), so every row
  writes past its end and the last row past the tensor (finding F1 in docs/conformance-findings.md). Along dims
  1-3 the rows written later overwrite the spill inside the result, whose bytes then come out right, but the
  writes past it are a heap overflow; along dim 0 b's rows are also read from the wrong offsets. No defined
  result: the class raises for block types.
* ``Concat_ggml025`` (ggml 0.25.3, llama-cpp-python 0.3.36; llama.cpp PR #25247): the same element paths, and for
  block types a row path along **any** dim (``ggml_compute_forward_concat_any``, ops.cpp:1899-1949 of that sdist):
  rows must be contiguous (it asserts ``ggml_is_contiguous_rows``); along dim 0 b's row follows a's row
  (``a.ne0 / block size`` blocks in), along dims 1-3 b's rows follow a's rows. Same bytes as ``Concat_253`` where
  that is defined (dim 0).
"""

from __future__ import annotations

import numpy as np

from mlaref.reference.ops._common import check_rows_contiguous, check_tensor, element_bits
from mlaref.reference.tensor import Tensor, row_meta_size

__all__ = ["Concat_pre253", "Concat_253", "Concat_ggml015", "Concat_ggml025", "concat"]

_ELEMENT_PATH = ("f32", "i32")
_UPSTREAM_ELEMENT_PATH = ("f32", "i32", "f16", "bf16")


def _shape(a: Tensor, b: Tensor, dim) -> tuple[int, int, int, int]:
    """The result's ``ne`` after checking both sources (every version's first step)."""
    check_tensor("concat", "a", a)
    check_tensor("concat", "b", b)
    if not isinstance(dim, (int, np.integer)) or not 0 <= dim < 4:
        raise ValueError(f"concat: dim must be an integer in 0..3, got {dim!r}")
    if a.type != b.type:
        raise TypeError(f"concat: a and b must have the same type, got {a.type} and {b.type}")
    if row_meta_size(a.type):  # ik's concat fast path refuses them since #2232 (upstream facts §9.5)
        raise ValueError(f"concat: {a.type} rows carry {row_meta_size(a.type)} bytes of metadata (scale and sum of "
                         "the whole row) in front; joined row bytes are not a row of that type, and concatenating "
                         "whole rows would need a re-quantization ggml does not do")
    ne = list(a.ne)
    for k in range(4):
        if k == dim:
            ne[k] = a.ne[k] + b.ne[k]
        elif a.ne[k] != b.ne[k]:
            raise ValueError(f"concat: a and b must agree in ne[{k}] (dim is {dim}), got {a.ne[k]} and {b.ne[k]}")
    return tuple(ne)


def _element_path(a: Tensor, b: Tensor, dim: int, ne, packed: bool = True) -> Tensor:
    """Every destination element from a or b (``packed``: ik_llama.cpp's assert nb[0] == 4)."""
    for arg, t in (("a", a), ("b", b)):
        if packed and t.nb[0] != 4:
            raise ValueError(f"concat: {arg} must have 4-byte elements in a row (nb[0] == 4, got {t.nb[0]})")
    dst = Tensor.empty(a.type, ne)
    out = element_bits(dst)  # (ne3, ne2, ne1, ne0): NumPy axis 3 - k is ggml dim k
    axis = 3 - dim
    split = [slice(None)] * 4
    split[axis] = slice(0, a.ne[dim])
    out[tuple(split)] = element_bits(a)
    split[axis] = slice(a.ne[dim], ne[dim])
    out[tuple(split)] = element_bits(b)
    return dst


def _rows_dim0(a: Tensor, b: Tensor, ne) -> Tensor:
    """The row path along dim 0: each result row is a's row bytes, then b's (rows must be packed)."""
    check_rows_contiguous("concat", "a", a)
    check_rows_contiguous("concat", "b", b)
    dst = Tensor.empty(a.type, ne)
    ra = a.row_size()
    rows = dst.data.reshape(ne[3], ne[2], ne[1], ra + b.row_size())  # dst is contiguous
    rows[..., :ra] = a.raw()
    rows[..., ra:] = b.raw()
    return dst


class Concat_pre253:
    """concat at fc6a65dda: the element path for f32/i32; every other type aborts."""

    @staticmethod
    def eval(a: Tensor, b: Tensor, dim: int) -> Tensor:
        ne = _shape(a, b, dim)
        if a.type not in _ELEMENT_PATH:
            raise TypeError(f"concat: before PR #253 only f32 and i32 can be concatenated, got {a.type}")
        return _element_path(a, b, dim, ne)


class Concat_253:
    """concat at 676f0e71b: the element path for f32/i32, the row-memcpy path (dim 0) for every other type."""

    @staticmethod
    def eval(a: Tensor, b: Tensor, dim: int) -> Tensor:
        ne = _shape(a, b, dim)
        if a.type in _ELEMENT_PATH:
            return _element_path(a, b, dim, ne)
        if dim != 0:
            raise ValueError(f"concat: {a.type} tensors can be concatenated along dim 0 only (got dim {dim})")
        return _rows_dim0(a, b, ne)


class Concat_ggml015:
    """concat of upstream ggml 0.15.3: element paths for f32/i32/f16/bf16 along any dim; block types undefined."""

    @staticmethod
    def eval(a: Tensor, b: Tensor, dim: int) -> Tensor:
        ne = _shape(a, b, dim)
        if a.type not in _UPSTREAM_ELEMENT_PATH:
            raise TypeError(f"concat: ggml 0.15.3 has no defined result for {a.type} (its concat_any steps over "
                            "block types with element strides and reads and writes past the rows: finding F1)")
        return _element_path(a, b, dim, ne, packed=False)


class Concat_ggml025:
    """concat of upstream ggml 0.25.3: element paths for f32/i32/f16/bf16, a row path for block types, any dim."""

    @staticmethod
    def eval(a: Tensor, b: Tensor, dim: int) -> Tensor:
        ne = _shape(a, b, dim)
        if a.type in _UPSTREAM_ELEMENT_PATH:
            return _element_path(a, b, dim, ne, packed=False)
        if dim == 0:
            return _rows_dim0(a, b, ne)
        check_rows_contiguous("concat", "a", a)
        check_rows_contiguous("concat", "b", b)
        dst = Tensor.empty(a.type, ne)
        rows = dst.data.reshape(ne[3], ne[2], ne[1], dst.row_size())
        split = [slice(None)] * 3
        split[2 - (dim - 1)] = slice(0, a.ne[dim])
        rows[tuple(split)] = a.raw()
        split[2 - (dim - 1)] = slice(a.ne[dim], ne[dim])
        rows[tuple(split)] = b.raw()
        return dst


def concat(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """``ggml_concat(a, b, dim)`` as ik_llama.cpp@676f0e71b computes it (``Concat_253``)."""
    return Concat_253.eval(a, b, dim)
