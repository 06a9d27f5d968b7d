"""F32: IEEE binary32, one value per 4-byte block; ggml's activations, norms and the attention output.

Block layout (4 bytes): the float32 bits, little-endian.

Quantization and dequantization are byte copies: ``ggml_quantize_chunk`` ``memcpy``s F32 rows and the CPU
back-end's ``from_float`` (``ggml_cpu_fp32_to_fp32``, ggml-cpu.c) copies element by element, so every bit
pattern, NaN payloads included, passes unchanged. Upstream ggml's ``type_traits[F32]`` has neither
``from_float_ref`` nor ``to_float``; ``ref`` names the copy all the same.

Valid domain: every bit pattern; ``random_blocks`` draws finite values over the whole float32 range.
"""

import numpy as np

from mlaref.reference.types._base import BlockFormat


class F32(BlockFormat):
    name = "f32"
    ggml_type = 0
    block_size = 1
    type_size = 4
    dtype = np.dtype("<f4")
    vec_dot_type = "f32"
    is_quantized = False
    domain = "every bit pattern (Inf and NaN included)"
    variants = {"ref": "ref", "model": "ref", "x86": "ref"}
    chunk_blocks = 1 << 20

    def quantize_blocks(self, x, variant, weights):
        return x.reshape(-1).astype(self.dtype, copy=True)

    def dequantize_blocks(self, blocks):
        return blocks.astype(np.float32, copy=True).reshape(-1, 1)

    def quantize_rows(self, x, variant, imatrix):
        """A copy of the bytes (one pass; the block loop would add nothing)."""
        return np.array(x, dtype=self.dtype, copy=True).view(np.uint8)

    def dequantize_rows(self, data):
        return np.array(data, copy=True).view(self.dtype).astype(np.float32, copy=False)

    def random_blocks(self, rng, n_blocks):
        """Finite floats: random signs and mantissas, exponents uniform over normals and subnormals."""
        bits = rng.integers(0, 0x7F800000, size=n_blocks, dtype=np.uint32)
        return (bits | (rng.integers(0, 2, size=n_blocks, dtype=np.uint32) << 31)).view(self.dtype)
