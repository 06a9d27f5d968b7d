"""Q4_0: 32 four-bit values with an offset of 8 and one f16 scale.

Block layout (18 bytes, ``block_q4_0`` in ggml-common.h):

======  =======  =====================================================================
offset  bytes    field
======  =======  =====================================================================
0       2        ``d``: f16 scale
2       16       ``qs[16]``: byte j holds element j in its low nibble, element j+16 in its high
======  =======  =====================================================================

Dequantization (``dequantize_row_q4_0``): ``y = (nibble - 8) * f32(d)``, exact in float32.

Quantization:

* ``ref`` (``quantize_row_q4_0_ref``, ggml-quants.c@676f0e71b; also the CPU ``from_float``, so ``x86`` is the
  same code): ``max`` = the signed x of largest ``|x|`` (the first one on ties; +0 for an all-zero block);
  ``d = max / -8``; ``id = 1/d`` (0 if ``d == 0``); ``q = min(15, (int8_t)(x*id + 8.5f))`` with both float
  operations rounded (no FMA: upstream's ggml-base is built without it) and the cast truncating; store ``f16(d)``.
* ``model`` (``quantize_q4_0``): without an imatrix, ``ref`` on the whole chunk. With one,
  ``quantize_row_q4_0_impl`` per row: ``sigma2 = (sum_j x_j^2) / n`` over the row (a float sum in column
  order), weights ``w_j = qw_j * sqrtf(sigma2 + x_j^2)``, and ``d = make_qx_quants(32, nmax=8, rmse_type=1, w)``
  (``make_qx_quants`` below); store ``f16(d)`` and the nibbles ``L = l + 8``.

Inputs where ``x * id`` is not finite (an infinite value, or a block maximum so small that ``1/d`` overflows,
``|max| < 8 / FLT_MAX``) convert a non-finite float to ``int8_t``: undefined behaviour in C, outside the domain.

Valid domain: ``d`` a finite f16; every nibble is a value.
"""

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types import f16
from mlaref.reference.types._base import BlockFormat

GROUP_MAX_EPS = np.float32(1e-15)  # ggml-quants.c: below this block maximum a block counts as zero


def to_lanes(x: np.ndarray) -> np.ndarray:
    """A transposed copy of blocks ``(n_blocks, 32)`` as ``(8, n_blocks, 4)``: element 4k + i of block b at [k, b, i].

    NumPy reduces a short contiguous axis several times slower than it combines rows, and transposes 16-byte
    items several times faster than 4-byte ones; so the reductions over a block run across the 8 groups of 4
    (fast) and then over the 4 lanes (three elementwise ops).
    """
    nb = x.shape[0]
    return np.ascontiguousarray(np.ascontiguousarray(x).view(np.complex128).T).view(np.float32).reshape(8, nb, 4)


def lane_reduce(op, lanes: np.ndarray) -> np.ndarray:
    """``op`` (``np.maximum`` / ``np.minimum``) over a block: over the 8 groups, then the 4 lanes."""
    r = op.reduce(lanes, axis=0)
    return op(op(r[:, 0], r[:, 1]), op(r[:, 2], r[:, 3]))


def signed_absmax(x: np.ndarray, lanes: np.ndarray | None = None):
    """``(amax, max)`` per block: ``max`` the signed x of largest ``|x|``, the first on ties, +0 if all are 0.

    Reproduces ggml's loop ``if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`` from ``amax = max = 0``.
    The largest magnitude is that of the block's maximum or of its minimum; only when the two have equal
    magnitude and opposite signs does the position decide, and those (rare) blocks take the first index of the
    largest magnitude. Adding +0 turns the -0 of an all-zero block into ggml's +0 and changes nothing else.
    ``lanes`` is ``to_lanes(x)`` when the caller has it.
    """
    if lanes is None:
        lanes = to_lanes(x)
    hi = lane_reduce(np.maximum, lanes)
    lo = lane_reduce(np.minimum, lanes)
    ahi = np.abs(hi)
    alo = np.abs(lo)
    mx = np.where(alo > ahi, lo, hi)
    tie = np.flatnonzero((alo == ahi) & (hi != lo))
    if tie.size:
        sub = x[tie]
        first = (sub.view(np.int32) & np.int32(0x7FFFFFFF)).argmax(axis=1)  # integer argmax: the first maximum
        mx[tie] = sub[np.arange(tie.size), first]
    mx += np.float32(0)
    return np.abs(mx), mx


