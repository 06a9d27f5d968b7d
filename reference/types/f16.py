"""F16: IEEE binary16, one value per 2-byte block; the f16 KV cache and f16 weights.

Block layout (2 bytes, ``ggml_fp16_t``): the IEEE half bits, little-endian (sign 1, exponent 5, mantissa 10).

Dequantization is exact (``ggml_fp16_to_fp32_row``, ``GGML_FP16_TO_FP32``): every half is a float32. A NaN
keeps its sign and payload and comes out quiet (bit 22 set), as ``vcvtph2ps`` and ggml's software
conversion (whose final float multiply quiets a signalling NaN) both do.

Quantization rounds to nearest, ties to even; ``|x| >= 65520`` becomes +-Inf; subnormal halves are kept.
The variants differ only on NaN:

=========  =====================================================  ==========================================
variant    ggml routine (ggml.c / ggml-cpu.c, upstream ggml)       NaN ->
=========  =====================================================  ==========================================
``ref``    ``type_traits[F16].from_float_ref`` =                   sign | 0x7E00 (payload dropped)
           ``ggml_fp32_to_fp16_row``: software
           ``ggml_compute_fp32_to_fp16`` in ggml-base
``model``  ``ggml_quantize_chunk``: ``ggml_fp32_to_fp16_row``      as ``ref``
``x86``    ``type_traits_cpu[F16].from_float`` =                   first ``n - n % 4`` values of a row:
           ``ggml_cpu_fp32_to_fp16``: F16C ``vcvtps2ph`` for       sign | 0x7E00 | (f32 mantissa >> 13), i.e.
           16/8/4-wide chunks, then ``GGML_CPU_FP32_TO_FP16``      F16C keeps the top 10 payload bits and sets
           for the last ``n % 4``, which with GCC/Clang falls      the quiet bit; last ``n % 4``: as ``ref``
           back to the software routine (simd-mappings.h)
=========  =====================================================  ==========================================

(ik_llama.cpp@676f0e71b is built with F16C everywhere, so there every path is ``x86``.)

The conversions are :mod:`mlaref.reference.fp`'s (``f32_to_f16_soft``, ``f32_to_f16_cpu_row``, ``f16_to_f32``),
which the other formats use for their scales too.

Valid domain: every bit pattern; ``random_blocks`` draws finite values over the whole f16 range.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types._base import BlockFormat


class F16(BlockFormat):
    name = "f16"
    ggml_type = 1
    block_size = 1
    type_size = 2
    dtype = np.dtype("<u2")
    vec_dot_type = "f16"
    is_quantized = False
    domain = "every bit pattern (Inf and NaN included)"
    variants = {"ref": "ref", "model": "ref", "x86": "x86"}

    def quantize_blocks(self, x, variant, weights):
        return fp.f32_to_f16_soft(x.reshape(-1))

    def dequantize_blocks(self, blocks):
        return fp.f16_to_f32(blocks).reshape(-1, 1)

    def quantize_rows(self, x, variant, imatrix):
        """Rows of f16 bits; the ``x86`` variant uses F16C except for the last ``n % 4`` values of each row."""
        out = fp.f32_to_f16_cpu_row(x) if variant == "x86" else fp.f32_to_f16_soft(x)
        return out.view(np.uint8)

    def dequantize_rows(self, data):
        return fp.f16_to_f32(np.ascontiguousarray(data).view(np.uint16))

    def random_blocks(self, rng, n_blocks):
        """Finite halves: random signs and mantissas, exponents uniform over normals and subnormals."""
        bits = rng.integers(0, 0x7C00, size=n_blocks, dtype=np.uint16)
        return (bits | (rng.integers(0, 2, size=n_blocks, dtype=np.uint16) << 15)).astype(np.uint16)

