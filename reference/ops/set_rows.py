"""set_rows: write rows of a source into chosen rows of a destination, converting the type (``ggml_set_rows``).

``set_rows(dst, src, rows)``: for every source row i (``src.ne[1]`` rows of ``ne0`` values, f32 or f16), destination
row ``rows[i]`` becomes that row converted to ``dst``'s type; the other rows of ``dst`` are left as they are. The
row conversion is :func:`mlaref.reference.ops.cpy.cpy`'s, row by row: ggml 0.25.3's CPU ``set_rows`` calls the
destination type's ``from_float`` on each row (``ggml_compute_forward_set_rows_f32``, ggml-cpu/ops.cpp of the
llama-cpp-python 0.3.36 sdist), the same conversion ``cpy`` applies to a packed f32 row (f16: RNE; q8_0: the
``variant`` of the quantizer, default ``x86``). Writes ``dst`` in place (a view writes its base) and returns it.

Mainline llama.cpp stores the KV cache this way since its ``LLAMA_SET_ROWS`` change (``llama_kv_cache::cpy_k``,
src/llama-kv-cache.cpp of the same sdist), with an i64 index input; 2-d ``dst`` / ``src`` only here (one stream).
An index outside ``0 .. dst.ne[1] - 1`` raises ValueError (ggml asserts). Each destination row is written by one
source row; with repeated indices the later source row wins (ggml's threads split the source rows, so upstream
leaves that case to the thread order).
"""

from __future__ import annotations

import numpy as np

from mlaref.reference.ops.cpy import cpy
from mlaref.reference.tensor import Tensor

__all__ = ["set_rows"]


def set_rows(dst: Tensor, src: Tensor, rows, **kw) -> Tensor:
    if not isinstance(dst, Tensor) or not isinstance(src, Tensor):
        raise TypeError("set_rows: dst and src must be Tensors")
    if src.type not in ("f32", "f16"):
        raise ValueError(f"set_rows: src must be f32 or f16, got {src.type}")
    if dst.ne[0] != src.ne[0] or dst.ne[2:] != (1, 1) or src.ne[2:] != (1, 1):
        raise ValueError(f"set_rows: dst {list(dst.ne)} and src {list(src.ne)} must be 2-d with the same ne0")
    idx = np.asarray(rows)
    if idx.dtype.kind not in "iu" or idx.shape != (src.ne[1],):
        raise ValueError(f"set_rows: rows must be {src.ne[1]} integers (one per source row), got {idx.dtype} "
                         f"{idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= dst.ne[1]):
        raise ValueError(f"set_rows: row indices must be in 0..{dst.ne[1] - 1}, got {idx.min()}..{idx.max()}")
    for i, r in enumerate(idx.tolist()):
        s = src.view((src.ne[0], 1), (src.nb[1],), i * src.nb[1])
        d = dst.view((dst.ne[0], 1), (dst.nb[1],), r * dst.nb[1])
        cpy(s, d, **kw)
    return dst
