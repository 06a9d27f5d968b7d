"""Argument checks and strided element access shared by the op files."""

from __future__ import annotations

import numpy as np

from mlaref.reference.tensor import ELEMENT_TYPES, Tensor

FLOAT_TYPES = ("f32", "f16", "bf16")

# unsigned storage dtype per element size: copying through these preserves every bit (NaN payloads too)
_BITS = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


def check_tensor(op: str, arg: str, t, types=None) -> Tensor:
    """Raise TypeError unless ``t`` is a Tensor (of one of ``types``, when given)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {arg} must be an mlaref Tensor, got {type(t).__name__}")
    if types is not None and t.type not in types:
        raise TypeError(f"{op}: {arg} must be of type {' or '.join(types)}, got {t.type}")
    return t


def check_rows_contiguous(op: str, arg: str, t: Tensor) -> None:
    """Raise ValueError unless the elements (blocks) of each row of ``t`` are packed (nb[0] == type size)."""
    if t.nb[0] != t.type_size:
        raise ValueError(
            f"{op}: the elements of each row of {arg} must be contiguous (nb[0] {t.nb[0]} != type size {t.type_size})"
        )


def element_bits(t: Tensor) -> np.ndarray:
    """A strided, writable view of an element-type tensor's storage as unsigned integers of its size."""
    if t.type not in ELEMENT_TYPES:
        raise TypeError(f"element_bits: {t.type} is not an element type")
    v = t.storage()
    return v.view(_BITS[v.dtype.itemsize]) if v.size else v.astype(_BITS[v.dtype.itemsize])


def ne4(ne) -> tuple[int, int, int, int]:
    ne = tuple(int(v) for v in ne)
    if not 1 <= len(ne) <= 4:
        raise ValueError(f"ne must have 1 to 4 entries, got {len(ne)}")
    return ne + (1,) * (4 - len(ne))
