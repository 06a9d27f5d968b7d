"""Q8_2_X4: the 2026 ik_llama.cpp's interleaved Q8_2 rows, src1 of its AVX2 kernels for legacy and k-quant weights.

Source: the ik_llama.cpp snapshot vendored in the ik-llama-cpp-python 0.1.5 sdist (paths below are relative to its
``vendor/ik_llama.cpp``; the facts are collected in docs/facts/ik-snapshot.md). ik_llama.cpp@676f0e71b has no
such type. Like ``q8_1_x4`` the numbers come in 32-blocks of 36 bytes, but the scale is a **bf16** and the second
field is the **integer** sum of the block's quants (ggml/src/ggml-common.h:281-293, ``block_q8_2`` and
``block_q8_2_x4``). With ``nb = n / 32`` blocks in a row, the first ``4 * (nb // 4)`` form groups of four and the
last ``nb % 4`` are plain ``block_q8_2``:

======  =======  ===================================================================================
offset  bytes    field of a group of blocks 4g .. 4g+3
======  =======  ===================================================================================
0       8        ``d[0..3]``: the four bf16 scales (raw bits), block 4g + r at 2r
8       8        ``d[4..7]``: the four int16 sums ``s = sum(q)``, block 4g + r at 8 + 2r
16      128      ``qs[128]``: the four blocks' int8 values, block 4g + r at 16 + 32r
======  =======  ===================================================================================

A plain tail block is ``d`` (bf16 bits), ``s`` (int16 bits), ``qs[32]``.

Quantization (``quantize_row_q8_2_x4`` = ``quantize_row_q8_1_x4_T<block_q8_2, block_q8_2_x4>``,
ggml/src/iqk/iqk_quantize.cpp:1090-1092; the x86 branch, iqk_quantize.cpp:986-1086), per block of 32 floats:

1. ``amax`` = the largest ``|x|`` (a max: exact, order-free; iqk_quantize.cpp:995-1007).
2. ``d = amax / 127.f`` (one float division), then rounded to bf16 with ``GGML_FP32_TO_BF16`` (round to nearest
   even on the bit pattern, subnormals not flushed, ggml/src/ggml-impl.h:106-119) and **read back**: ``d`` is from
   here on the bf16 value (iqk_quantize.cpp:1009-1023). Only the bf16 bits are stored.
3. ``id = d > 0 ? 1/d : 0`` (one float division of the *rounded* d, not ``127/amax``; iqk_quantize.cpp:1025).
4. ``q = cvtps_epi32(round_ps(x * id, NEAREST))``: one float product, ties to even (iqk_quantize.cpp:1027-1045).
   A product that is not a finite int32 (possible only when ``1/d`` overflows, ``d < 2**-128``) gives the integer
   indefinite ``-2**31``.
5. ``s`` = the int32 sum of the 32 values of step 4 (``hsum_i32_8``; wrapping, so order-free), stored as the low 16
   bits of an int16 (iqk_quantize.cpp:1047-1061). It is the sum of the *unsaturated* values.
6. ``qs`` = step 4 saturated to int8 by ``packs_epi32`` / ``packs_epi16``; the permute only undoes the packs'
   lane order (iqk_quantize.cpp:1063-1081).

For finite inputs with a normal ``d``, ``d_bf16 >= (amax/127)(1 - 2**-9)`` so ``|x * id| <= 127.25`` and the
values stay in [-127, 127]; then ``s`` is the plain sum (``|s| <= 4064``). The aarch64 branch
(iqk_quantize.cpp:926-984) stores ``s`` as a bf16 of ``d * sum`` instead: not modelled (this is the x86 build).

Dequantization (ik_llama.cpp has no ``to_float`` for this type): ``y[j] = f32(bf16 d) * qs[j]``; ``s`` unused.
Every kernel reads ``d`` back as ``bits << 16`` (iqk_gemm_legacy_quants.cpp:84-88 and 121-134, iqk_gemm_kquants.cpp:812).

ggml type 99 is the snapshot's ``GGML_TYPE_Q8_2_X4`` (ggml/include/ggml.h:430; 99 was ``Q8_1_X4`` at 676f0e71b). The
only variant is ``iqk``, here meaning the snapshot's IQK ``from_float``.

Valid domain: finite inputs (NaN makes ``amax`` depend on the ``max_ps`` operand order: not modelled). Stored blocks:
``qs`` in [-127, 127], ``d`` a finite non-negative bf16, ``s = sum(qs)``.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types._base import BlockFormat
from mlaref.reference.types.q8_0_x4 import deinterleave_rows, interleave_rows

_INT32_MIN = -(2**31)


def q8_2_fields(x: np.ndarray):
    """float32 ``(n_blocks, 32)`` -> ``(d, s, qs)``: bf16 bits (uint16), int16 bits as uint16, int8 ``(n_blocks, 32)``.

    Steps 1-6 of the module docstring, every float step one NumPy float32 operation (rounded once).
    """
    x = np.asarray(x, dtype=np.float32)
    amax = np.abs(x).max(axis=1)
    d_bits = fp.f32_to_bf16((amax / np.float32(127)).astype(np.float32))
    d = fp.bf16_to_f32(d_bits)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        v = np.rint((x * inv[:, None]).astype(np.float32))
        ok = np.isfinite(v) & (v >= -(2.0**31)) & (v < 2.0**31)
    q32 = np.where(ok, v, _INT32_MIN).astype(np.int64)
    total = q32.sum(axis=1)  # exact in int64; the int32 wrap and the int16 store keep the low 16 bits
    s_bits = (total & 0xFFFF).astype(np.uint16)
    qs = np.clip(q32, -128, 127).astype(np.int8)
    return d_bits, s_bits, qs


class Q8_2_X4(BlockFormat):
    name = "q8_2_x4"
    ggml_type = 99  # GGML_TYPE_Q8_2_X4 in the ik-llama-cpp-python 0.1.5 snapshot's ggml.h
    upstream = False
    block_size = 32
    type_size = 36
    # the plain tail block ``block_q8_2``: d = bf16 bits, s = int16 bits (both uint16 in ggml-common.h)
    dtype = np.dtype([("d", "<u2"), ("s", "<u2"), ("qs", "i1", (32,))])
    group_dtype = np.dtype([("d", "<u2", (8,)), ("qs", "i1", (128,))])
    scale_fields = ("d", "s")
    vec_dot_type = None
    domain = "qs in [-127, 127]; d a finite non-negative bf16; s = sum(qs) as int16"
    variants = {"iqk": "iqk"}

    def quantize_rows(self, x, variant, imatrix):
        n_rows, n = x.shape
        blocks = np.empty(n_rows * (n // 32), dtype=self.dtype)
        blocks["d"], blocks["s"], blocks["qs"] = q8_2_fields(x.reshape(-1, 32))
        return interleave_rows(blocks.reshape(n_rows, -1), self.group_dtype, self.scale_fields)

    def dequantize_rows(self, data):
        blocks = deinterleave_rows(data, self.dtype, self.group_dtype, self.scale_fields)
        d = fp.bf16_to_f32(blocks["d"])
        out = (d[..., None] * blocks["qs"].astype(np.float32)).astype(np.float32)
        return out.reshape(data.shape[0], -1)

    def quantize_blocks(self, x, variant, weights):
        raise NotImplementedError(f"{self.name} is laid out per row; use quantize_rows")

    def dequantize_blocks(self, blocks):
        raise NotImplementedError(f"{self.name} is laid out per row; use dequantize_rows")

    def random_blocks(self, rng, n_blocks):
        """Random valid plain q8_2 blocks; ``random_rows`` interleaves them."""
        out = np.empty(n_blocks, dtype=self.dtype)
        qs = rng.integers(-127, 128, size=(n_blocks, 32), dtype=np.int8)
        out["d"] = fp.f32_to_bf16(np.abs(rng.standard_normal(n_blocks)).astype(np.float32) * np.float32(0.01))
        out["s"] = (qs.sum(axis=1, dtype=np.int64) & 0xFFFF).astype(np.uint16)
        out["qs"] = qs
        return out

    def random_rows(self, rng, n_rows, n):
        blocks = self.random_blocks(rng, n_rows * (n // 32)).reshape(n_rows, -1)
        return interleave_rows(blocks, self.group_dtype, self.scale_fields)
