"""cpy / cast / dup: copy a tensor's values into another tensor, converting the type (``ggml_cpy``, ``ggml_cast``,
``ggml_dup``; ``ggml_compute_forward_dup*``, ggml.c@676f0e71b).

Both tensors hold the same number of elements; values are taken in ggml's logical order (i0 fastest, then i1,
i2, i3) of the source and written in the logical order of the destination, so the shapes may differ.
``cpy(src, dst)`` writes into ``dst`` (a Tensor, typically a view: the write is visible in its base) and returns
it; ``dst`` may also be a type name, giving a new contiguous tensor of src's shape (``ggml_cast``). ``dup(a)`` is
``cast(a, a.type)``. Conversions (upstream facts §4d):

==================  ===================================================================  ======================
src -> dst          rule                                                                 rounding
==================  ===================================================================  ======================
same type           the bytes of every element (block), in logical order (``dup_bytes``)  exact
f32/f16/bf16 ->     widen to f32 (exact), then ``fp.f32_to_f16`` (F16C ``vcvtps2ph``,     RNE
f32/f16/bf16        which ``ggml_fp32_to_fp16_row`` and ``GGML_FP32_TO_FP16`` both are
                    with F16C) or ``fp.f32_to_bf16`` (``GGML_FP32_TO_BF16``).
                    ``f16_soft=True``: ``fp.f32_to_f16_soft``, the portable rule of a
                    build without F16C (NaN -> sign | 0x7E00), which the ggml-python
                    build's per-element path uses; the two differ on NaN only
f32 -> bf16,        ``bf16_simd=True`` models ``ggml_fp32_to_bf16_row`` built with        RNE, subnormals of
row path            AVX512-BF16 (the path taken when dst is contiguous and src rows are   full 32-chunks
                    packed): 32-wide ``vcvtne2ps2bf16`` chunks from each row start, the   flushed to +-0
                    scalar rule for the tail. Upstream ggml (ggml-python) is scalar only.
f32/f16/bf16 ->     per source row of ``ne00`` values (a block multiple): widen, then     the format's
block type          the format's ``from_float``; ``variant`` names it: default ``x86``    ``variant``
                    (``quantize_row_q8_0`` AVX2: 127/amax, ties to even), or ``ref``;
                    dst must be contiguous, src rows packed
block type -> f32   per row ``to_float`` (``dup_q``): ``ne00 == ne0``, src rows packed,   exact
                    dst rows of 4-byte elements; any other destination type aborts
==================  ===================================================================  ======================

``i32`` copies only to ``i32``. Threads split rows; every element is written once, so the split does not
change the result.

**Rows with metadata** (ik_llama.cpp's q8_KV: ``d``, ``s``, then ``n`` int8 per row; upstream facts §5a) take the
same three paths as whole rows, as the ik-llama-cpp-python 0.1.5 snapshot's ggml.c runs them:
f32/f16/bf16 -> q8_KV quantizes each source row with the type's ``from_float`` (``iqk_quantize_row_q8_KV``; every
x86 build runs its AVX2 branch, ``variant`` ``ref`` = ``iqk``) into a contiguous destination whose rows are
``row_size(ne00) = 8 + ne00`` bytes apart (``ggml_compute_forward_dup_f32``, ggml.c:11805-11820: the KV-cache
store and ``ggml_cast``); q8_KV -> f32 runs ``to_float`` (``d·q``, one rounding) on each whole row
(``ggml_compute_forward_dup_q``, ggml.c:12300-12332); q8_KV -> q8_KV copies whole rows of ``row_size`` bytes
(``ggml_compute_forward_dup_bytes``). Every other destination type aborts in ggml: TypeError here. Views inside a
row cannot be made (:mod:`mlaref.reference.tensor`).
"""

from __future__ import annotations

import numpy as np

from mlaref.reference import dequantize, fp, get_type, quantize
from mlaref.reference.ops._common import FLOAT_TYPES, check_rows_contiguous, check_tensor, element_bits
from mlaref.reference.tensor import Tensor, is_element_type

__all__ = ["cpy", "cast", "dup"]


def _f32_to(type: str, x: np.ndarray, bf16_simd: bool, row_len: int, f16_soft: bool) -> np.ndarray:
    """float32 values (in dst's 4-D shape) -> the storage of an element type."""
    if type == "f32":
        return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    if type == "f16":
        return fp.f32_to_f16_soft(x) if f16_soft else fp.f32_to_f16(x)
    if not bf16_simd:
        return fp.f32_to_bf16(x)
    # ggml_fp32_to_bf16_row per source row: the first (row_len // 32) * 32 values go through vcvtne2ps2bf16.
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, row_len)
    cut = row_len // 32 * 32
    out = np.empty(flat.shape, dtype=np.uint16)
    out[:, :cut] = fp.f32_to_bf16_avx512(flat[:, :cut])
    out[:, cut:] = fp.f32_to_bf16(flat[:, cut:])
    return out.reshape(x.shape)


