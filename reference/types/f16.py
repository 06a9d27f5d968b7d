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

The encoders here use NumPy's float32 -> float16 cast for finite values and Inf (IEEE round-to-nearest-even,
equal to ``fp.f32_to_f16`` on them, tested) and patch NaN lanes by ggml's rule; that is about ten times faster
than the bit-level ``fp`` functions and lets the other formats store their scales cheaply.

Valid domain: every bit pattern; ``random_blocks`` draws finite values over the whole f16 range.
"""

import numpy as np

from mlaref.reference.types._base import BlockFormat


def encode(x: np.ndarray, f16c: bool, out: np.ndarray | None = None) -> np.ndarray:
    """float32 -> f16 bits (uint16): RNE; NaN -> sign | 0x7E00, plus the payload's top bits when ``f16c``.

    ``f16c=True`` equals ``fp.f32_to_f16`` (F16C ``vcvtps2ph``), ``f16c=False`` equals ``fp.f32_to_f16_soft``
    (ggml's software ``ggml_compute_fp32_to_fp16``). ``out``: an optional uint16 array of ``x``'s shape.
    """
    x = np.asarray(x, dtype=np.float32)
    h = np.empty(x.shape, dtype=np.uint16) if out is None else out
    with np.errstate(over="ignore", invalid="ignore"):
        np.copyto(h.view(np.float16), x, casting="unsafe")
    nan = np.isnan(x)
    if nan.any():
        u = x[nan].view(np.uint32)
        fixed = ((u >> 16) & 0x8000) | 0x7E00
        if f16c:
            fixed |= (u >> 13) & 0x3FF
        h[nan] = fixed.astype(np.uint16)
    return h


def decode(h: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """f16 bits (uint16) -> float32, exact; NaN quieted with its payload kept (equals ``fp.f16_to_f32``).

    ``out``: an optional float32 array of ``h``'s shape.
    """
    h = np.asarray(h, dtype=np.uint16)
    y = np.empty(h.shape, dtype=np.float32) if out is None else out
    np.copyto(y, h.view(np.float16), casting="unsafe")
    if (h & np.uint16(0x7FFF)).max(initial=0) > 0x7C00:
        nan = (h & 0x7FFF) > 0x7C00
        hn = h[nan].astype(np.uint32)
        y[nan] = (((hn & 0x8000) << 16) | 0x7FC00000 | ((hn & 0x3FF) << 13)).view(np.float32)
    return y


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
    chunk_blocks = 1 << 16

    def quantize_blocks(self, x, variant, weights):
        return encode(x.reshape(-1), f16c=False)

    def dequantize_blocks(self, blocks):
        return decode(blocks).reshape(-1, 1)

    def quantize_rows(self, x, variant, imatrix):
        """Rows of f16 bits; the ``x86`` variant uses F16C except for the last ``n % 4`` values of each row.

        Converted in cache-sized chunks straight into the output (no temporaries).
        """
        n_rows, n = x.shape
        flat = x.reshape(-1)
        out = np.empty(flat.size, dtype=np.uint16)
        step = self.chunk_blocks
        for i in range(0, flat.size, step):
            encode(flat[i : i + step], f16c=(variant == "x86"), out=out[i : i + step])
        out = out.reshape(n_rows, n)
        if variant == "x86" and n % 4:
            out[:, n - n % 4 :] = encode(x[:, n - n % 4 :], f16c=False)
        return out.view(np.uint8)

    def dequantize_rows(self, data):
        h = np.ascontiguousarray(data).reshape(-1).view(np.uint16)
        out = np.empty(h.size, dtype=np.float32)
        step = self.chunk_blocks
        for i in range(0, h.size, step):
            decode(h[i : i + step], out=out[i : i + step])
        return out.reshape(data.shape[0], -1)

    def random_blocks(self, rng, n_blocks):
        """Finite halves: random signs and mantissas, exponents uniform over normals and subnormals."""
        bits = rng.integers(0, 0x7C00, size=n_blocks, dtype=np.uint16)
        return (bits | (rng.integers(0, 2, size=n_blocks, dtype=np.uint16) << 15)).astype(np.uint16)

