"""ggml's type sizes and byte spans for the graph IR and the allocator model, also of types mlaref does not implement.

A model's graph names weights of any ggml type (q5_K, iq4_xs, ...); sizing them needs only ggml's block geometry
(``type_traits`` in ggml.c@676f0e71b, the block structs of ggml-common.h). The registry of
:mod:`mlaref.reference.types` is asked first; the table below covers the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlaref.reference.types import registry

__all__ = ["GGML_MAX_DIMS", "GGML_TYPE_TRAITS", "type_traits", "row_size", "nbytes"]

GGML_MAX_DIMS = 4

# type name -> (block size, bytes per block): ggml's type_traits (ggml.c, block structs in ggml-common.h).
GGML_TYPE_TRAITS = {
    "f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), "f64": (1, 8),
    "i8": (1, 1), "i16": (1, 2), "i32": (1, 4), "i64": (1, 8),
    "q4_0": (32, 18), "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24), "q8_0": (32, 34), "q8_1": (32, 36),
    "q2_K": (256, 84), "q3_K": (256, 110), "q4_K": (256, 144), "q5_K": (256, 176), "q6_K": (256, 210),
    "q8_K": (256, 292), "iq4_nl": (32, 18), "iq4_xs": (256, 136),
}


def type_traits(type_name: str) -> tuple[int, int]:
    """(block size, bytes per block) of ``type_name``: the mlaref registry first, then ggml's table."""
    try:
        fmt = registry().get(type_name)
    except ImportError:
        fmt = None
    if fmt is not None:
        return int(fmt.block_size), int(fmt.type_size)
    if type_name in GGML_TYPE_TRAITS:
        return GGML_TYPE_TRAITS[type_name]
    raise ValueError(f"unknown tensor type {type_name!r}; known: {', '.join(sorted(GGML_TYPE_TRAITS))}")


def row_size(type_name: str, n: int) -> int:
    """``ggml_row_size``: bytes of ``n`` values of ``type_name`` (``n`` a multiple of the block size)."""
    blck, tsize = type_traits(type_name)
    if n % blck:
        raise ValueError(f"row length {n} is not a multiple of {type_name}'s block size {blck}")
    return tsize * n // blck


def nbytes(type_name: str, ne: Sequence[int], nb: Sequence[int]) -> int:
    """``ggml_nbytes``: the byte span of a tensor with shape ``ne`` and strides ``nb``."""
    if any(n <= 0 for n in ne):
        return 0
    blck, tsize = type_traits(type_name)
    if blck == 1:
        total = tsize
        for i in range(GGML_MAX_DIMS):
            total += (ne[i] - 1) * nb[i]
        return total
    total = nb[1]
    for i in range(1, GGML_MAX_DIMS):
        total += (ne[i] - 1) * nb[i]
    return total
