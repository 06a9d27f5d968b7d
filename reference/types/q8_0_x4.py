"""Q8_0_X4: ik_llama.cpp's interleaved Q8_0 rows, the B operand of IQK's q8_0 (and ARM) matrix kernels.

Same numbers and byte count as Q8_0 (34 bytes per 32 values), laid out per row. With ``nb = n / 32`` blocks
in a row, the first ``4 * (nb // 4)`` blocks form groups of four (``block_q8_0_x4`` in ggml-common.h,
136 bytes each), and the last ``nb % 4`` blocks are plain ``block_q8_0``:

======  =======  ==========================================================
offset  bytes    field of a group of blocks 4g .. 4g+3
======  =======  ==========================================================
0       8        ``d[4]``: the four f16 scales, block 4g + r at 2r
8       128      ``qs[128]``: the four blocks' int8 values, block 4g + r at 8 + 32r
======  =======  ==========================================================

Quantization (``quantize_row_q8_0_x4``, ggml/src/iqk/iqk_quantize.cpp@676f0e71b, the AVX2 branch used on
x86): per block upstream's x86 ``quantize_row_q8_0``: ``d = amax / 127`` (stored with F16C here),
``id = 127 / amax`` (0 if ``amax == 0``), ``_mm256_round_ps(NEAREST)`` (ties to even), saturating packs.
Only the store addresses differ (``y4[i/4].d[i%4]`` and ``y4[i/4].qs + 32*(i%4)`` for ``i < nb4``, ``y[i]``
after). So every block's bytes equal ``q8_0``'s ``x86`` variant (except the f16 of a NaN ``d``, outside the domain:
upstream stores ``d`` with the software routine) and this layout is those blocks interleaved.
The only variant is ``iqk``. The format has no ``to_float`` in ik_llama.cpp; ``dequantize`` here undoes the
interleaving and dequantizes as q8_0.

ggml type 98 is ik_llama.cpp@676f0e71b's ``GGML_TYPE_Q8_0_X4`` (ggml.h); upstream ggml has no such type.

Valid domain: as q8_0 (``qs`` in [-127, 127], finite ``d``).
"""

import numpy as np

from mlaref.reference.types._base import BlockFormat
from mlaref.reference.types.q8_0 import Q8_0


def interleave_rows(plain: np.ndarray, group_dtype: np.dtype, scale_fields: tuple[str, ...]) -> np.ndarray:
    """Plain q8 blocks ``(n_rows, nb)`` -> uint8 rows with groups of 4 blocks interleaved, the tail plain.

    A group's ``d`` array holds the blocks' ``scale_fields`` one field after the other (``d`` for q8_0;
    ``d`` then ``s`` for q8_1), followed by the four blocks' ``qs``.
    """
    n_rows, nb = plain.shape
    g = nb // 4
    groups = np.empty((n_rows, g), dtype=group_dtype)
    head = plain[:, : 4 * g].reshape(n_rows, g, 4)
    groups["d"] = np.concatenate([head[f] for f in scale_fields], axis=2)
    groups["qs"] = head["qs"].reshape(n_rows, g, 128)
    tail = np.ascontiguousarray(plain[:, 4 * g :]).view(np.uint8).reshape(n_rows, -1)
    return np.concatenate([groups.view(np.uint8).reshape(n_rows, -1), tail], axis=1)


def deinterleave_rows(data: np.ndarray, block_dtype: np.dtype, group_dtype: np.dtype, scale_fields) -> np.ndarray:
    """uint8 interleaved rows -> plain q8 blocks ``(n_rows, nb)``; the inverse of ``interleave_rows``."""
    n_rows, nbytes = data.shape
    nb = nbytes // block_dtype.itemsize
    g = nb // 4
    split = g * group_dtype.itemsize
    groups = np.ascontiguousarray(data[:, :split]).reshape(-1).view(group_dtype).reshape(n_rows, g)
    plain = np.empty((n_rows, nb), dtype=block_dtype)
    head = plain[:, : 4 * g].reshape(n_rows, g, 4)
    for k, f in enumerate(scale_fields):
        head[f] = groups["d"][:, :, 4 * k : 4 * k + 4]
    head["qs"] = groups["qs"].reshape(n_rows, g, 4, 32)
    plain[:, 4 * g :] = np.ascontiguousarray(data[:, split:]).reshape(-1).view(block_dtype).reshape(n_rows, -1)
    return plain


class Q8_0_X4(BlockFormat):
    name = "q8_0_x4"
    ggml_type = 98  # GGML_TYPE_Q8_0_X4, ggml.h@676f0e71b (97 in later ik_llama.cpp)
    upstream = False
    block_size = 32
    type_size = 34
    dtype = Q8_0.dtype  # the plain tail block; groups of four use group_dtype
    group_dtype = np.dtype([("d", "<u2", (4,)), ("qs", "i1", (128,))])
    scale_fields = ("d",)
    vec_dot_type = None
    domain = "as q8_0: qs in [-127, 127]; d a finite f16"
    variants = {"iqk": "iqk"}
    plain = Q8_0

    def quantize_rows(self, x, variant, imatrix):
        plain = self.plain().quantize_rows(x, variant, None)
        blocks = plain.reshape(-1).view(self.dtype).reshape(x.shape[0], -1)
        return interleave_rows(blocks, self.group_dtype, self.scale_fields)

    def dequantize_rows(self, data):
        blocks = deinterleave_rows(data, self.dtype, self.group_dtype, self.scale_fields)
        return self.plain().dequantize_rows(blocks.view(np.uint8).reshape(data.shape[0], -1))

    def quantize_blocks(self, x, variant, weights):
        raise NotImplementedError(f"{self.name} is laid out per row; use quantize_rows")

    def dequantize_blocks(self, blocks):
        raise NotImplementedError(f"{self.name} is laid out per row; use dequantize_rows")

    def random_blocks(self, rng, n_blocks):
        """Random valid q8 blocks (plain layout); ``random_rows`` interleaves them."""
        return self.plain().random_blocks(rng, n_blocks)

    def random_rows(self, rng, n_rows, n):
        blocks = self.random_blocks(rng, n_rows * (n // 32)).reshape(n_rows, -1)
        return interleave_rows(blocks, self.group_dtype, self.scale_fields)