def pack_lanes(q: np.ndarray) -> np.ndarray:
    """uint8 lanes ``(8, n_blocks, 4)`` -> ``qs (n_blocks, 16)``: element j in the low nibble of byte j, element
    j + 16 in its high nibble.

    The four lanes of a group are one little-endian uint32, so groups 0..3 (elements 0..15) and 4..7 combine
    with 32-bit masks and shifts; only the nibbles are kept, so the same code packs q5 values.
    """
    q32 = q.view(np.uint32).reshape(8, -1)  # (8, n_blocks): bytes = elements 4k .. 4k+3
    packed = (q32[:4] & np.uint32(0x0F0F0F0F)) | ((q32[4:] & np.uint32(0x0F0F0F0F)) << np.uint32(4))
    return np.ascontiguousarray(packed.T).view(np.uint8)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """uint8 ``(n_blocks, 32)`` values < 16 -> ``qs[16]``: low nibble element j, high nibble element j + 16."""
    return q[:, :16] | (q[:, 16:] << 4)


def unpack_nibbles(qs: np.ndarray, offset: int = 0) -> np.ndarray:
    """``qs[16]`` -> uint8 ``(n_blocks, 32)``: elements 0..15 from the low nibbles, 16..31 from the high.

    With ``offset = 8`` the bytes are the int8 values ``nibble - 8`` instead (q4_0). Works on whole 64-bit
    words (NumPy is slow on narrow strided rows): ``(b + 0x78) ^ 0x80`` is ``b - 8`` as an int8 byte for b in
    0..15, and no carry crosses a byte.
    """
    w = np.ascontiguousarray(qs).view(np.uint64)  # (n_blocks, 2)
    mask = np.uint64(0x0F0F0F0F0F0F0F0F)
    q = np.concatenate([w & mask, (w >> np.uint64(4)) & mask], axis=1)
    if offset == 8:
        q += np.uint64(0x7878787878787878)
        q ^= np.uint64(0x8080808080808080)
    return q.view(np.uint8)


def row_sigma2_weights(x: np.ndarray, imatrix: np.ndarray, block_size: int) -> np.ndarray:
    """The weights of the legacy ``quantize_row_q*_impl``: ``qw_j * sqrtf(sigma2 + x_j*x_j)``, per block.

    ``sigma2 = sum_x2 / n_per_row`` with ``sum_x2 += x[j]*x[j]`` over the whole row, in column order (one float
    rounding per step, looped over the columns and vectorised over rows). Returns float32
    ``(n_rows * n / block_size, block_size)``.
    """
    n_rows, n = x.shape
    sum_x2 = np.zeros(n_rows, dtype=np.float32)
    for j in range(n):
        sum_x2 += x[:, j] * x[:, j]
    sigma2 = sum_x2 / np.float32(n)
    w = imatrix.astype(np.float32)[None, :] * np.sqrt(sigma2[:, None] + x * x)
    return w.astype(np.float32).reshape(-1, block_size)


