"""The block-format base class and the registry that subclassing fills.

A format is a fixed-size block of ``block_size`` values stored in ``type_size`` bytes, described by a
NumPy structured dtype whose itemsize is ``type_size``. Subclasses implement two array functions on
``(n_blocks, ...)`` arrays, as gguf-py's ``quants.py`` does:

* ``quantize_blocks(x, variant, weights)``: ``x`` float32 of shape ``(n_blocks, block_size)`` -> structured
  array of shape ``(n_blocks,)``;
* ``dequantize_blocks(blocks)``: the structured array -> float32 ``(n_blocks, block_size)``; or instead
  ``dequantize_into(blocks, out)``, which writes that result into a given array.

Formats whose layout depends on the position of a block in its row (the interleaved ``q8_0_x4`` /
``q8_1_x4``) override the row-level ``quantize_rows`` / ``dequantize_rows`` instead. So do formats with per-row
metadata (ik_llama.cpp's ``row_meta_size``: ``q8_KV`` starts every row with 8 bytes of scale and sum), whose row
of ``n`` values takes ``row_meta_size + n / block_size * type_size`` bytes (``ggml_row_size`` of ik_llama.cpp);
code that sizes rows must ask ``row_size`` (and ``row_length`` for the way back), never multiply blocks.

The row-level functions work through the blocks in chunks of ``chunk_blocks`` blocks (``dequantize_chunk_blocks``
for dequantization, where a format sets it): every quantizer is block-local, so chunking changes no result, and
it keeps NumPy's temporaries in the CPU caches (up to about twice the speed of one pass over a large tensor).
``dequantize_into`` lets a format write a chunk straight into the output; ``random_rows`` lays ``random_blocks``
out as rows (the x4 layouts interleave them). Importance weights reach ``quantize_blocks`` through
``block_weights``, which by default repeats the imatrix for every row; formats whose model quantizer mixes in row
statistics (``sigma2`` of the legacy ``_impl`` quantizers) override it.

Quantize variants are named by lineage (upstream facts §4d):

=========  ===================================================================================
variant    meaning
=========  ===================================================================================
``ref``    ggml's ``quantize_row_<type>_ref``
``model``  what ``ggml_quantize_chunk`` writes (model quantization; may take an ``imatrix``)
``x86``    upstream ggml's x86 CPU ``from_float`` (type_traits_cpu) built with AVX2
``iqk``    ik_llama.cpp@676f0e71b's IQK ``from_float`` (q8_K and the x4 layouts)
=========  ===================================================================================

The quantizers of the April 2026 ik_llama.cpp snapshot (``ik2026_ref``, ``ik2026_x86``, ``ik2026_model``) are listed
apart, in ``ik2026_variants`` (same shape as ``variants``), and run through ``mlaref.reference.quantize`` like the others; see
:mod:`._ik2026`.

A format lists in ``variants`` the variants it accepts; each maps to the implementation that runs, so
variants that coincide for a type are the same code (``Q4_0.variants = {"ref": "ref", "model": "ref",
"x86": "ref"}``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

VARIANTS = ("ref", "model", "x86", "iqk")

_REGISTRY: dict[str, "BlockFormat"] = {}


class BlockFormat:
    """One ggml tensor type: block geometry, byte layout and the (de)quantization math."""

    name: ClassVar[str]
    # enum ggml_type in ggml.h: ggml 0.15.3 and ik_llama.cpp@676f0e71b give every type they share the same number;
    # the ik-only layouts (upstream = False) carry ik_llama.cpp@676f0e71b's number.
    ggml_type: ClassVar[int]
    upstream: ClassVar[bool] = True  # does upstream ggml 0.15.3 have this type? False: ik_llama.cpp@676f0e71b only
    # The type id of a tensor in a GGUF file, set at registration: gguf.c stores a tensor's enum ggml_type, so it is
    # ggml_type for an upstream type; None for the ik-only layouts, which no file holds (they exist only as
    # operands converted for IQK's kernels).
    gguf_type: ClassVar[int | None]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    dtype: ClassVar[np.dtype]
    # src1's type in ggml's vec_dot: the traits' ``vec_dot_type`` (type_traits_cpu, ggml-cpu.c at ggml 0.15.3;
    # type_traits, ggml.c@676f0e71b; the column without IQK of upstream facts §4a). None where the traits set none
    # (q8_K, the x4 layouts). q8_1 names itself although neither has a q8_1 vec_dot: which pairs have one is
    # reference/ops/vec_dot.py's supported_pairs().
    vec_dot_type: ClassVar[str | None]
    is_quantized: ClassVar[bool] = True
    domain: ClassVar[str] = "every byte pattern"
    variants: ClassVar[dict[str, str]] = {"ref": "ref", "model": "ref", "x86": "ref"}
    # The 2026 ik_llama.cpp snapshot's quantizers (names in _ik2026.IK2026_VARIANTS) -> implementation names that
    # quantize_blocks understands; empty where none is modelled.
    ik2026_variants: ClassVar[dict[str, str]] = {}
    takes_imatrix: ClassVar[bool] = False  # does the model quantizer use importance weights?
    chunk_blocks: ClassVar[int] = 4096  # blocks per NumPy pass in quantize_rows (and dequantize_rows by default)
    dequantize_chunk_blocks: ClassVar[int | None] = None  # blocks per pass in dequantize_rows; None: chunk_blocks
    # Bytes of metadata at the start of every row (ik_llama.cpp's type_traits.row_meta_size; 0 in upstream ggml).
    row_meta_size: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return  # an abstract intermediate class
        assert cls.dtype.itemsize == cls.type_size, (cls.name, cls.dtype.itemsize, cls.type_size)
        cls.gguf_type = cls.ggml_type if cls.upstream else None
        assert cls.name not in _REGISTRY, f"format {cls.name!r} registered twice"
        _REGISTRY[cls.name] = cls()

    # -- geometry -----------------------------------------------------------------------------------
    def row_size(self, n: int) -> int:
        """Bytes of a row of ``n`` values (``ggml_row_size``: the row metadata, if any, and the blocks); ``n`` must be
        a multiple of the block size."""
        if n % self.block_size:
            raise ValueError(f"{self.name}: row length {n} is not a multiple of the block size {self.block_size}")
        return self.row_meta_size + n // self.block_size * self.type_size

    def row_length(self, nbytes: int) -> int:
        """The number of values in a row of ``nbytes`` bytes (the inverse of ``row_size``); ValueError if no
        positive row length has that size."""
        body = nbytes - self.row_meta_size
        if body <= 0 or body % self.type_size:
            meta = f"{self.row_meta_size} bytes of row metadata plus " if self.row_meta_size else ""
            raise ValueError(f"{self.name}: a row of {nbytes} bytes is not {meta}a positive multiple of the block "
                             f"bytes {self.type_size}")
        return body // self.type_size * self.block_size

    # -- block level: implemented by each format ------------------------------------------------------
    def quantize_blocks(self, x: np.ndarray, variant: str, weights: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError(f"{self.name} cannot be quantized")

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        """float32 ``(n_blocks, block_size)``; by default through the format's own ``dequantize_into``."""
        if type(self).dequantize_into is BlockFormat.dequantize_into:
            raise NotImplementedError(f"{self.name} cannot be dequantized")
        out = np.empty((blocks.shape[0], self.block_size), dtype=np.float32)
        self.dequantize_into(blocks, out)
        return out

    def random_blocks(self, rng: np.random.Generator, n_blocks: int) -> np.ndarray:
        """Random blocks whose every field lies in the valid domain (``domain``); used to test dequantize."""
        raw = rng.integers(0, 256, size=n_blocks * self.type_size, dtype=np.uint8)
        return raw.view(self.dtype)

    def random_rows(self, rng: np.random.Generator, n_rows: int, n: int) -> np.ndarray:
        """Random uint8 rows ``(n_rows, row_size(n))`` of valid blocks (``random_blocks`` laid out in rows)."""
        blocks = self.random_blocks(rng, n_rows * (n // self.block_size))
        return np.ascontiguousarray(blocks).view(np.uint8).reshape(n_rows, self.row_size(n))

    # -- row level --------------------------------------------------------------------------------------
    def block_weights(self, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray | None:
        """The importance weights handed to ``quantize_blocks``: float32 ``(n_rows * n / block_size, block_size)``.

        ``x`` is float32 ``(n_rows, n)``; by default the imatrix (one weight per column) is repeated for every row.
        """
        if imatrix is None:
            return None
        n_rows, n = x.shape
        return np.broadcast_to(imatrix.astype(np.float32), (n_rows, n)).reshape(-1, self.block_size)

    def variant_block_weights(self, x: np.ndarray, imatrix: np.ndarray | None, variant: str) -> np.ndarray | None:
        """``block_weights`` for the implementation ``variant``; formats whose variants weigh differently override it
        (the ik2026 legacy quantizers, :mod:`._ik2026`)."""
        return self.block_weights(x, imatrix)

    def quantize_rows(self, x: np.ndarray, variant: str, imatrix: np.ndarray | None) -> np.ndarray:
        """float32 ``(n_rows, n)`` -> uint8 ``(n_rows, row_size(n))``."""
        n_rows, n = x.shape
        weights = self.variant_block_weights(x, imatrix, variant)
        xb = x.reshape(-1, self.block_size)
        out = np.empty(xb.shape[0], dtype=self.dtype)
        step = self.chunk_blocks
        for i in range(0, xb.shape[0], step):
            w = None if weights is None else weights[i : i + step]
            out[i : i + step] = self.quantize_blocks(xb[i : i + step], variant, w)
        return out.view(np.uint8).reshape(n_rows, -1)

    def dequantize_rows(self, data: np.ndarray) -> np.ndarray:
        """uint8 ``(n_rows, row_bytes)`` -> float32 ``(n_rows, n)``."""
        n_rows = data.shape[0]
        blocks = np.ascontiguousarray(data).reshape(-1).view(self.dtype)
        out = np.empty((blocks.shape[0], self.block_size), dtype=np.float32)
        step = self.dequantize_chunk_blocks or self.chunk_blocks
        for i in range(0, blocks.shape[0], step):
            self.dequantize_into(blocks[i : i + step], out[i : i + step])
        return out.reshape(n_rows, -1)

    def dequantize_into(self, blocks: np.ndarray, out: np.ndarray) -> None:
        """``out[...] = dequantize_blocks(blocks)`` (``out``: float32 ``(n_blocks, block_size)``).

        Formats may override it to write the result in place and save a copy.
        """
        out[...] = self.dequantize_blocks(blocks).reshape(out.shape)

    def __repr__(self) -> str:
        return f"<format {self.name}: {self.block_size} values in {self.type_size} B>"


def registry() -> dict[str, BlockFormat]:
    """All registered formats by name (a copy)."""
    return dict(_REGISTRY)
