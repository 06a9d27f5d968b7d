"""Q8_0: 32 signed bytes and one f16 scale; the cache type of FlashMLA-2 with ``-ctk q8_0``.

Block layout (34 bytes, ``block_q8_0`` in ggml-common.h):

======  =======  ======================================
offset  bytes    field
======  =======  ======================================
0       2        ``d``: f16 scale
2       32       ``qs[32]``: int8 values, element j at byte 2 + j
======  =======  ======================================

Dequantization: ``y[j] = qs[j] * f32(d)``, exact in float32 (an 8-bit times an 11-bit significand).

Quantization, per block with ``amax = max |x_j|``:

* ``ref`` (``quantize_row_q8_0_ref``, ggml-quants.c): ``d = amax / 127``; ``id = 1/d`` (0 if ``d == 0``);
  ``q = roundf(x * id)`` (ties away from zero); store ``f16(d)``.
* ``x86`` (``quantize_row_q8_0`` in ggml-cpu/arch/x86/quants.c, AVX2/AVX): the same ``d``, but the multiplier is
  ``id = 127 / amax`` and the rounding is ``_mm256_round_ps(_MM_ROUND_NEAREST)``, i.e. ties to even. The two
  differ on exact .5 ties and wherever ``127/amax`` and ``1/(amax/127)`` differ by an ulp (FACTS.md 4d).
* ``model`` is ``ref`` (``quantize_q8_0`` ignores the imatrix).

Valid domain: ggml's quantizers never write -128 (``|x * id| <= 127`` up to rounding), so ``qs`` lies in
[-127, 127]; ``d`` is any finite f16. Dequantize is defined for every byte pattern.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types._base import BlockFormat


class Q8_0(BlockFormat):
    name = "q8_0"
    ggml_type = 8
    block_size = 32
    type_size = 34
    dtype = np.dtype([("d", "<u2"), ("qs", "i1", (32,))])
    vec_dot_type = "q8_0"
    domain = "qs in [-127, 127]; d a finite f16"
    variants = {"ref": "ref", "model": "ref", "x86": "x86"}

    def quantize_blocks(self, x, variant, weights):
        amax = np.max(np.abs(x), axis=1)
        d = (amax / np.float32(127)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if variant == "x86":
                iscale = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
                q = np.rint(x * iscale[:, None])  # ties to even, as _MM_ROUND_NEAREST
            else:
                iscale = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
                q = fp.roundf(x * iscale[:, None])
        out = np.empty(x.shape[0], dtype=self.dtype)
        out["d"] = fp.f32_to_f16(d)
        out["qs"] = q.astype(np.int8)
        return out

    def dequantize_blocks(self, blocks):
        d = fp.f16_to_f32(blocks["d"])
        return blocks["qs"].astype(np.float32) * d[:, None]

    def random_blocks(self, rng, n_blocks):
        out = np.empty(n_blocks, dtype=self.dtype)
        out["d"] = fp.f32_to_f16(rng.standard_normal(n_blocks).astype(np.float32) * np.float32(0.01))
        out["qs"] = rng.integers(-127, 128, size=(n_blocks, 32), dtype=np.int8)
        return out
