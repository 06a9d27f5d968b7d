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

* ``ref`` (``quantize_row_q8_0_ref``, ggml-quants.c@676f0e71b): ``d = amax / 127``; ``id = 1/d`` (0 if
  ``d == 0``); ``q = roundf(x * id)`` (ties away from zero); store ``f16(d)`` with ggml's software conversion.
* ``x86`` (``quantize_row_q8_0`` in ggml-cpu/arch/x86/quants.c, AVX2/AVX): the same ``d``, but the multiplier is
  ``id = 127 / amax`` and the rounding is ``_mm256_round_ps(_MM_ROUND_NEAREST)``, i.e. ties to even. ``d`` is
  stored with ``GGML_CPU_FP32_TO_FP16``, which upstream (GCC/Clang) maps to the software routine, as ``ref``
  does (ik_llama.cpp's IQK quantizers store with F16C; the two differ only on NaN). ``ref`` and ``x86``
  differ on exact .5 ties and wherever ``127/amax`` and ``1/(amax/127)`` differ by an ulp (upstream facts §4d).
* ``model`` is ``ref`` (``quantize_q8_0`` ignores the imatrix).

Non-finite products. Where ``x * id`` is not finite (an infinite input, or ``amax`` so small that the
multiplier overflows, ``amax < 127 / FLT_MAX``), the x86 path is still defined: ``_mm256_cvtps_epi32`` returns
the "integer indefinite" 0x80000000 and the two saturating packs make it -128. The ``ref`` path converts a
non-finite float to ``int8_t``, which is undefined behaviour in C; the reference writes 0 there (the low byte
of 0x80000000, what GCC's ``cvttss2si`` code gives), and tests do not compare those bytes. NaN inputs are
outside the domain of both paths (the x86 ``max_ps`` tree drops or keeps a NaN depending on its position).

Valid domain: ggml's quantizers never write -128 for finite inputs (``|x * id| <= 127`` up to rounding), so
``qs`` lies in [-127, 127]; ``d`` is any finite f16. Dequantize is defined for every byte pattern.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types._base import BlockFormat
from mlaref.reference.types.q4_0 import lane_reduce, to_lanes


def round_to_int8(v: np.ndarray, amax: np.ndarray, iscale: np.ndarray, variant: str) -> np.ndarray:
    """The rounding of the q8 quantizers on lanes ``v`` ``(8, n_blocks, 4)`` (``q4_0.to_lanes``), in place -> int8.

    ``x86`` / ``iqk``: ``_mm256_round_ps(NEAREST)``, ``_mm256_cvtps_epi32`` and the saturating packs: finite
    products lie in [-127.5, 127.5] and round to even; a non-finite product becomes -128 (the integer indefinite,
    saturated). ``ref``: ``(int8_t)roundf(v)``; a non-finite ``v`` (C UB) gives 0, see the module doc. Only blocks
    whose maximum ``amax`` or multiplier ``iscale`` is not finite can hold non-finite products, so only they are
    checked element by element.
    """
    with np.errstate(invalid="ignore"):
        if variant in ("x86", "iqk"):
            q = np.rint(v, out=v).astype(np.int8)
            fill = np.int8(-128)
        else:
            q = fp.roundf(v, out=v).astype(np.int8)
            fill = np.int8(0)
    bad = ~(np.isfinite(amax) & np.isfinite(iscale))
    if bad.any():
        q[:, bad] = np.where(np.isfinite(v[:, bad]), q[:, bad], fill)
    return q


def q8_quantize(x: np.ndarray, variant: str):
    """The shared q8 step: ``(d, qs)`` with ``d`` float32 ``(n_blocks,)`` and ``qs`` int8 ``(n_blocks, 32)``.

    ``amax``, ``d = amax/127`` and the multiplier (ref: ``1/d``; x86, iqk: ``127/amax``) as in the module doc. All
    of it runs on the lanes of ``q4_0.to_lanes``: the maximum of the magnitude bits is the bits of ``max |x|``
    (same order for non-NaN floats), and integer maxima over lanes, like the products, run along long rows.
    """
    lanes = to_lanes(x)
    a = lanes.view(np.int32) & np.int32(0x7FFFFFFF)
    amax = lane_reduce(np.maximum, a).view(np.float32)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore", over="ignore"):
        if variant in ("x86", "iqk"):
            iscale = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
        else:
            iscale = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        lanes.reshape(8, -1)[...] *= np.repeat(iscale, 4)
    q = round_to_int8(lanes, amax, iscale, variant)
    # int8 lanes (8, n_blocks, 4) -> rows: lane k of a block is bytes 4k .. 4k+3.
    return d, np.ascontiguousarray(q.view(np.uint32).reshape(8, -1).T).view(np.int8)


def dequantize_q8_into(blocks: np.ndarray, out: np.ndarray) -> None:
    """``out = qs * f32(d)`` for blocks with fields ``d`` (f16) and ``qs`` (int8 ``[32]``): q8_0, q8_1.

    On rows: the int8 values widened into ``out`` (exact), then one float32 multiply per value. For 8-bit values
    this measures faster than the lanes of ``q4_0.scaled_lanes_into``, which pay off where values are unpacked.
    """
    np.copyto(out, blocks["qs"])
    out *= fp.f16_to_f32(blocks["d"])[:, None]


def f16_of(d: np.ndarray, variant: str) -> np.ndarray:
    """Store a scale: F16C in ik_llama.cpp's IQK code, the software routine in upstream ggml (base and CPU)."""
    return (fp.f32_to_f16 if variant == "iqk" else fp.f32_to_f16_soft)(d)


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
        d, q = q8_quantize(x, variant)
        out = np.empty(x.shape[0], dtype=self.dtype)
        out["d"] = f16_of(d, variant)
        out["qs"] = q
        return out

    def dequantize_into(self, blocks, out):
        dequantize_q8_into(blocks, out)

    def random_blocks(self, rng, n_blocks):
        out = np.empty(n_blocks, dtype=self.dtype)
        out["d"] = fp.f32_to_f16_soft(rng.standard_normal(n_blocks).astype(np.float32) * np.float32(0.01))
        out["qs"] = rng.integers(-127, 128, size=(n_blocks, 32), dtype=np.int8)
        return out
