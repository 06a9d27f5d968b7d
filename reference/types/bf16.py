"""BF16: the upper half of a float32, one value per 2-byte block.

Block layout (2 bytes, ``ggml_bf16_t``): bits 31..16 of the float32, little-endian.

Dequantization: ``bits << 16`` (``GGML_BF16_TO_FP32``), exact; NaN payloads pass unchanged.

Quantization, ``ggml_compute_fp32_to_bf16`` (ggml-impl.h): for a NaN, ``(u >> 16) | 0x40`` (quieted, sign and
top payload bits kept); otherwise round to nearest even, ``(u + 0x7FFF + ((u >> 16) & 1)) >> 16``, which
carries into the exponent and from the largest finite values into Inf exactly as IEEE rounding does.
Subnormals are rounded like every other value.

Upstream ggml (what the ggml peer builds) uses that scalar routine on every path: ``from_float_ref`` =
``ggml_fp32_to_bf16_row_ref``, ``ggml_quantize_chunk`` calls the same, and the CPU back-end's ``from_float``
``ggml_cpu_fp32_to_bf16`` (ggml-cpu.c) loops over ``GGML_FP32_TO_BF16``; so ``ref``, ``model`` and ``x86`` are
one implementation.

ik_llama.cpp@676f0e71b's ``ggml_fp32_to_bf16_row`` (ggml.c; its f32 -> bf16 ``cpy``) differs on CPUs with
AVX512-BF16: it converts 32-element chunks with ``_mm512_cvtne2ps_pbh`` (``vcvtne2ps2bf16``), which flushes
subnormal inputs to +-0, and only the tail (the last ``n % 32`` elements) with the scalar routine.
``convert_row_avx512bf16`` reproduces that row function; it is not a quantize variant because upstream
ggml's CPU ``from_float`` does not use it.

Valid domain: every bit pattern; ``random_blocks`` draws finite values over the whole range.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types._base import BlockFormat


def convert_row_avx512bf16(x: np.ndarray) -> np.ndarray:
    """ik_llama.cpp@676f0e71b ``ggml_fp32_to_bf16_row`` on an AVX512-BF16 CPU, for one row of float32.

    Elements ``[0, 32 * (n // 32))`` go through ``vcvtne2ps2bf16`` (RNE, subnormal inputs flushed to +-0, NaN
    quieted: ``fp.f32_to_bf16_avx512``); the last ``n % 32`` through the scalar ``ggml_compute_fp32_to_bf16``.
    Returns uint16 bits.
    """
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    head = 32 * (x.shape[0] // 32)
    return np.concatenate([fp.f32_to_bf16_avx512(x[:head]), fp.f32_to_bf16(x[head:])]).astype(np.uint16)


class BF16(BlockFormat):
    name = "bf16"
    ggml_type = 30
    block_size = 1
    type_size = 2
    dtype = np.dtype("<u2")
    vec_dot_type = "bf16"
    is_quantized = False
    domain = "every bit pattern (Inf and NaN included)"
    variants = {"ref": "ref", "model": "ref", "x86": "ref"}

    def quantize_blocks(self, x, variant, weights):
        return fp.f32_to_bf16(x.reshape(-1))

    def dequantize_blocks(self, blocks):
        return fp.bf16_to_f32(blocks).reshape(-1, 1)

    def quantize_rows(self, x, variant, imatrix):
        """One conversion of all rows (``fp.f32_to_bf16`` works through cache-sized chunks itself)."""
        return fp.f32_to_bf16(x).view(np.uint8)

    def dequantize_rows(self, data):
        """One pass: the bf16 bits become the high half-words of the float32 output."""
        return fp.bf16_to_f32(np.ascontiguousarray(data).view(np.uint16))

    def random_blocks(self, rng, n_blocks):
        """Finite bf16 values: random signs and mantissas, exponents uniform over normals and subnormals."""
        bits = rng.integers(0, 0x7F80, size=n_blocks, dtype=np.uint16)
        return (bits | (rng.integers(0, 2, size=n_blocks, dtype=np.uint16) << 15)).astype(np.uint16)
