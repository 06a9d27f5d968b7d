"""Q8_1_X4: ik_llama.cpp's interleaved Q8_1 rows, the B operand of IQK's kernels for q4_0/q4_1/q5_*/iq4_nl
(and q8_0 with AVX512-VNNI).

Same numbers and byte count as Q8_1 (36 bytes per 32 values), laid out per row. With ``nb = n / 32`` blocks
in a row, the first ``4 * (nb // 4)`` blocks form groups of four (``block_q8_1_x4``: ``ggml_half d[8]``,
``int8_t qs[128]``, 144 bytes), and the last ``nb % 4`` blocks are plain ``block_q8_1``:

======  =======  ==========================================================
offset  bytes    field of a group of blocks 4g .. 4g+3
======  =======  ==========================================================
0       8        ``d[0..3]``: the four f16 scales, block 4g + r at 2r
8       8        ``d[4..7]``: the four f16 ``s = f16(d * sum(qs))``, block 4g + r at 8 + 2r
16      128      ``qs[128]``: the four blocks' int8 values, block 4g + r at 16 + 32r
======  =======  ==========================================================

Quantization (``quantize_row_q8_1_x4``, ggml/src/iqk/iqk_quantize.cpp@676f0e71b, AVX2 branch): per block
upstream's x86 ``quantize_row_q8_1`` (``d = amax/127``, ``id = 127/amax``, ties to even, ``s = f16(d * hsum)``;
stored with F16C here and with the software routine upstream, equal except for NaN); only the store
addresses differ (``y4[i/4].d[i%4]``, ``y4[i/4].d[4 + i%4]``, ``y4[i/4].qs + 32*(i%4)`` for ``i < nb4``). So
every block equals ``q8_1``'s ``x86`` variant. Variant ``iqk`` only; no ``to_float`` exists in ik_llama.cpp,
``dequantize`` undoes the interleaving.

ggml type 99 is ik_llama.cpp@676f0e71b's ``GGML_TYPE_Q8_1_X4`` (ggml.h).

Valid domain: as q8_1.
"""

import numpy as np

from mlaref.reference.types.q8_0_x4 import Q8_0_X4
from mlaref.reference.types.q8_1 import Q8_1


class Q8_1_X4(Q8_0_X4):
    name = "q8_1_x4"
    ggml_type = 99  # GGML_TYPE_Q8_1_X4, ggml.h@676f0e71b (98 in later ik_llama.cpp)
    upstream = False
    block_size = 32
    type_size = 36
    dtype = Q8_1.dtype
    group_dtype = np.dtype([("d", "<u2", (8,)), ("qs", "i1", (128,))])
    scale_fields = ("d", "s")
    vec_dot_type = None
    domain = "as q8_1: qs in [-127, 127]; d a finite f16; s = f16(d * sum(qs))"
    variants = {"iqk": "iqk"}
    plain = Q8_1
