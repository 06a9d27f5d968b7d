"""Q8_K: 256 signed bytes, a float32 scale and 16 int16 group sums; the vec_dot_type of q4_K and q6_K.

Block layout (292 bytes, ``block_q8_K`` in ggml-common.h):

======  =======  ===================================================================
offset  bytes    field
======  =======  ===================================================================
0       4        ``d``: float32 scale
4       256      ``qs[256]``: int8 values
260     32       ``bsums[16]``: int16, ``bsums[g] = sum_{i<16} qs[16g + i]``
======  =======  ===================================================================

Dequantization (``dequantize_row_q8_K``, ggml-quants.c): ``y = d * qs`` in float32 (one rounding). Neither
upstream ggml nor ik_llama.cpp@676f0e71b lists it as the type's ``to_float`` (Q8_K has no ``to_float`` and
no ``from_float_ref`` in either ``type_traits``); it is an exported function, which the tests call by name.

Quantization variants:

* ``ref`` (``quantize_row_q8_K_ref``, ggml-quants.c): ``max`` = the signed value of largest ``|x|`` (the first
  on ties); if ``max|x| == 0`` then ``d = 0`` and ``qs = 0``, and the C code **leaves bsums unwritten**. Otherwise
  ``iscale = -127/max``, ``qs = min(127, nearest_int(iscale*x))`` (ties to even), ``bsums`` the group sums and
  ``d = 1/iscale``, so ``d < 0`` whenever ``max > 0``. For all-zero blocks this reference writes ``bsums = 0``
  (the sums of the zero ``qs``); against ggml those 32 bytes are "don't care". When ``|max|`` is so small that
  ``-127/max`` overflows (``|max| < 127/FLT_MAX``, about 3.7e-37: tiny normals and all subnormals), ``iscale``
  is infinite, every product is +-inf or NaN, ``nearest_int`` maps both to a multiple of 256, so ``qs = 0``,
  ``bsums = 0`` and ``d = 1/iscale = -+0``.
* ``x86``: upstream ggml's CPU ``from_float`` (``quantize_row_q8_K`` in ggml-cpu/arch/x86/quants.c) calls ``ref``
  (upstream facts §4d, "Upstream ggml differs for Q8_K").
* ``iqk``: ik_llama.cpp@676f0e71b's CPU ``from_float`` on x86 with AVX2, ``iqk_quantize_row_q8_K``
  (ggml/src/iqk/iqk_quantize.cpp): ``amax = max|x|``, ``d = amax/127`` (>= 0), ``id = 127/amax`` (0 if
  ``amax == 0``), ``v = x*id`` rounded to nearest even (``_mm256_round_ps``), converted by ``_mm256_cvtps_epi32``
  (NaN and values outside int32 give INT32_MIN), saturated to [-128, 127] by the two ``packs``; each ``bsums[g]``
  is the int32 sum (wrapping) of the 16 **unsaturated** integers, truncated to int16. All-zero blocks get
  ``d = 0``, ``qs = 0``, ``bsums = 0``. Hazard: for ``0 < amax < 127/FLT_MAX`` the multiplier is +inf, every
  value converts to INT32_MIN, so ``qs = -128`` everywhere while ``bsums = 16*INT32_MIN mod 2**16 = 0`` and
  ``d = amax/127`` (tiny or 0): the block is inconsistent, exactly as ik_llama.cpp writes it.

How ref and iqk relate: both multipliers are the same float up to sign (``-127/max = -sign(max) * (127/amax)``
exactly, division being sign-symmetric) and both round ties to even, so for every block with ``127/amax``
finite, ``qs_iqk = -sign(max) * qs_ref`` and ``bsums_iqk = -sign(max) * bsums_ref`` exactly; ``d`` agrees in
magnitude to one ulp (``amax/127`` vs ``1/(-127/max)``). They differ otherwise only in the sign of ``d``, in
all-zero blocks (bsums written vs left alone) and in the tiny-``amax`` hazard above. (upstream facts §5 says "q can
differ": it can only by this sign.)

Valid domain (what the quantizers write, and what vec_dot kernels may assume): ``d`` a finite float32 of any
sign; ``qs`` in [-127, 127] (``ref``) or [-128, 127] (``iqk``); ``bsums`` the group sums of ``qs``.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types import _quant_math as qm
from mlaref.reference.types._base import BlockFormat

F32 = np.float32
_INT32_MIN = -(2**31)


class Q8_K(BlockFormat):
    name = "q8_K"
    ggml_type = 15
    block_size = 256
    type_size = 292
    dtype = np.dtype([("d", "<f4"), ("qs", "i1", (256,)), ("bsums", "<i2", (16,))])
    vec_dot_type = None  # an intermediate type only: no vec_dot in type_traits_cpu (upstream) or type_traits (ik)
    domain = "d a finite float32; qs in [-128, 127]; bsums[g] = sum of qs[16g:16g+16]"
    variants = {"ref": "ref", "x86": "ref", "iqk": "iqk"}

    def quantize_blocks(self, x, variant, weights):
        if variant == "iqk":
            return self._quantize_iqk(x)
        nb = x.shape[0]
        xmax = qm.first_absmax(x, axis=1)
        zero = xmax == 0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            iscale = F32(-127) / xmax
            q = np.minimum(127, fp.nearest_int(iscale[:, None] * x))
            d = F32(1) / iscale
        q = np.where(zero[:, None], 0, q).astype(np.int8)  # int8 store wraps, as C does
        out = np.empty(nb, dtype=self.dtype)
        out["d"] = np.where(zero, F32(0), d)
        out["qs"] = q
        out["bsums"] = q.astype(np.int32).reshape(nb, 16, 16).sum(axis=2).astype(np.int16)
        return out

    def _quantize_iqk(self, x):
        nb = x.shape[0]
        amax = np.max(np.abs(x), axis=1)
        d = amax / F32(127)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            iscale = np.where(amax != 0, F32(127) / amax, F32(0)).astype(F32)
            v = np.rint(iscale[:, None] * x)  # ties to even, as _MM_ROUND_NEAREST
            ok = (v >= F32(-(2.0**31))) & (v < F32(2.0**31))  # False for NaN as well
            iv = np.where(ok, v, F32(0)).astype(np.int64)
        iv = np.where(ok, iv, _INT32_MIN)
        out = np.empty(nb, dtype=self.dtype)
        out["d"] = d
        out["qs"] = np.clip(iv, -128, 127).astype(np.int8)
        sums = iv.reshape(nb, 16, 16).sum(axis=2)
        out["bsums"] = (sums & 0xFFFF).astype(np.uint16).view(np.int16)  # wrap to int32, then truncate
        return out

    def dequantize_blocks(self, blocks):
        return blocks["d"][:, None] * blocks["qs"].astype(F32)

    def random_blocks(self, rng, n_blocks):
        out = np.empty(n_blocks, dtype=self.dtype)
        out["d"] = (rng.standard_normal(n_blocks) * 0.01).astype(F32)
        out["qs"] = rng.integers(-128, 128, size=(n_blocks, 256), dtype=np.int8)
        out["bsums"] = out["qs"].astype(np.int32).reshape(n_blocks, 16, 16).sum(axis=2).astype(np.int16)
        return out
