"""ggml's type sizes and byte spans for the graph IR and the allocator model, also of types mlaref does not implement.

A model's graph names weights of any ggml type (q5_K, iq4_xs, ...); sizing them needs only ggml's block geometry
(``type_traits`` in ggml.c@676f0e71b, the block structs of ggml-common.h). The registry of
:mod:`mlaref.reference.types` is asked first; the table below covers the rest. ik_llama.cpp's types with row
metadata (q8_KV: 8 bytes of scale and sum in front of each row; upstream facts §5a) are sized as ik's ggml sizes
them: ``row_size`` adds ``row_meta_size``, and strides (``ggml_new_tensor_impl``: ``nb1 = ggml_row_size``),
``nbytes`` and contiguity (``ggml_is_contiguous_n`` starts from ``ggml_row_size``) follow from it (the snapshot's
ggml/src/ggml.c:5446-5450, 4724-4748, 4959-4979). Such a row is meaningful only whole, with its scale and sum in
front: :func:`whole_rows_only` is the refusal the graph IR raises for a view, permute, reshape, repeat, transpose
or concat that would cut or rearrange rows (ik's ggml asserts none of this; its concat fast path refuses row
metadata since #2232, upstream facts §9.5).
"""

from __future__ import annotations

from collections.abc import Sequence

from mlaref.reference.types import registry

__all__ = ["GGML_MAX_DIMS", "GGML_TYPE_TRAITS", "type_traits", "row_meta_size", "row_size", "nbytes", "whole_rows_only"]

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
    """(block size, bytes per block) of ``type_name``: the mlaref registry first, then ggml's table. A row also
    carries :func:`row_meta_size` bytes of metadata (q8_KV): size rows with :func:`row_size`, never blocks."""
    try:
        fmt = registry().get(type_name)
    except ImportError:
        fmt = None
    if fmt is not None:
        return int(fmt.block_size), int(fmt.type_size)
    if type_name in GGML_TYPE_TRAITS:
        return GGML_TYPE_TRAITS[type_name]
    raise ValueError(f"unknown tensor type {type_name!r}; known: {', '.join(sorted(GGML_TYPE_TRAITS))}")


def row_meta_size(type_name: str) -> int:
    """Bytes of metadata in front of every row (ik_llama.cpp's ``type_traits.row_meta_size``, the snapshot's
    ggml/src/ggml.c:1443-1454 for q8_KV: 8); 0 for every type of ggml's table."""
    type_traits(type_name)  # unknown types: the same error
    try:
        fmt = registry().get(type_name)
    except ImportError:
        fmt = None
    return int(fmt.row_meta_size) if fmt is not None else 0


def row_size(type_name: str, n: int) -> int:
    """ik's ``ggml_row_size`` (the snapshot's ggml.c:4758-4761): ``row_meta_size + type_size·n/blck_size`` bytes
    for ``n`` values of ``type_name`` (``n`` a multiple of the block size); q8_KV: ``8 + n``."""
    blck, tsize = type_traits(type_name)
    if n % blck:
        raise ValueError(f"row length {n} is not a multiple of {type_name}'s block size {blck}")
    return row_meta_size(type_name) + tsize * n // blck


def nbytes(type_name: str, ne: Sequence[int], nb: Sequence[int]) -> int:
    """``ggml_nbytes``: the byte span of a tensor with shape ``ne`` and strides ``nb``; for block types it starts
    from ``nb[1]`` (ik's ggml.c:4724-4748), which includes a row's metadata."""
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


def whole_rows_only(type_name: str, what: str, detail: str) -> None:
    """Raise ValueError for ``what`` (an op that cuts or rearranges rows) if ``type_name`` has row metadata."""
    if row_meta_size(type_name):
        raise ValueError(f"{what}: {type_name} rows carry {row_meta_size(type_name)} bytes of metadata (scale and sum "
                         f"of the whole row) in front, so only whole rows can be viewed or copied; {detail}")
