"""The readable NumPy specification: rounding, block formats, tensors, ops, plans, graphs, allocator.

The thin public face of the formats:

* ``quantize(x, type, *, variant="ref", imatrix=None)`` -> uint8 rows of the format;
* ``dequantize(data, type)`` -> float32;
* ``get_type(name)`` -> the format object (``block_size``, ``type_size``, ``row_size(n)``, ...).
"""

from __future__ import annotations

import numpy as np

from mlaref.reference.types import VARIANTS, get_type, registry
from mlaref.reference.types._ik2026 import IK2026_VARIANTS

__all__ = ["quantize", "dequantize", "get_type", "registry", "VARIANTS", "IK2026_VARIANTS"]


def quantize(x, type, *, variant: str = "ref", imatrix=None) -> np.ndarray:
    """Quantize float32 ``x`` (last dim a multiple of the block size) into rows of ``type``.

    Returns uint8 of shape ``x.shape[:-1] + (row_bytes,)``. ``variant`` names the ggml routine reproduced
    (``ref``, ``model``, ``x86``, ``iqk``; see :mod:`mlaref.reference.types._base`; and the 2026 ik_llama.cpp
    snapshot's ``ik2026_ref``, ``ik2026_x86``, ``ik2026_model`` where a format has them). ``imatrix``, the
    importance weights of ``ggml_quantize_chunk``, has one float per column and goes with ``variant="model"``
    or ``"ik2026_model"``.
    """
    fmt = get_type(type)
    if variant not in VARIANTS + IK2026_VARIANTS:
        raise ValueError(f"quantize: unknown variant {variant!r}; known: {', '.join(VARIANTS + IK2026_VARIANTS)}")
    table = fmt.ik2026_variants if variant in IK2026_VARIANTS else fmt.variants
    if variant not in table:
        have = [*fmt.variants, *fmt.ik2026_variants]
        raise ValueError(f"quantize: {fmt.name} has no variant {variant!r}; it has {', '.join(have)}")
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"quantize: x must be float32, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("quantize: x must have at least one dimension")
    n = x.shape[-1]
    if n == 0 or n % fmt.block_size:
        raise ValueError(
            f"quantize: the last dim of x ({n}) must be a positive multiple of {fmt.name}'s block size {fmt.block_size}"
        )
    if imatrix is not None:
        if variant not in ("model", "ik2026_model"):
            raise ValueError(f"quantize: imatrix goes with variant='model', not {variant!r} (or with 'ik2026_model')")
        imatrix = np.asarray(imatrix)
        if imatrix.dtype != np.float32 or imatrix.shape != (n,):
            raise ValueError(
                f"quantize: imatrix must be float32 of shape ({n},) (one weight per column), "
                f"got {imatrix.dtype} {imatrix.shape}"
            )
    rows = np.ascontiguousarray(x).reshape(-1, n)
    out = fmt.quantize_rows(rows, table[variant], imatrix)
    return out.reshape(x.shape[:-1] + (fmt.row_size(n),))


def dequantize(data, type) -> np.ndarray:
    """Dequantize uint8 rows of ``type`` into float32 of shape ``data.shape[:-1] + (n,)``."""
    fmt = get_type(type)
    data = np.asarray(data)
    if data.dtype != np.uint8:
        raise TypeError(f"dequantize: data must be uint8 bytes, got {data.dtype}")
    if data.ndim == 0:
        raise ValueError("dequantize: data must have at least one dimension")
    nbytes = data.shape[-1]
    if fmt.row_meta_size:
        try:
            fmt.row_length(nbytes)
        except ValueError as exc:
            raise ValueError(f"dequantize: the last dim of data: {exc}") from None
    elif nbytes == 0 or nbytes % fmt.type_size:
        raise ValueError(
            f"dequantize: the last dim of data ({nbytes} bytes) must be a positive multiple of "
            f"{fmt.name}'s block bytes {fmt.type_size}"
        )
    rows = np.ascontiguousarray(data).reshape(-1, nbytes)
    out = fmt.dequantize_rows(rows)
    return out.reshape(data.shape[:-1] + (out.shape[-1],))
