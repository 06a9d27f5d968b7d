"""repeat: tile a tensor to a larger shape (``ggml_repeat``), before and after PR #253.

``dst[i0, i1, i2, i3] = src[i0 % ne00, i1 % ne01, i2 % ne02, i3 % ne03]``: the result has the shape ``ne`` of the
second argument (a Tensor, whose values are ignored, or a shape), each ``ne[k]`` a multiple of ``src.ne[k]``
(``ggml_can_repeat``); it is a new contiguous tensor of src's type. Every byte is copied, never converted.

Paths (``ggml_compute_forward_repeat``, ggml.c@676f0e71b):

* ``f32``/``i32`` (``repeat_f32``) and ``f16``/``bf16`` (``repeat_f16``): tiled copies of src rows of ``ne00``
  elements; both assert ``src.nb[0] == type size`` (rows packed); ``nb[1..3]`` are free.
* every other type (``repeat_any``, new in #253): asserts the same, then for each destination row (i1, i2, i3)
  copies src row (i1 % ne01, i2 % ne02, i3 % ne03), ``row_size(ne00)`` bytes, ``ne0 / ne00`` times in a row.
  For block types ``ne00`` is a block multiple, so the tiles are whole blocks.

Before #253 (fc6a65dda) the other types aborted: ``Repeat_pre253`` raises TypeError. ``repeat`` is
``Repeat_253``. Both paths run on one thread (n_tasks = 1).
"""

from __future__ import annotations

import numpy as np

from mlaref.reference.ops._common import check_rows_contiguous, check_tensor, ne4
from mlaref.reference.tensor import Tensor, row_meta_size

__all__ = ["Repeat_pre253", "Repeat_253", "repeat"]

_ELEMENT_PATH = ("f32", "i32", "f16", "bf16")


def _target(src: Tensor, b) -> tuple[int, int, int, int]:
    if isinstance(b, Tensor):
        ne = b.ne
    else:
        try:
            ne = ne4(b)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"repeat: b must be a Tensor or a shape of 1 to 4 ints ({exc})") from None
    if any(v <= 0 for v in ne) or any(v <= 0 for v in src.ne):
        raise ValueError(f"repeat: empty tensors cannot be repeated (src ne {src.ne}, target ne {ne})")
    for k in range(4):
        if ne[k] % src.ne[k]:
            raise ValueError(f"repeat: target ne[{k}] = {ne[k]} is not a multiple of src ne[{k}] = {src.ne[k]}")
    if row_meta_size(src.type) and ne[0] != src.ne[0]:
        raise ValueError(f"repeat: {src.type} rows carry {row_meta_size(src.type)} bytes of metadata in front, so a row "
                         f"tiled along dim 0 ({src.ne[0]} -> {ne[0]} values) is not a {src.type} row; only whole rows "
                         "can be repeated")
    return ne


def _tile(src: Tensor, ne) -> Tensor:
    check_rows_contiguous("repeat", "src", src)
    dst = Tensor.empty(src.type, ne)
    reps = (ne[3] // src.ne[3], ne[2] // src.ne[2], ne[1] // src.ne[1], ne[0] // src.ne[0])
    # A row's bytes tiled reps[3] times are the row's elements (or whole blocks) tiled reps[3] times.
    dst.data[:] = np.tile(src.raw(), reps).reshape(-1)  # dst is contiguous: rows in ggml order
    return dst


class Repeat_pre253:
    """repeat at fc6a65dda: f32/i32/f16/bf16 only."""

    @staticmethod
    def eval(src: Tensor, b) -> Tensor:
        check_tensor("repeat", "src", src)
        ne = _target(src, b)
        if src.type not in _ELEMENT_PATH:
            raise TypeError(f"repeat: before PR #253 only f32, i32, f16 and bf16 can be repeated, got {src.type}")
        return _tile(src, ne)


class Repeat_253:
    """repeat at 676f0e71b: the element paths plus ``repeat_any`` (row memcpy) for every other type."""

    @staticmethod
    def eval(src: Tensor, b) -> Tensor:
        check_tensor("repeat", "src", src)
        ne = _target(src, b)
        return _tile(src, ne)


def repeat(src: Tensor, b) -> Tensor:
    """``ggml_repeat(src, b)`` as ik_llama.cpp@676f0e71b computes it (``Repeat_253``)."""
    return Repeat_253.eval(src, b)
