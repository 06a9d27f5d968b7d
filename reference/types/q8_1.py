"""Q8_1: 32 signed bytes, an f16 scale and an f16 copy of ``d * sum(q)``; the dot type of q4_1 and q5_1.

Block layout (36 bytes, ``block_q8_1`` in ggml-common.h):

======  =======  ======================================
offset  bytes    field
======  =======  ======================================
0       2        ``d``: f16 scale
2       2        ``s``: f16 of ``d * sum_j qs[j]`` (the float d, before its f16 rounding)
4       32       ``qs[32]``: int8 values
======  =======  ======================================

Dequantization: ``y[j] = qs[j] * f32(d)`` (exact); ``s`` is not used. Upstream ggml has no ``to_float`` for
Q8_1 (it is only ever a dot-product operand), so dequantization is the definition above.

Quantization, per block (``amax``, ``d = amax / 127`` and the int8 values exactly as in ``q8_0``):

* ``ref`` (``quantize_row_q8_1_ref``, ggml-quants.c@676f0e71b): ``id = 1/d``, ``roundf``; ``sum`` = the int sum
  of the 32 values; ``s = f16((float)sum * d)``, software f16 conversion (ggml-base).
* ``x86`` (``quantize_row_q8_1``, ggml-cpu/arch/x86/quants.c, AVX2): ``id = 127/amax``, ties to even,
  ``s = f16(d * (float)hsum_i32_8(...))``; ``GGML_CPU_FP32_TO_FP16`` is the software routine in upstream
  builds with GCC/Clang. The product ``d * sum`` is the same float in both (one
  rounding of the same two operands), so ``s`` differs only where the integers differ.

There is no ``model`` variant: ``ggml_quantize_chunk`` does not accept Q8_1.

Valid domain: ``qs`` in [-127, 127]; ``d`` a finite f16; ``s`` equal to ``f16(d' * sum(qs))`` for the float
``d'`` that rounded to ``d`` (``random_blocks`` uses ``d' = f32(d)``). Non-finite products are handled as in
``q8_0``.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types._base import BlockFormat
from mlaref.reference.types.q8_0 import dequantize_q8_into, f16_of, q8_quantize


def q8_1_fields(x: np.ndarray, variant: str):
    """``(d, s, qs)`` of the q8_1 quantizers: f16 bits of ``d`` and ``s``, int8 ``qs``.

    The x86 sum runs over the int32 results of ``_mm256_cvtps_epi32``, before the saturating packs: a
    non-finite product (stored as -128) contributes the integer indefinite -2**31 there, and the int32 sum
    wraps. Finite products never give -128, so the -128 bytes count those terms.
    """
    d, q = q8_quantize(x, variant)
    total = q.sum(axis=1, dtype=np.int64)  # an integer sum: exact in any order
    if variant in ("x86", "iqk"):
        k = (q == -128).sum(axis=1, dtype=np.int64)
        total = (total + 128 * k - k * 2**31).astype(np.int64)
        total = ((total + 2**31) % 2**32 - 2**31).astype(np.int64)  # int32 wrap-around
    with np.errstate(over="ignore", invalid="ignore"):
        s = total.astype(np.float32) * d
    return f16_of(d, variant), f16_of(s, variant), q


class Q8_1(BlockFormat):
    name = "q8_1"
    ggml_type = 9
    block_size = 32
    type_size = 36
    dtype = np.dtype([("d", "<u2"), ("s", "<u2"), ("qs", "i1", (32,))])
    vec_dot_type = "q8_1"
    domain = "qs in [-127, 127]; d a finite f16; s = f16(d * sum(qs))"
    variants = {"ref": "ref", "x86": "x86"}

    def quantize_blocks(self, x, variant, weights):
        out = np.empty(x.shape[0], dtype=self.dtype)
        out["d"], out["s"], out["qs"] = q8_1_fields(x, variant)
        return out

    def dequantize_into(self, blocks, out):
        dequantize_q8_into(blocks, out)

    def random_blocks(self, rng, n_blocks):
        out = np.empty(n_blocks, dtype=self.dtype)
        d = fp.f32_to_f16_soft(rng.standard_normal(n_blocks).astype(np.float32) * np.float32(0.01))
        qs = rng.integers(-127, 128, size=(n_blocks, 32), dtype=np.int8)
        out["d"] = d
        out["s"] = fp.f32_to_f16_soft(qs.sum(axis=1, dtype=np.int32).astype(np.float32) * fp.f16_to_f32(d))
        out["qs"] = qs
        return out