def cpy(src: Tensor, dst, *, variant: str | None = None, bf16_simd: bool = False, f16_soft: bool = False) -> Tensor:
    """``ggml_cpy(src, dst)``: convert ``src``'s values into ``dst`` (a Tensor view, or a type name)."""
    check_tensor("cpy", "src", src)
    if isinstance(dst, str):
        dst = Tensor.empty(dst, src.ne)
    check_tensor("cpy", "dst", dst)
    if src.nelements() != dst.nelements():
        raise ValueError(
            f"cpy: src and dst must hold the same number of elements, got {src.nelements()} ({src.ne}) "
            f"and {dst.nelements()} ({dst.ne})"
        )
    to_block = not is_element_type(dst.type)
    if variant is not None and not (to_block and src.type in FLOAT_TYPES):
        raise ValueError(f"cpy: variant applies to a float -> block-type conversion only ({src.type} -> {dst.type})")
    if bf16_simd and not (src.type == "f32" and dst.type == "bf16"):
        raise ValueError(f"cpy: bf16_simd applies to f32 -> bf16 only ({src.type} -> {dst.type})")
    if f16_soft and not (src.type in FLOAT_TYPES and dst.type == "f16" and src.type != "f16"):
        raise ValueError(f"cpy: f16_soft applies to f32/bf16 -> f16 only ({src.type} -> {dst.type})")
    shape = (dst.ne[3], dst.ne[2], dst.ne[1], dst.ne[0])

    if src.type == dst.type:
        if is_element_type(src.type):
            element_bits(dst)[...] = element_bits(src).reshape(shape)
        else:
            check_rows_contiguous("cpy", "src", src)
            check_rows_contiguous("cpy", "dst", dst)
            dst.storage()[...] = src.raw().reshape(dst.storage().shape)
        return dst

    if "i32" in (src.type, dst.type):
        raise TypeError(f"cpy: i32 copies only to i32 (got {src.type} -> {dst.type})")

    if src.type in FLOAT_TYPES and not to_block:
        x = src.to_numpy().reshape(shape)
        row_path = dst.is_contiguous() and src.nb[0] == src.type_size
        element_bits(dst)[...] = _f32_to(dst.type, x, bf16_simd and row_path, src.ne[0] if row_path else 1,
                                         f16_soft)
        return dst

    if src.type in FLOAT_TYPES:  # -> block type
        fmt = get_type(dst.type)
        if variant is None:
            variant = "x86" if "x86" in fmt.variants else "ref"
        if variant not in fmt.variants and variant not in fmt.ik2026_variants:
            have = [*fmt.variants, *fmt.ik2026_variants]
            raise ValueError(f"cpy: {dst.type} has no quantize variant {variant!r}; it has {', '.join(have)}")
        if src.ne[0] % fmt.block_size:
            raise ValueError(
                f"cpy: src rows of {src.ne[0]} values cannot be quantized to {dst.type}: "
                f"ne[0] must be a multiple of {fmt.block_size}"
            )
        check_rows_contiguous("cpy", "src", src)
        if not dst.is_contiguous():
            raise ValueError(f"cpy: a {dst.type} destination must be contiguous")
        q = quantize(src.to_numpy().reshape(-1, src.ne[0]), dst.type, variant=variant)
        dst.data[dst.offset : dst.offset + q.size] = q.reshape(-1)
        return dst

    # block type -> ...
    if dst.type != "f32":
        raise TypeError(f"cpy: a {src.type} tensor can be copied only to f32 or {src.type}, not {dst.type}")
    if src.ne[0] != dst.ne[0]:
        raise ValueError(f"cpy: dequantizing {src.type} needs src and dst rows of equal length, got {src.ne[0]} and {dst.ne[0]}")
    check_rows_contiguous("cpy", "src", src)
    check_rows_contiguous("cpy", "dst", dst)
    vals = dequantize(src.raw().reshape(-1, src.row_size()), src.type)
    dst.storage()[...] = vals.reshape(shape)
    return dst


def cast(a: Tensor, type: str, **kwargs) -> Tensor:
    """``ggml_cast(a, type)``: a new contiguous tensor of ``type`` with a's shape and converted values."""
    check_tensor("cast", "a", a)
    if not isinstance(type, str):
        raise TypeError(f"cast: type must be a type name, got {type!r}")
    return cpy(a, type, **kwargs)


def dup(a: Tensor) -> Tensor:
    """``ggml_dup(a)``: a contiguous copy of a's bytes (``cast(a, a.type)``)."""
    check_tensor("dup", "a", a)
    return cpy(a, a.type)