def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray):
    """ggml's ``make_qx_quants(n=32, nmax, x, L, rmse_type=1, qw)`` on every block: ``(scale, L)``.

    Per block: ``max`` as ``signed_absmax``; if ``amax < 1e-15`` then ``L = 0`` and scale 0. Otherwise
    ``iscale = -nmax/max``, ``l = clamp(nearest_int(iscale*x), -nmax, nmax-1)``, ``sumlx += w*x*l``,
    ``suml2 += w*l*l`` (left to right, float, element order), ``scale = sumlx/suml2`` (0 if ``suml2 == 0``),
    ``best = scale*sumlx``. Then for ``is = -9..9`` (not 0), ``iscale = -(nmax + 0.1f*is)/max``; the try is
    taken when ``suml2 > 0 && sumlx*sumlx > best*suml2`` (then ``scale = sumlx/suml2``, ``best = scale*sumlx``
    and ``L`` from this try). Returns float32 ``scale (n_blocks,)`` and uint8 ``L = l + nmax`` ``(n_blocks, 32)``.

    The 18 tries are evaluated at once (a ``(n_blocks, 19, 32)`` array); only the sums loop over the 32
    elements and only the acceptance loops over the tries, both in ggml's order.
    """
    nb = x.shape[0]
    amax, mx = signed_absmax(x)
    zero = amax < GROUP_MAX_EPS
    mx_safe = np.where(zero, np.float32(1), mx)
    steps = np.array([0] + [s for s in range(-9, 10) if s != 0], dtype=np.float32)
    num = np.float32(nmax) + np.float32(0.1) * steps  # try 0 is the plain nmax
    iscale = (-num)[None, :] / mx_safe[:, None]  # (nb, 19)
    l = fp.nearest_int(iscale[:, :, None] * x[:, None, :])
    np.clip(l, -nmax, nmax - 1, out=l)
    lf = l.astype(np.float32)
    sumlx = np.zeros((nb, steps.size), dtype=np.float32)
    suml2 = np.zeros((nb, steps.size), dtype=np.float32)
    for i in range(x.shape[1]):
        wi = qw[:, i : i + 1]
        sumlx += (wi * x[:, i : i + 1]) * lf[:, :, i]
        suml2 += (wi * lf[:, :, i]) * lf[:, :, i]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = np.where(suml2[:, 0] != 0, sumlx[:, 0] / suml2[:, 0], np.float32(0)).astype(np.float32)
        best = scale * sumlx[:, 0]
        choice = np.zeros(nb, dtype=np.intp)
        for t in range(1, steps.size):
            take = (suml2[:, t] > 0) & (sumlx[:, t] * sumlx[:, t] > best * suml2[:, t])
            scale = np.where(take, sumlx[:, t] / suml2[:, t], scale).astype(np.float32)
            best = np.where(take, scale * sumlx[:, t], best).astype(np.float32)
            choice = np.where(take, t, choice)
    L = (l[np.arange(nb), choice] + nmax).astype(np.uint8)
    L[zero] = 0
    scale[zero] = 0
    return scale, L


def offset_quantize(x: np.ndarray, half: int):
    """The reference step of q4_0 (``half = 8``) and q5_0 (16): ``d = max/-half``, ``id = 1/d`` (0 if d is 0),
    ``q = min(2*half - 1, (int8_t)(x*id + (half + 0.5f)))``.

    Returns float32 ``d (n_blocks,)`` and uint8 ``q`` as lanes ``(8, n_blocks, 4)`` (``to_lanes``).
    """
    lanes = to_lanes(x)
    _, mx = signed_absmax(x, lanes)
    d = mx / np.float32(-half)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscale = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        flat = lanes.reshape(8, -1)  # (8, 4 n_blocks): long contiguous rows for NumPy's inner loops
        flat *= np.repeat(iscale, 4)
        flat += np.float32(half + 0.5)
        q = lanes.astype(np.uint8)  # truncation toward zero: x*id + half + 0.5 is in [0, 2*half + 1) if finite
    np.minimum(q, np.uint8(2 * half - 1), out=q)
    return d, q


class Q4_0(BlockFormat):
    name = "q4_0"
    ggml_type = 2
    block_size = 32
    type_size = 18
    dtype = np.dtype([("d", "<u2"), ("qs", "u1", (16,))])
    vec_dot_type = "q8_0"
    domain = "d a finite f16; qs any"
    variants = {"ref": "ref", "model": "model", "x86": "ref"}
    takes_imatrix = True

    def block_weights(self, x, imatrix):
        return None if imatrix is None else row_sigma2_weights(x, imatrix, self.block_size)

    def quantize_blocks(self, x, variant, weights):
        out = np.empty(x.shape[0], dtype=self.dtype)
        if variant == "model" and weights is not None:
            d, L = make_qx_quants(x, 8, weights)
            out["d"] = f16.encode(d, f16c=False)
            out["qs"] = pack_nibbles(L)
            return out
        d, q = offset_quantize(x, 8)
        out["d"] = f16.encode(d, f16c=False)
        out["qs"] = pack_lanes(q)
        return out

    def dequantize_blocks(self, blocks):
        out = np.empty((blocks.shape[0], 32), dtype=np.float32)
        self.dequantize_into(blocks, out)
        return out

    def dequantize_into(self, blocks, out):
        np.multiply(unpack_nibbles(blocks["qs"], offset=8).view(np.int8), f16.decode(blocks["d"])[:, None], out=out)

    def random_blocks(self, rng, n_blocks):
        out = np.empty(n_blocks, dtype=self.dtype)
        out["d"] = f16.encode(rng.standard_normal(n_blocks).astype(np.float32) * np.float32(0.01), f16c=False)
        out["qs"] = rng.integers(0, 256, size=(n_blocks, 16), dtype=np.uint8)
        return out
